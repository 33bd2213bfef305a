"""Every FastRDB instance alive in this process, for exporters (``fastrdb.prometheus``)."""

from __future__ import annotations

import weakref
from typing import Protocol

__all__ = ["Instance", "live", "track"]


class Instance(Protocol):
    """What an exporter reads from a FastRDB instance."""

    model: type
    table: str

    def stats(self) -> dict[str, int]: ...


_live: weakref.WeakSet[Instance] = weakref.WeakSet()


def track(instance: Instance) -> None:
    """Count ``instance`` among the live ones (until it is garbage collected)."""
    _live.add(instance)


def live() -> list[Instance]:
    """The live instances. Safe from another thread (a metrics server's): the set is copied
    in one step, not iterated."""
    refs: list[weakref.ref[Instance]] = list(_live.data)  # type: ignore[attr-defined]
    return [instance for instance in (ref() for ref in refs) if instance is not None]
