"""Drop every cache entry of one table: what ``fastrdb flush`` and ``invalidate_all`` do; or
only the keys of some of its row patterns and its narrowed pages (:func:`sweep`): what capture
does for a change whose old values the log gives only in part.

Registered entries (pages, counts, negative entries, entries embedding the table's rows) are
drained from their registries. Single-row keys are in no registry: they are found by a ``SCAN``
of the keyspace restricted (``MATCH``) to the literal prefixes of the table's published row
patterns, with their fill leases and derived-key sets, and each found key is checked against its
pattern before it is dropped. Everything goes through the invalidation path
(:func:`fastrdb.cache.store.deliver_invalidation`): a key goes with its lease, so a fill that
began before the wipe can no longer land.

The whole sweep runs twice. ``SCAN`` only promises the keys present from the start to the end
of an iteration: a reader whose lease was taken before the wipe could fill its (possibly old)
value behind the cursor of the first pass, deleting the lease the first pass would have found.
Every lease present when the wipe starts is gone when the first pass ends (found and deleted,
or used by its fill, or expired), so the second pass finds every value such a fill stored.

Cost: ``2 * (1 + 2 * number of row patterns)`` full ``SCAN`` iterations of the keyspace (COUNT
1000, MATCH filtering server-side; on one Redis the iterations of a pass advance together, one
round trip per step), on every master of a cluster; the published patterns and the
table's index entry stay (they are not entries, and a lease already taken relies on them).

Functions here are synchronous in form, like the invalidation: they run on any client through
a :class:`~fastrdb.cache.store.Caller` (an asyncio client inside SQLAlchemy's greenlet bridge:
``greenlet_spawn``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastrdb.cache.replicas import Wait
from fastrdb.cache.store import (
    Caller,
    InvalidationPlan,
    decode_text,
    deliver_invalidation,
    is_cluster,
)
from fastrdb.keys import Namespace, glob_escape, indexed_table
from fastrdb.schemes import Scheme, parse_members

__all__ = [
    "Wiped",
    "list_tables",
    "narrowed_glob",
    "registries_of",
    "row_globs",
    "sweep",
    "wipe_table",
]

_BATCH = 500
"""Keys dropped per invalidation call."""
_COUNT = 1000
"""``SCAN``'s COUNT hint."""


@dataclass(slots=True)
class Wiped:
    """What a wipe did."""

    dropped: int = 0
    """Redis keys deleted (values, leases, registries' members)."""
    row_keys: int = 0
    """Distinct single-row keys (with their leases and derived keys) the scans found."""
    passes: int = 0


def registries_of(namespace: Namespace, table: str) -> list[str]:
    """The registries of ``table`` whose names are known without a scan."""
    return [namespace.lists(table), namespace.embeds(table), namespace.negatives(table)]


def narrowed_glob(namespace: Namespace, table: str) -> str:
    """The ``SCAN MATCH`` glob of the table's narrowed list registries."""
    return glob_escape(namespace.lists(table) + ":") + "*"


def row_globs(schemes: Sequence[Scheme]) -> list[str]:
    """The ``SCAN MATCH`` globs of the keys of the table's row patterns, and of their
    ``{key}:lease`` and ``{key}:deps`` companions."""
    globs: list[str] = []
    for scheme in schemes:
        if scheme.kind == "row":
            prefix = glob_escape(scheme.pattern.literal_prefix)
            globs += [prefix + "*", glob_escape("{") + prefix + "*"]
    return list(dict.fromkeys(globs))


def _row_key_of(name: str, patterns: Sequence[re.Pattern[str]]) -> str | None:
    """The single-row key that ``name`` is, or whose lease or derived-key set it is."""
    if name.startswith("{") and (name.endswith("}:lease") or name.endswith("}:deps")):
        inner = name[1 : name.rindex("}")]
        if any(pattern.fullmatch(inner) for pattern in patterns):
            return inner
    if any(pattern.fullmatch(name) for pattern in patterns):
        return name
    return None


