"""The consistency audit: compare a sample of cached entries with what the database holds now.

For each :class:`~fastrdb.FastRDB` instance, :class:`Auditor` samples keys of its patterns with
``SCAN … MATCH`` (:mod:`fastrdb.cache.sampling`), recovers the query each key stands for from
the key itself (the pattern's placeholders decoded by :func:`fastrdb.keys.decode_value`, typed
by their columns), reads that query again in a new database transaction, serializes it with the
instance's response schema and compares it field by field with the cached value. An entry that
differs is looked at again (cache and database, a second later) before it is reported: if
either changed in between, or the entry is gone, a write committed while it was being compared,
and it is not reported as stale. Only field names are reported, never values.

What a key cannot tell is not guessed: a key with a digest suffix (extra filters, an
``order_by``) hashes the values it stands for, so it is counted as not audited.
"""

from __future__ import annotations

import asyncio
import importlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from fastrdb._types import AsyncRedis, Raw
from fastrdb.cache.sampling import Sampler, glob_prefix, read_entry
from fastrdb.capture.urls import async_database_url
from fastrdb.crud import FastRDB
from fastrdb.errors import ConfigurationError, FastRDBError
from fastrdb.keys import decode_value

__all__ = [
    "Auditor",
    "Checkpoint",
    "Finding",
    "InstanceReport",
    "Round",
    "database_engine",
    "find_instances",
    "rate_text",
]

Kind = Literal["row", "negative", "list", "count"]

Checkpoint = Callable[[str, str], Awaitable[None]]
"""``(stage, key)``, awaited by the auditor at ``"cached"`` (the entry was read, the database
not yet) and at ``"compared"`` (the entry differed, not yet looked at again): a seam for tests
that force an interleaving."""


def find_instances(spec: str) -> list[FastRDB[Any, Any, Any, Any]]:
    """The FastRDB instances at ``MODULE:ATTR`` (an instance, or a module whose attributes are
    searched) or ``MODULE`` (its attributes). Raises :class:`ConfigurationError` (argument
    ``app``) when there is none."""
    module_name, _, path = spec.partition(":")
    try:
        found: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError("app", f"cannot import {module_name!r} ({exc})") from None
    for name in filter(None, path.split(".")):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise ConfigurationError("app", f"{spec!r}: no attribute {name!r}") from None
    if isinstance(found, FastRDB):
        return [found]
    if isinstance(found, ModuleType):
        instances = {
            id(value): value for value in vars(found).values() if isinstance(value, FastRDB)
        }
        if instances:
            return list(instances.values())
        raise ConfigurationError("app", f"module {found.__name__!r} holds no FastRDB instance")
    raise ConfigurationError(
        "app", f"{spec!r} is a {type(found).__name__}, not a FastRDB instance or a module"
    )


def database_engine(url: str) -> AsyncEngine:
    """An engine for the audit's reads from a plain or SQLAlchemy URL: an asyncio driver,
    READ COMMITTED (SQLite: its driver's default; either way each read, in a transaction of
    its own, sees the latest commit), and no bound values in error messages."""
    url = async_database_url(url)
    options = {} if url.startswith("sqlite") else {"isolation_level": "READ COMMITTED"}
    return create_async_engine(url, hide_parameters=True, **options)


@dataclass(frozen=True, slots=True)
class Finding:
    """A stale entry: its key, what it caches, its age in seconds (None: unknown) and the
    names of the fields that differ (``[2].name`` in a page, ``author.name`` nested;
    ``<exists>``/``<absent>`` when the row's existence differs, ``<length>``, ``<count>``)."""

    key: str
    kind: Kind
    age: int | None
    fields: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "age": self.age, "fields": list(self.fields)}


