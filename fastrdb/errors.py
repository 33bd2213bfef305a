"""The error FastRDB raises for bad input; everything else is SQLAlchemy's or redis-py's."""

from __future__ import annotations

__all__ = ["FastRDBError"]


class FastRDBError(ValueError):
    """A call or a configuration that FastRDB refuses; ``field`` names the culprit.

    It derives from ``ValueError`` so code that already handles bad values keeps working.
    A missing row is SQLAlchemy's ``NoResultFound``, not this.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
