"""The Redis side of FastRDB: Lua scripts, the store's operations, client health."""
