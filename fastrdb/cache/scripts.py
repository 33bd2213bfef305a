"""The Lua scripts FastRDB runs, loaded from package data once and called by SHA."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import cached_property
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

__all__ = ["DROP", "FILL", "INVALIDATE", "LEASE", "RELEASE", "LuaScript"]

Arg = str | int | bytes


class LuaScript:
    """One ``.lua`` file of ``fastrdb/cache/lua``, run with EVALSHA (EVAL when not loaded yet)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @cached_property
    def source(self) -> str:
        return resources.files("fastrdb.cache").joinpath("lua", f"{self.name}.lua").read_text()

    @cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()

    async def run_async(self, client: Any, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run on an asyncio client."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)

    def run(
        self, call: Callable[[Any], Any], client: Any, keys: Sequence[str], args: Sequence[Arg]
    ) -> Any:
        """Run on any client; ``call`` turns the client's return value into the reply."""
        try:
            return call(client.evalsha(self.sha, len(keys), *keys, *args))
        except NoScriptError:
            return call(client.eval(self.source, len(keys), *keys, *args))


DROP = LuaScript("drop")
FILL = LuaScript("fill")
RELEASE = LuaScript("release")
INVALIDATE = LuaScript("invalidate")
LEASE = LuaScript("lease")
