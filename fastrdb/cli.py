"""The ``fastrdb`` console script (also ``python -m fastrdb``).

A subcommand is one function registered with :func:`command`, which declares its arguments;
it receives the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
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
