"""The public names, and that importing FastRDB does nothing."""

from __future__ import annotations

import subprocess
import sys

import fastrdb
import fastrdb.events


def test_exported_members() -> None:
    """fastrdb exports exactly these names, sorted."""
    assert fastrdb.__all__ == [
        "ConfigurationError",
        "FastRDB",
        "FastRDBError",
        "PaginatedResponse",
        "RedisHealth",
        "Settings",
        "health",
    ]
    assert fastrdb.events.__all__ == ["ListenHandle", "listen"]
    for name in fastrdb.__all__:
        assert getattr(fastrdb, name).__name__ == name


def test_version_is_the_distributions() -> None:
    """fastrdb.__version__ is the one version string, the one the installed metadata carries."""
    from importlib.metadata import version

    assert fastrdb.__version__ == version("fastrdb")


def test_errors_are_value_errors() -> None:
    """The one project error type is a ValueError that names its field."""
    error = fastrdb.FastRDBError("limit", "must be at least 1")
    assert isinstance(error, ValueError)
    assert error.field == "limit"
    assert str(error) == "limit: must be at least 1"


def test_import_has_no_side_effects() -> None:
    """Importing the package attaches no listener and opens no connection."""
    code = (
        "from sqlalchemy import event\n"
        "from sqlalchemy.orm import Session\n"
        "import fastrdb, fastrdb.events\n"
        "from fastrdb.events import collector, invalidator\n"
        "print(event.contains(Session, 'after_commit', invalidator.after_commit),"
        " event.contains(Session, 'after_flush', collector.after_flush))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]
