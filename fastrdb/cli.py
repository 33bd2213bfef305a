"""The ``fastrdb`` console script (also ``python -m fastrdb``).

A subcommand is one function registered with :func:`command`, which declares its arguments;
it receives the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["command", "main"]

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True, slots=True)
class Argument:
    names: tuple[str, ...]
    options: dict[str, Any]


def arg(*names: str, **options: Any) -> Argument:
    """One ``add_argument`` call of a subcommand."""
    return Argument(names, options)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    arguments: tuple[Argument, ...]
    handler: Handler


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, *arguments: Argument) -> Callable[[Handler], Handler]:
    """Register the decorated function as the subcommand ``name``."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(name, help, arguments, handler)
        return handler

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastrdb", description="FastRDB's tools: a Redis cache kept coherent."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for spec in COMMANDS.values():
        child = sub.add_parser(spec.name, help=spec.help, description=spec.help)
        for argument in spec.arguments:
            child.add_argument(*argument.names, **argument.options)
        child.set_defaults(handler=spec.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


@command(
    "capture",
    "Follow the database's log (PostgreSQL logical decoding, MariaDB row binlog) and drop the "
    "cache entries every committed change makes stale, whoever wrote it.",
    arg(
        "--database",
        required=True,
        help="postgresql://… mysql://… mariadb://… or a "
        "SQLAlchemy URL (postgresql+asyncpg://…, mysql+pymysql://…)",
    ),
    arg(
        "--redis",
        required=True,
        help="redis://… rediss://…, or redis+cluster://host:port "
        "(rediss+cluster://) for a Redis Cluster",
    ),
    arg(
        "--slot",
        default="fastrdb",
        help="PostgreSQL replication slot / MariaDB position "
        "name (default: fastrdb); one running capture per name",
    ),
    arg("--tables", default=None, help="comma-separated tables to follow (default: all)"),
    arg("--namespace", default="fastrdb", help="the FastRDB key namespace (Settings.namespace)"),
    arg(
        "--server-id",
        type=int,
        default=0,
        help="MariaDB: this replica's server_id (default: derived from --slot)",
    ),
    arg(
        "--max-interval-ms",
        type=float,
        default=25.0,
        help="the longest pause between two deliveries while rows stream in fast (default 25; "
        "5, the shortest, paces at a fixed 5 ms)",
    ),
    arg("--log-level", default="info", choices=["debug", "info", "warning", "error"]),
)
def capture(args: argparse.Namespace) -> int:
    import logging

    import structlog

    from fastrdb.capture import Capture, CaptureSetupError
    from fastrdb.capture.urls import redis_from_url
    from fastrdb.errors import FastRDBError
    from fastrdb.settings import Settings

    structlog.configure(  # the CLI is an application: it may configure logging
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, args.log_level.upper())
        ),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        # Bound once: an unbound logger builds its chain on every call, debug events below
        # the level included (one per delivery).
        cache_logger_on_first_use=True,
    )
    tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None

    async def run() -> int:
        client = redis_from_url(args.redis)
        try:
            capturer = Capture(
                args.database,
                client,
                slot=args.slot,
                tables=tables,
                settings=Settings(namespace=args.namespace),
                max_interval=args.max_interval_ms / 1000,
                server_id=args.server_id,
            )
        except (CaptureSetupError, FastRDBError) as exc:
            sys.stderr.write(f"fastrdb capture: {exc}\n")
            return 2
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, capturer.stop)
        try:
            await capturer.run()
        except CaptureSetupError as exc:
            sys.stderr.write(f"fastrdb capture: {exc}\n")
            return 2
        finally:
            await client.aclose()
        return 0

    return asyncio.run(run())


