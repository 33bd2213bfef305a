"""What Redis holds for each table, read from FastRDB's own bookkeeping (``fastrdb stats``).

Nothing here scans the keyspace: the tables come from the namespace's index of tables, their
patterns from the published pattern sets, and the registries (pages and counts, negative
entries, entries embedding the table's rows) are counted with ``SCARD`` and probed member by
member (``SSCAN``, then ``EXISTS`` of each member and of its lease), up to a limit per registry.
What no registry holds cannot be counted without a scan, and is listed as such
(:data:`NOT_COUNTED`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fastrdb.cache.store import decode_text
from fastrdb.keys import Namespace, indexed_table, lease_key
from fastrdb.schemes import Scheme, parse_members

__all__ = ["NOT_COUNTED", "RegistryFigures", "TableFigures", "read_inventory"]

NOT_COUNTED = (
    "single-row keys, their fill leases and extra-filter variants: no registry holds them "
    "(counting them needs a SCAN of the keyspace; `fastrdb flush` does one)",
    "pages registered under an invalidate_pattern_prefix expansion: their registries are named "
    "by row values (finding them needs a SCAN)",
)
"""What ``fastrdb stats`` cannot count without scanning the keyspace."""


@dataclass(slots=True)
class RegistryFigures:
    """One registry of keys FastRDB wrote for a table."""

    key: str
    members: int
    """Keys registered (``SCARD``): filled, being filled, or gone since (expired, evicted)."""
    probed: int = 0
    """Members looked at (at most the probe limit)."""
    present: int = 0
    """Probed members whose key holds a value."""
    leased: int = 0
    """Probed members whose fill lease is held (a read is filling it now)."""
    counts: int = 0
    """Probed members that are ``count()`` entries (the rest are pages or single entries)."""


@dataclass(slots=True)
class TableFigures:
    """What Redis holds for one table."""

    table: str
    row_patterns: list[str] = field(default_factory=list)
    prefix_patterns: list[str] = field(default_factory=list)
    unreadable_patterns: int = 0
    """Published members this version cannot read (written by another FastRDB version)."""
    registries: dict[str, RegistryFigures] = field(default_factory=dict)
    """``lists`` (pages and counts), ``negatives``, ``embeds`` (other tables' entries that
    embed this table's rows)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def tables_of(client: Any, namespace: Namespace) -> list[str]:
    """The tables the namespace's index names (tables whose entries were leased since)."""
    members = await client.smembers(namespace.tables())
    return sorted(map(indexed_table, members))


async def read_inventory(
    client: Any, namespace: Namespace, tables: list[str] | None = None, *, probe: int = 1000
) -> list[TableFigures]:
    """Figures for ``tables`` (default: every table in the index), probing at most ``probe``
    members of each registry."""
    if tables is None:
        tables = await tables_of(client, namespace)
    return [await _table(client, namespace, table, probe) for table in tables]


async def _table(client: Any, namespace: Namespace, table: str, probe: int) -> TableFigures:
    figures = TableFigures(table)
    published = list(map(decode_text, await client.smembers(namespace.schemes(table))))
    figures.unreadable_patterns = sum(1 for m in published if Scheme.from_member(m) is None)
    for text in sorted({(s.kind, s.text) for s in parse_members(published)}):
        (figures.row_patterns if text[0] == "row" else figures.prefix_patterns).append(text[1])
    registries = {
        "lists": namespace.lists(table),
        "negatives": namespace.negatives(table),
        "embeds": namespace.embeds(table),
    }
    count_prefix = namespace.count(table)
    for name, key in registries.items():
        entry = figures.registries[name] = RegistryFigures(key, int(await client.scard(key)))
        if not probe or not entry.members:
            continue
        members: list[str] = []
        async for member in client.sscan_iter(key, count=min(probe, 1000)):
            members.append(decode_text(member))
            if len(members) >= probe:
                break
        pipe = client.pipeline(transaction=False)
        for member in members:
            pipe.exists(member)
            pipe.exists(lease_key(member))
        found = await pipe.execute()
        entry.probed = len(members)
        entry.present = sum(1 for value in found[0::2] if value)
        entry.leased = sum(1 for value in found[1::2] if value)
        entry.counts = sum(
            1 for m in members if m == count_prefix or m.startswith(count_prefix + ":~")
        )
    return figures
