"""Database change capture: the second change source, for writes no session sees.

``fastrdb capture`` (or :class:`Capture` in a task) follows PostgreSQL's logical decoding or
MariaDB's row-based binlog and feeds committed row changes, as :class:`Changes`, into the same
planning and invalidation the session hooks use. See docs/capture.md.
"""

from __future__ import annotations

from fastrdb.capture.runner import CaptureStats
from fastrdb.capture.service import Capture
from fastrdb.capture.source import CaptureSetupError

__all__ = ["Capture", "CaptureSetupError", "CaptureStats"]