def _positive(kind: type[int] | type[float], *, zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number above 0 (or 0 and above, with ``zero``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0 or (value == 0 and not zero) or value != value:
            raise argparse.ArgumentTypeError(
                f"must be {'0 or more' if zero else 'positive'}, got {text}"
            )
        return value

    return parse


@command(
    "audit",
    "Compare a sample of cached entries with what the database holds now and report the ones "
    "that differ (key, age, field names; never values) and the stale rate. Read-only. Exit "
    "status: 0 none differ, 1 some do, 2 usage or set-up error.",
    arg(
        "--app",
        required=True,
        metavar="MODULE[:ATTR]",
        help="the FastRDB instances to audit: an instance, or a module (every instance among "
        "its attributes); the current directory is on the import path",
    ),
    arg(
        "--database",
        required=True,
        help="postgresql://… mysql://… mariadb://… sqlite:///path, or a SQLAlchemy URL; each "
        "entry is read again in a new READ COMMITTED transaction",
    ),
    arg("--redis", required=True, help="redis://… rediss://…, or redis+cluster://host:port"),
    arg(
        "--sample",
        type=_positive(int),
        default=100,
        metavar="N",
        help="entries sampled per instance and round (default: 100). Cost: the count entry "
        "by name, then SCAN … MATCH on the row and page patterns' literal prefixes, COUNT "
        "1000, until N entries are found: each call walks "
        "about 1000 slots of the whole keyspace (a sparse prefix takes more calls, at most one "
        "full walk per round; later rounds carry on where the last one stopped); then GET + "
        "PTTL and one database read per entry, twice for an entry that differs. Never KEYS",
    ),
    arg(
        "--interval",
        type=_positive(float),
        default=None,
        metavar="S",
        help="run continuously: a round every S seconds, each printing its own rate, until "
        "SIGTERM or SIGINT; exit status 1 if any round found a stale entry",
    ),
    arg(
        "--recheck-after",
        type=_positive(float, zero=True),
        default=1.0,
        metavar="S",
        help="seconds before an entry that differs is looked at again, cache and database "
        "(default: 1); if either changed meanwhile, a write was committing: not reported",
    ),
    arg("--json", action="store_true", help="one JSON object per round (then a summary)"),
)
def audit(args: argparse.Namespace) -> int:
    import json

    from fastrdb.audit import Auditor, database_engine, find_instances, rate_text
    from fastrdb.capture.urls import redis_from_url
    from fastrdb.errors import ConfigurationError

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as python -m does: --app names the user's module
    try:
        instances = find_instances(args.app)
        engine = database_engine(args.database)
    except ConfigurationError as exc:
        sys.stderr.write(f"fastrdb audit: {exc}\n")
        return 2

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def run() -> int:
        client = redis_from_url(args.redis)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        auditor = Auditor(
            instances, engine, client, sample=args.sample, recheck_after=args.recheck_after
        )
        rounds = audited = stale = 0
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    result = await auditor.round(stop.is_set)
                except Exception as exc:  # Redis or the database away: say so, carry on
                    sys.stderr.write(f"fastrdb audit: {type(exc).__name__}: {exc}\n")
                    if args.interval is None:
                        return 2
                else:
                    rounds += 1
                    audited += result.audited
                    stale += result.stale
                    if args.json:
                        emit(json.dumps({"round": rounds, **result.as_dict()}))
                    else:
                        for line in result.lines():
                            emit(line)
                        emit(
                            f"round {rounds}: audited {result.audited}, stale {result.stale}, "
                            f"rate {rate_text(result.stale, result.audited)}"
                        )
                if args.interval is None:
                    break
                pause = max(0.0, started + args.interval - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
            if args.interval is not None:
                rate = stale / audited if audited else None
                if args.json:
                    summary = {"rounds": rounds, "audited": audited, "stale": stale, "rate": rate}
                    emit(json.dumps(summary))
                else:
                    emit(
                        f"total: {rounds} rounds, audited {audited}, stale {stale}, "
                        f"rate {rate_text(stale, audited)}"
                    )
        finally:
            await client.aclose()
            await engine.dispose()
        return 1 if stale else 0

    return asyncio.run(run())


_REDIS_HELP = (
    "redis://… rediss://… unix://…, or redis+cluster://host:port (rediss+cluster://) for a "
    "Redis Cluster"
)


def _write(text: str, stream: Any = None) -> None:
    (stream or sys.stdout).write(text + "\n")


@command(
    "stats",
    "Per table, what Redis holds for FastRDB: the published key patterns, the registries of "
    "pages, counts, negative entries and embedding entries with their sizes, how many of "
    "their keys hold a value and how many are being filled (leased). Read from FastRDB's "
    "bookkeeping keys only: no KEYS, no SCAN of the keyspace. Cost: one SCARD per registry, "
    "plus an EXISTS pair per probed member (--probe).",
    arg("--redis", required=True, help=_REDIS_HELP),
    arg("--namespace", default="fastrdb", help="the FastRDB key namespace (Settings.namespace)"),
    arg(
        "--table",
        action="append",
        default=None,
        help="a table to report (repeatable; default: every table in the namespace's index)",
    ),
    arg(
        "--probe",
        type=int,
        default=1000,
        help="members of each registry to look at (default: 1000; 0: sizes only)",
    ),
    arg("--json", action="store_true", help="one JSON document instead of a table"),
)
def stats(args: argparse.Namespace) -> int:
    from fastrdb.cache.health import health_of
    from fastrdb.cache.inventory import NOT_COUNTED, TableFigures, read_inventory
    from fastrdb.cache.policy import check_memory_policy
    from fastrdb.capture.urls import redis_from_url
    from fastrdb.keys import Namespace
    from fastrdb.settings import Settings
    from fastrdb.status import health

    async def run() -> int:
        client = redis_from_url(args.redis)
        record = health_of(client, Settings(namespace=args.namespace, redis_timeout=5.0))
        figures: list[TableFigures] = []
        failed: str | None = None
        try:
            await check_memory_policy(client, record)
            figures = await read_inventory(
                client, Namespace(args.namespace), args.table, probe=max(args.probe, 0)
            )
        except Exception as exc:  # whatever the client raised: say it, exit non-zero
            record.failed(exc, "stats")
            failed = f"{type(exc).__name__}: {exc}"
        finally:
            await client.aclose()
        if args.json:
            document = {
                "namespace": args.namespace,
                "tables": [table.as_dict() for table in figures],
                "not_counted": list(NOT_COUNTED),
                "health": health(client).as_dict(),
                "error": failed,
            }
            _write(json.dumps(document, indent=2))
            return 1 if failed else 0
        if failed:
            _write(f"fastrdb stats: {failed}", sys.stderr)
            return 1
        _write(f"namespace {args.namespace}: {len(figures)} table(s)")
        if not record.safe:
            _write("  cache bypassed: the server's maxmemory-policy may evict FastRDB's keys")
        for table in figures:
            _write(f"\n{table.table}")
            _write(f"  row patterns     {', '.join(table.row_patterns) or '-'}")
            _write(f"  prefix patterns  {', '.join(table.prefix_patterns) or '-'}")
            if table.unreadable_patterns:
                _write(f"  unreadable       {table.unreadable_patterns} (another FastRDB version)")
            _write(
                f"  {'registry':<10} {'members':>8} {'probed':>7} {'present':>8} "
                f"{'leased':>7} {'counts':>7}"
            )
            for name, entry in table.registries.items():
                _write(
                    f"  {name:<10} {entry.members:>8} {entry.probed:>7} {entry.present:>8} "
                    f"{entry.leased:>7} {entry.counts:>7}"
                )
        _write("\nNot counted (would need a SCAN):")
        for line in NOT_COUNTED:
            _write(f"  - {line}")
        return 0

    return asyncio.run(run())


@command(
    "flush",
    "Drop every entry FastRDB wrote for one table: single-row keys by every published "
    "pattern (with their fill leases and extra-filter variants), pages, counts, negative "
    "entries, entries embedding its rows, and their registries; a read filling meanwhile "
    "cannot store what it read before. Cost: single-row keys are in no registry, so the "
    "keyspace is SCANned (MATCH on each row pattern's literal prefix, COUNT 1000), twice, on "
    "every master of a cluster: 2 x (1 + 2 x row patterns) full SCAN iterations, each "
    "O(number of keys in the Redis database). The published patterns stay.",
    arg("--redis", required=True, help=_REDIS_HELP),
    arg("--table", required=True, help="the table, as FastRDB names it (users, schema.users)"),
    arg("--namespace", default="fastrdb", help="the FastRDB key namespace (Settings.namespace)"),
    arg("--yes", action="store_true", help="drop without asking"),
    arg(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds one Redis call may take (default: 5)",
    ),
)
def flush(args: argparse.Namespace) -> int:
    from fastrdb._compat import greenlet_spawn
    from fastrdb.cache.inventory import read_inventory
    from fastrdb.cache.store import Caller
    from fastrdb.cache.wipe import Wiped, row_globs, wipe_table
    from fastrdb.capture.urls import redis_from_url
    from fastrdb.keys import Namespace
    from fastrdb.schemes import Scheme

    namespace = Namespace(args.namespace)

    async def describe() -> list[str]:
        client = redis_from_url(args.redis, timeout=args.timeout)
        try:
            (figures,) = await read_inventory(client, namespace, [args.table], probe=0)
        finally:
            await client.aclose()
        schemes = [Scheme("row", text) for text in figures.row_patterns]
        lines = [f"fastrdb flush: table {args.table} (namespace {args.namespace}) would lose"]
        lines.append(f"  single-row keys matching {', '.join(row_globs(schemes)) or '-'} (SCAN)")
        for name, entry in figures.registries.items():
            lines.append(f"  {entry.members} registered {name} entries ({entry.key})")
        lines.append(f"  pages registered under {namespace.lists(args.table)}:* (SCAN)")
        return lines

    async def drop() -> Wiped:
        client = redis_from_url(args.redis, timeout=args.timeout)
        try:
            call = Caller(True, args.timeout)
            return await greenlet_spawn(wipe_table, call, client, namespace, args.table)
        finally:
            await client.aclose()

    try:
        for line in asyncio.run(describe()):
            _write(line)
        if not args.yes:
            if not sys.stdin.isatty():
                _write(
                    "fastrdb flush: not confirmed: pass --yes (standard input is not a "
                    "terminal, so there is no one to ask)",
                    sys.stderr,
                )
                return 2
            if input("Drop them? [y/N] ").strip().lower() not in ("y", "yes"):
                _write("fastrdb flush: nothing dropped", sys.stderr)
                return 1
        wiped = asyncio.run(drop())
    except Exception as exc:  # whatever the client raised: say it, exit non-zero
        _write(f"fastrdb flush: {type(exc).__name__}: {exc}", sys.stderr)
        return 1
    _write(
        f"fastrdb flush: dropped {wiped.dropped} keys of {args.table} "
        f"({wiped.row_keys} single-row keys found, {wiped.passes} passes)"
    )
    return 0
