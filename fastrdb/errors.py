"""FastRDB's two error types: one for bad input of a call, one for a mistake in its set-up.

Everything else is SQLAlchemy's (``NoResultFound``, ``IntegrityError``) or redis-py's.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "FastRDBError"]


class FastRDBError(ValueError):
    """A call that FastRDB refuses; ``field`` names the culprit.

    It derives from ``ValueError`` so code that already handles bad values keeps working, and
    an application may map it to a client error (HTTP 422). A missing row is SQLAlchemy's
    ``NoResultFound``, not this.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ConfigurationError(Exception):
    """A mistake in how a ``FastRDB`` instance or ``Settings`` was set up: a bug in the
    application, never the fault of a request.

    ``argument`` names the constructor argument (``pattern``, ``list_pattern``,
    ``invalidate_pattern_prefix``, ``response_schema``, ``create_schema``, ...) and ``field``
    the placeholder or schema field at fault, when there is one. It is deliberately not a
    :class:`FastRDBError` (nor a ``ValueError``): an application that maps those to HTTP 422
    must not blame its clients for it.
    """

    def __init__(self, argument: str, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.field = field
        self.message = message
