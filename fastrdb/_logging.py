"""FastRDB's logger ``"fastrdb"``: structlog's when the application configured structlog, the
standard library's otherwise.

structlog's built-in defaults print every event, debug included, to stdout; a library must not
do that to an application that configured nothing. So until ``structlog.configure()`` has been
called, events go to ``logging.getLogger("fastrdb")`` instead, which (with no handler
configured) shows only warnings and errors, on stderr. An application that configures the
standard ``logging`` module sees the events at the levels it sets for ``"fastrdb"``; one that
configures structlog gets them through ``structlog.get_logger("fastrdb")`` with its own
processors and level filter. FastRDB never configures either.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["LOGGER_NAME", "FastRDBLogger", "log"]

LOGGER_NAME = "fastrdb"


class FastRDBLogger:
    """``debug`` … ``exception`` with structlog's calling convention: an event name and
    key/value pairs (``log.warning("redis_unavailable", operation="get")``)."""

    __slots__ = ("_stdlib", "_structlog")

    def __init__(self, name: str = LOGGER_NAME) -> None:
        self._stdlib = logging.getLogger(name)
        self._structlog = structlog.get_logger(name)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log(logging.CRITICAL, "critical", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (call it inside ``except``)."""
        self._log(logging.ERROR, "exception", event, fields, exc_info=True)

    def _log(
        self, level: int, method: str, event: str, fields: dict[str, Any], exc_info: bool = False
    ) -> None:
        if structlog.is_configured():
            getattr(self._structlog, method)(event, **fields)
            return
        stdlib = self._stdlib
        if not stdlib.isEnabledFor(level):
            return
        text = " ".join([event, *(f"{name}={value!r}" for name, value in fields.items())])
        stdlib.log(
            level,
            "%s",
            text,
            exc_info=exc_info,
            extra={"fastrdb_event": event, "fastrdb_fields": fields},
            stacklevel=3,
        )


log = FastRDBLogger()
"""The logger every FastRDB module uses."""