def _scan(call: Caller, client: Any, globs: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(glob, key) for every key matching one of ``globs``, on one Redis (the globs' cursors
    advance together: one round trip per step) or on every master of a cluster."""
    if is_cluster(client):
        for node in client.get_primaries():
            for glob in globs:
                cursor = 0
                while True:
                    cursors, names = call(
                        client.scan(cursor, match=glob, count=_COUNT, target_nodes=node)
                    )
                    for name in names:
                        yield glob, decode_text(name)
                    cursor = int(next(iter(cursors.values()))) if cursors else 0
                    if not cursor:
                        break
        return
    cursors = dict.fromkeys(globs, 0)
    while cursors:
        pipe = client.pipeline(transaction=False)
        for glob, cursor in cursors.items():
            pipe.scan(cursor, match=glob, count=_COUNT)
        replies = call(pipe.execute())
        for (glob, _), (cursor, names) in zip(list(cursors.items()), replies, strict=True):
            for name in names:
                yield glob, decode_text(name)
            if int(cursor):
                cursors[glob] = int(cursor)
            else:
                del cursors[glob]


def _read_schemes(call: Caller, client: Any, namespace: Namespace, table: str) -> list[Scheme]:
    return parse_members(call(client.smembers(namespace.schemes(table))))


def _fixed(plan: InvalidationPlan, _schemes: Mapping[str, list[Scheme]]) -> InvalidationPlan:
    return plan


def wipe_table(
    call: Caller, client: Any, namespace: Namespace, table: str, *, wait: Wait | None = None
) -> Wiped:
    """Drop every entry of ``table`` (see the module's docstring). Raises what Redis raises
    (and ``NotReplicated`` when ``wait`` asks for replicas that did not acknowledge): a caller
    that must not fail keeps the table for a later replay."""
    return _sweep(call, client, namespace, table, None, True, registries_of(namespace, table), wait)


def sweep(
    call: Caller,
    client: Any,
    namespace: Namespace,
    table: str,
    patterns: Iterable[str],
    narrowed: bool,
    *,
    wait: Wait | None = None,
) -> Wiped:
    """Drop the single-row keys of ``table``'s row ``patterns`` (pattern texts) and, if
    ``narrowed``, its narrowed pages: what a change whose old values are only known in part
    cannot name key by key (the same two-pass scan as :func:`wipe_table`, restricted to
    these patterns). Raises what Redis raises."""
    return _sweep(call, client, namespace, table, frozenset(patterns), narrowed, [], wait)


def _sweep(
    call: Caller,
    client: Any,
    namespace: Namespace,
    table: str,
    only: frozenset[str] | None,
    narrowed: bool,
    known: list[str],
    wait: Wait | None,
) -> Wiped:
    result = Wiped()
    for _ in range(2):
        schemes = [
            scheme
            for scheme in _read_schemes(call, client, namespace, table)
            if scheme.kind == "row" and (only is None or scheme.text in only)
        ]
        patterns = [scheme.pattern.regex for scheme in schemes]
        registries = list(known)
        narrowed_registries = narrowed_glob(namespace, table) if narrowed else None
        globs = row_globs(schemes)
        if narrowed_registries is not None:
            globs.insert(0, narrowed_registries)
        row_keys: dict[str, None] = {}
        for glob, name in _scan(call, client, globs) if globs else ():
            if glob == narrowed_registries:
                registries.append(name)
                continue
            key = _row_key_of(name, patterns)
            if key is not None:
                row_keys[key] = None
        keys = list(row_keys)
        result.row_keys = max(result.row_keys, len(keys))
        for start in range(0, max(len(keys), 1), _BATCH):
            plan = InvalidationPlan(
                row_keys=keys[start : start + _BATCH],
                own_tokens=[""] * len(keys[start : start + _BATCH]),
                registries=registries if start == 0 else [],
            )
            result.dropped += deliver_invalidation(
                call, client, namespace, [table], partial(_fixed, plan), wait=wait
            )
        result.passes += 1
    return result


def list_tables(call: Caller, client: Any, namespace: Namespace) -> list[str]:
    """Every table the namespace's index names (each table whose entries were ever leased)."""
    members = call(client.smembers(namespace.tables()))
    return sorted(map(indexed_table, members))
