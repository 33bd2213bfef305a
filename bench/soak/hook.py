"""The soak's chaos inside the example worker (FASTRDB_WORKER_HOOK=bench.soak.hook:install).

Once it printed ``hooked``, a signal makes the worker's next commit stop at a chosen point,
say so on stdout (``stopped POINT``) and wait there to be SIGKILLed:

- SIGUSR1, ``before-commit``: the UPDATE ran and holds its row lock, COMMIT was not sent; the
  kill makes the database roll the transaction back.
- SIGUSR2, ``after-commit``: first the commit waits before COMMIT (``reached before-commit``)
  for a line on stdin, so that the soak can read the row through the app meanwhile (the cache
  then holds the old value); then the database's COMMIT returns and the commit stops before
  FastRDB's ``after_commit`` ran (this listener is inserted before it). The kill loses the
  session's invalidation: only change capture can drop the key.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

_armed: list[str] = []


def _arm(point: str) -> Callable[[int, Any], None]:
    def handler(signum: int, frame: Any) -> None:
        _armed[:] = [point]

    return handler


def _stop(point: str) -> None:
    _armed.clear()
    print(f"stopped {point}", flush=True)
    time.sleep(60)  # until SIGKILL


def _before_commit(session: Session) -> None:
    if _armed == ["before-commit"]:
        _stop("before-commit")
    elif _armed == ["after-commit"]:
        print("reached before-commit", flush=True)
        sys.stdin.readline()
        _armed[:] = ["committing"]


def _after_commit(session: Session) -> None:
    if _armed == ["committing"]:
        _stop("after-commit")


def install(sessions: sessionmaker[Session]) -> None:
    signal.signal(signal.SIGUSR1, _arm("before-commit"))
    signal.signal(signal.SIGUSR2, _arm("after-commit"))
    event.listen(sessions, "before_commit", _before_commit)
    event.listen(sessions, "after_commit", _after_commit, insert=True)
    print("hooked", flush=True)  # the signals are safe to send from now on