@dataclass(slots=True)
class InstanceReport:
    """One instance's part of a round."""

    model: str
    pattern: str
    audited: int = 0
    """Entries compared with the database."""
    changed: int = 0
    """Entries that differed at first, but changed (or went) before they were looked at again."""
    stale: list[Finding] = field(default_factory=list)
    not_audited: Counter[str] = field(default_factory=Counter)
    """Sampled entries not compared, by reason (``digest``, ``unreadable``, ``ambiguous``)."""
    undecodable: tuple[str, ...] = ()
    """The instance's patterns whose keys cannot be split into values: none of their entries
    is sampled (e.g. ``{first}.{last}``)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pattern": self.pattern,
            "audited": self.audited,
            "stale": len(self.stale),
            "changed": self.changed,
            "not_audited": dict(sorted(self.not_audited.items())),
            "entries": [finding.as_dict() for finding in self.stale],
            "undecodable_patterns": list(self.undecodable),
        }


@dataclass(slots=True)
class Round:
    """What one sample round found, per instance."""

    reports: list[InstanceReport]

    @property
    def audited(self) -> int:
        return sum(report.audited for report in self.reports)

    @property
    def stale(self) -> int:
        return sum(len(report.stale) for report in self.reports)

    @property
    def rate(self) -> float | None:
        """Stale entries per audited entry (None when nothing was audited)."""
        return self.stale / self.audited if self.audited else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "audited": self.audited,
            "stale": self.stale,
            "rate": self.rate,
            "instances": [report.as_dict() for report in self.reports],
        }

    def lines(self) -> list[str]:
        """The round as text: a line per stale entry, then a line per instance."""
        lines = [
            f"stale {finding.kind} {finding.key} age "
            f"{'unknown' if finding.age is None else f'{finding.age}s'} fields "
            + ",".join(finding.fields)
            for report in self.reports
            for finding in report.stale
        ]
        for report in self.reports:
            skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.not_audited.items()))
            lines.append(
                f"{report.model} {report.pattern!r}: audited {report.audited}, stale "
                f"{len(report.stale)}, changed while compared {report.changed}, not audited "
                f"{sum(report.not_audited.values())}"
                + (f" ({skipped})" if skipped else "")
                + "".join(f"; {text!r} is not decodable" for text in report.undecodable)
            )
        return lines


def rate_text(stale: int, audited: int) -> str:
    """``stale``/``audited`` as a percentage, ``n/a`` when nothing was audited."""
    return f"{100 * stale / audited:.2f}%" if audited else "n/a"


class _NotAudited(Exception):
    """An entry that cannot be compared; the message is the reason."""


@dataclass(frozen=True, slots=True)
class _Query:
    """What a key stands for: a ``get`` (row), a ``get_multi`` page or a ``count``, with the
    filters, ordering and paging that call maps to."""

    kind: Literal["row", "list", "count"]
    filters: dict[str, Any]
    ordering: tuple[Any, ...] = ()
    page: int = 1
    limit: int = 1


class _Target:
    """One instance, and how to recover, read again and compare what its keys hold. It uses
    the instance's plan (how a call maps to its key, WHERE and SELECT) read-only, so a query
    recovered from a key is one that maps back to exactly that key."""

    def __init__(self, crud: FastRDB[Any, Any, Any, Any]) -> None:
        self.crud = crud
        self.plan = crud._plan
        self.count_key = self.plan.namespace.count(self.plan.table)
        # The count() entry is known by name; its digest variants are not audited anyway.
        self.globs = tuple(
            glob_prefix(prefix)
            for prefix in (self.plan.row.literal_prefix, self.plan.list.literal_prefix)
        )
        self.pages: TypeAdapter[list[Any]] = TypeAdapter(list[crud.response_schema])  # type: ignore[name-defined]

    def recover(self, key: str) -> _Query | str | None:
        """The query ``key`` stands for, the reason it cannot be audited, or None if it is
        not a key of this instance."""
        if key == self.count_key:
            return _Query("count", {})
        if key.startswith(self.count_key + ":~"):
            return "digest"
        for kind, pattern in (("list", self.plan.list), ("row", self.plan.row)):
            matched = pattern.match(key)
            if matched is None:
                continue
            texts, digest = matched
            types = self.plan.columns.python_types
            try:
                values = {
                    name: decode_value(
                        text, int if kind == "list" and name in ("page", "limit") else types[name]
                    )
                    for name, text in texts.items()
                }
                query = self._query(kind, values)
            except (FastRDBError, KeyError):
                continue  # not a value of this column, or no column: another instance's key
            if query is None:
                continue
            return "digest" if digest else query
        return None

    def _query(self, kind: str, values: dict[str, Any]) -> _Query | None:
        """The call ``values`` stand for, if it maps back to the same key (with no digest)."""
        plan = self.plan
        if kind == "row":
            base, _, filters = plan.row_key(values)
            return _Query("row", filters) if base == plan.row.format(values) else None
        page, limit = values.pop("page"), values.pop("limit")
        key, ordering, filters = plan.list_key(limit, page, None, True, values)
        if key != plan.list.format({**values, "page": page, "limit": limit}):
            return None
        return _Query("list", filters, tuple(ordering), page, limit)

    def cached(self, query: _Query, raw: Raw) -> Any:
        """The cached value in a comparable form (``ValueError`` for an unreadable one)."""
        if query.kind == "count":
            total = int(raw)
            if total < 0:
                raise ValueError("negative count")
            return total
        if query.kind == "list":
            return [item.model_dump() for item in self.pages.validate_json(raw)]
        if raw in (b"null", "null"):
            return None
        return self.crud.response_schema.model_validate_json(raw).model_dump()

    def read(self, session: Session, query: _Query) -> Any:
        """What the database holds for ``query`` now, in the form :meth:`cached` gives, read
        as the CRUD call reads it (run in a new transaction, in SQLAlchemy's greenlet)."""
        plan = self.plan
        clauses, params = plan.where(query.filters)
        if query.kind == "count":
            statement = select(func.count()).select_from(plan.mapper.local_table).where(*clauses)
            return int(session.execute(statement, params).scalar_one())
        statement = plan.select().where(*clauses)
        if query.kind == "list":
            statement = (
                statement.order_by(*(column.asc() for column in query.ordering))
                .limit(query.limit)
                .offset((query.page - 1) * query.limit)
            )
            rows = session.execute(statement, params).scalars().unique().all()
            return [plan.response(row).model_dump() for row in rows]
        key = plan.row.format(query.filters)
        rows = [
            row
            for row in session.execute(statement, params).scalars().unique().all()
            if plan.row_key_of(row) == key  # what get() would cache under this key
        ]
        if len(rows) > 1:
            raise _NotAudited("ambiguous")
        return plan.response(rows[0]).model_dump() if rows else None

    def age(self, kind: Kind, ttl_ms: int) -> int | None:
        """Seconds since the entry was filled, from its remaining lifetime and ``exp``."""
        exp = self.crud.settings.negative_exp if kind == "negative" else self.crud.exp
        if ttl_ms < 0 or not exp:
            return None
        return max(0, round(exp - ttl_ms / 1000))


def entry_differences(query: _Query, cached: Any, fresh: Any) -> list[str]:
    """The names of what differs between a cached entry and the database (never values)."""
    if cached == fresh:
        return []
    if query.kind == "count":
        return ["<count>"]
    if cached is None:
        return ["<exists>"]  # a negative entry, and the row exists
    if fresh is None:
        return ["<absent>"]
    if query.kind == "list" and len(cached) != len(fresh):
        return ["<length>"]
    return differences(cached, fresh)


def differences(cached: Any, fresh: Any, path: str = "") -> list[str]:
    """The paths (``name``, ``author.name``, ``[2].tags``) where two dumped values differ."""
    if cached == fresh:
        return []
    if isinstance(cached, dict) and isinstance(fresh, dict):
        found: list[str] = []
        for name in dict.fromkeys([*cached, *fresh]):
            where = f"{path}.{name}" if path else str(name)
            if name in cached and name in fresh:
                found += differences(cached[name], fresh[name], where)
            else:
                found.append(where)
        return found
    if isinstance(cached, list) and isinstance(fresh, list) and len(cached) == len(fresh):
        return [
            name
            for index, (one, other) in enumerate(zip(cached, fresh, strict=True))
            for name in differences(one, other, f"{path}[{index}]")
        ]
    return [path]


class Auditor:
    """Sample rounds over the cached entries of ``instances``, each compared with ``engine``'s
    database (see the module's docstring). Read-only: it never writes to Redis or the
    database. ``recheck_after``: seconds between the first comparison of an entry that differs
    and the second look, so that an invalidation still on its way when the row's write
    committed has landed by then."""

    def __init__(
        self,
        instances: Iterable[FastRDB[Any, Any, Any, Any]],
        engine: AsyncEngine,
        redis: AsyncRedis,
        *,
        sample: int = 100,
        recheck_after: float = 1.0,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
            raise ConfigurationError(
                "sample", f"must be a positive number of entries, got {sample!r}"
            )
        if isinstance(recheck_after, bool) or not recheck_after >= 0:
            raise ConfigurationError(
                "recheck_after", f"must be 0 or more seconds, got {recheck_after!r}"
            )
        self._recheck_after = recheck_after
        self._targets = [_Target(crud) for crud in instances]
        self._engine = engine
        self._redis = redis
        self._sample = sample
        self._checkpoint = checkpoint
        self._sampler = Sampler(redis)

    async def round(self, stop: Callable[[], bool] = lambda: False) -> Round:
        """Sample up to ``sample`` entries per instance and compare each; ``stop()`` is asked
        before each entry (a stopped round reports what it compared)."""
        reports: list[InstanceReport] = []
        claimed: set[str] = set()  # a key two instances recognize is audited once
        for target in self._targets:
            plan = target.plan
            undecodable = tuple(p.text for p in (plan.row, plan.list) if not p.decodable)
            report = InstanceReport(plan.name, plan.row.text, undecodable=undecodable)
            reports.append(report)
            if stop():
                continue

            def accept(key: str, target: _Target = target) -> bool:
                return key not in claimed and target.recover(key) is not None

            keys: list[str] = []
            count_key = target.count_key  # no scan for it: its name is known
            present = count_key not in claimed and await self._redis.get(count_key) is not None
            if present:
                keys.append(count_key)
                claimed.add(count_key)
            if len(keys) < self._sample:
                keys += await self._sampler.sample(target.globs, self._sample - len(keys), accept)
            claimed.update(keys)
            for key in keys:
                if stop():
                    break
                await self._check(target, key, report)
        return Round(reports)

    async def _pause(self, stage: str, key: str) -> None:
        if self._checkpoint is not None:
            await self._checkpoint(stage, key)

    async def _read(self, target: _Target, query: _Query) -> Any:
        async with AsyncSession(self._engine) as session:
            return await session.run_sync(target.read, query)

    async def _check(self, target: _Target, key: str, report: InstanceReport) -> None:
        query = target.recover(key)
        if query is None:
            return
        if isinstance(query, str):
            report.not_audited[query] += 1
            return
        raw, ttl = await read_entry(self._redis, key)
        if raw is None:
            return  # expired or dropped since it was sampled: nothing cached to compare
        try:
            cached = target.cached(query, raw)
        except ValueError:
            report.not_audited["unreadable"] += 1  # a miss for readers, replaced at next read
            return
        kind: Kind = "negative" if query.kind == "row" and cached is None else query.kind
        await self._pause("cached", key)
        try:
            fresh = await self._read(target, query)
        except _NotAudited as exc:
            report.not_audited[str(exc)] += 1
            return
        report.audited += 1
        fields = entry_differences(query, cached, fresh)
        if not fields:
            return
        # Look again, a little later: a write that committed while this entry was compared
        # has dropped the entry by then (its invalidation may still be on its way at commit
        # time), or changed the row since. That is no staleness.
        await self._pause("compared", key)
        await asyncio.sleep(self._recheck_after)
        raw_again, _ = await read_entry(self._redis, key)
        try:
            fresh_again = await self._read(target, query)
        except _NotAudited:
            fresh_again = _CHANGED
        if raw_again != raw or fresh_again != fresh:
            report.changed += 1
            return
        report.stale.append(Finding(key, kind, target.age(kind, ttl), tuple(fields)))


_CHANGED = object()
