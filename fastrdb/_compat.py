"""Bridges over the SQLAlchemy 2.0 / 2.1 differences FastRDB relies on."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import sqlalchemy.util as sa_util
from sqlalchemy.util.concurrency import greenlet_spawn

__all__ = ["await_in_greenlet", "greenlet_spawn", "in_greenlet"]

_T = TypeVar("_T")

# ``await_only`` was renamed ``await_`` in SQLAlchemy 2.1 (the old name stays as an alias).
_await: Any = getattr(sa_util, "await_", None) or sa_util.await_only

try:
    from sqlalchemy.util.concurrency import in_greenlet as _in_greenlet
except ImportError:  # pragma: no cover - SQLAlchemy releases before in_greenlet()
    from greenlet import getcurrent  # type: ignore[import-untyped]

    def _in_greenlet() -> bool:
        return type(getcurrent()).__name__ == "_AsyncIoGreenlet"


def in_greenlet() -> bool:
    """True when the caller runs inside SQLAlchemy's asyncio greenlet, where awaiting works."""
    return bool(_in_greenlet())


def await_in_greenlet(awaitable: Awaitable[_T]) -> _T:
    """Wait for ``awaitable`` from synchronous code that SQLAlchemy's greenlet bridge runs."""
    result: _T = _await(awaitable)
    return result
