"""Attaching FastRDB's session and mapper hooks to SQLAlchemy, once per process."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapper, Session

import fastrdb.events.collector as collector
import fastrdb.events.folding as folding
import fastrdb.events.invalidator as invalidator

__all__ = ["install_hooks"]

_installed = False


def install_hooks() -> None:
    """Attach FastRDB's session hooks to ``Session``, once per process."""
    global _installed
    if _installed:
        return
    event.listen(Session, "before_flush", collector.before_flush)
    event.listen(Session, "after_flush", collector.after_flush)
    event.listen(Session, "do_orm_execute", collector.do_orm_execute)
    event.listen(Session, "before_commit", invalidator.before_commit)
    event.listen(Mapper, "before_update", collector.before_update)
    event.listen(Mapper, "before_delete", collector.before_delete)
    event.listen(Mapper, "after_insert", collector.after_write)
    event.listen(Mapper, "after_update", collector.after_write)
    event.listen(Engine, "before_execute", folding.before_execute, retval=True)
    event.listen(Engine, "after_execute", folding.after_execute)
    event.listen(Session, "after_commit", invalidator.after_commit)
    event.listen(Session, "after_transaction_end", invalidator.after_transaction_end)
    _installed = True
