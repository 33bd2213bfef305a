"""What the capture loop needs of a database log, whichever database it is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastrdb.capture.rows import Transaction

__all__ = ["Batch", "CaptureSetupError", "Source"]


class CaptureSetupError(RuntimeError):
    """The database is not set up for capture; ``setting`` names what to change."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


@dataclass(slots=True)
class Batch:
    """Whole committed transactions read from the log, in commit order, and the position
    to confirm once Redis took their invalidation."""

    transactions: list[Transaction] = field(default_factory=list)
    position: Any = None
    """Where the log resumes after these transactions (None: nothing to confirm)."""
    drained: bool = True
    """Whether the read found nothing more waiting after these transactions."""


class Source(Protocol):
    """A database log read in batches of whole transactions (at-least-once)."""

    default_schema: str

    async def open(self) -> None:
        """Connect, check the server's settings, create the slot or position if missing.
        Raises :class:`CaptureSetupError` for what an operator must fix."""

    async def read(self) -> Batch:
        """The next transactions after the confirmed position (maybe none, after a short
        wait). Nothing read is confirmed until :meth:`confirm`."""

    async def confirm(self, batch: Batch) -> None:
        """Make ``batch.position`` the position a restart resumes from."""

    async def backlog(self) -> dict[str, Any]:
        """How far the confirmed position is behind the log's end, for the lag log line."""

    async def end(self) -> Any:
        """The log's current end: what :meth:`reached` compares against."""

    def reached(self, end: Any) -> bool:
        """Whether everything up to ``end`` has been read (a drained batch after that is
        then delivered and confirmed)."""

    async def fetch(
        self, schema: str, table: str, columns: Sequence[str], keys: Sequence[tuple[Any, ...]]
    ) -> list[dict[str, Any]]:
        """Every column (by name, values as a SELECT gives them) of the rows of ``table``
        whose ``columns`` hold one of ``keys``: their current committed state."""

    async def horizon(self) -> Any:
        """A log position at or after the commit of every transaction that a :meth:`fetch`
        made before this call could see (:meth:`reached` compares against it)."""

    async def close(self) -> None:
        """Disconnect (nothing is confirmed here)."""
