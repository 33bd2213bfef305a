"""Time limits on Redis calls with one timer per event loop instead of one per call.

``asyncio.timeout`` arms a timer handle on entry and cancels it on exit: a few microseconds
that a cache hit pays on every call when the client has no socket timeouts of its own (the way
``Redis.from_url(url)`` makes it). A :class:`Watchdog` instead notes each call's deadline in a
dict and checks them all from one periodic callback, armed only while calls are in flight; a
call that overruns is cancelled like ``asyncio.timeout`` would, at most one tick late.

Unlike ``asyncio.timeout``, a stall of the event loop itself (a garbage collection of a large
heap, blocking code) is not charged to the calls in flight: their replies may have arrived
meanwhile, unread. A check that runs more than a tick late gives each call past its deadline
one more tick, once per call, before cancelling it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable
from typing import Final, TypeVar

__all__ = ["Watchdog", "watchdog", "within"]

_T = TypeVar("_T")

TICKS_PER_LIMIT: Final = 4
"""A call is cancelled between its limit and 1.25 times its limit (of a running loop)."""

STALL: Final = 0.02
"""A check this much (or a tick, if longer) past its time found the loop held up."""


class Watchdog:
    """Cancels the tasks whose current call overran its deadline."""

    __slots__ = (
        "__weakref__",
        "_armed",
        "_calls",
        "_due",
        "_expired",
        "_graced",
        "_loop",
        "_tick",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: the table of watchdogs is keyed weakly by loop, and a strong reference
        # from a value to its key would keep every loop alive (one per test, per asyncio.run).
        self._loop = weakref.ref(loop)
        self._calls: dict[asyncio.Task[object], float] = {}
        self._expired: dict[asyncio.Task[object], int] = {}
        """Tasks this watchdog cancelled, with their ``cancelling()`` count from before."""
        self._armed = False
        self._tick = 1.0
        self._due = 0.0
        """When the armed check is due, by the loop's clock."""
        self._graced: set[asyncio.Task[object]] = set()
        """Watched calls given more time because the loop stalled (once per call)."""

    def enter(self, limit: float) -> asyncio.Task[object]:
        """Start watching the current task's call; pass the task to :meth:`leave`."""
        loop = self._loop()
        task = asyncio.current_task(loop) if loop is not None else None
        if loop is None or task is None:
            raise RuntimeError("a watched call must run inside an asyncio task")
        self._calls[task] = loop.time() + limit
        if limit / TICKS_PER_LIMIT < self._tick:
            self._tick = limit / TICKS_PER_LIMIT
        if not self._armed:
            self._armed = True
            self._arm(loop)
        return task

    def expired(self, task: asyncio.Task[object]) -> bool:
        """After a ``CancelledError`` in the watched call: whether it was this watchdog's
        doing alone (then the cancellation is withdrawn and the caller treats it as a
        timeout), or someone else's too (then it must propagate)."""
        before = self._expired.pop(task, None)
        return before is not None and task.uncancel() <= before

    def leave(self, task: asyncio.Task[object]) -> None:
        del self._calls[task]
        if self._graced:
            self._graced.discard(task)
        if not self._expired:
            return
        before = self._expired.pop(task, None)
        if before is not None:  # cancelled as the call ended, and the call swallowed it
            task.uncancel()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self._tick
        loop.call_later(self._tick, self._check)

    def _check(self) -> None:
        loop = self._loop()
        if loop is None:
            return
        now = loop.time()
        calls = self._calls
        grace = max(self._tick, STALL)
        # Past a tick late, the loop itself was held up (a garbage collection, blocking code):
        # the replies may be in, unread. A call past its deadline then gets one more tick of
        # a running loop, once: a timeout is Redis' slowness, not this process'.
        stalled = now - self._due > grace
        for task, deadline in calls.items():
            if deadline > now or task in self._expired or task.done():
                continue
            if stalled and task not in self._graced:
                self._graced.add(task)
                calls[task] = now + grace
                continue
            self._expired[task] = task.cancelling()
            task.cancel()
        if calls:
            self._arm(loop)
        else:
            self._armed = False


_watchdogs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Watchdog] = (
    weakref.WeakKeyDictionary()
)


_last: Watchdog | None = None
"""The watchdog :func:`watchdog` returned last: most processes run one loop, and a weak
dictionary's lookup makes a weak reference each time."""


def watchdog() -> Watchdog:
    """The watchdog of the running event loop."""
    global _last
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last._loop() is loop:
        return last
    found = _watchdogs.get(loop)
    if found is None:
        found = _watchdogs[loop] = Watchdog(loop)
    _last = found
    return found


async def within(awaitable: Awaitable[_T], seconds: float) -> _T:
    """``await awaitable`` in the current task, cancelled past ``seconds``: then
    ``TimeoutError``, as ``asyncio.timeout`` raises (a cancellation from elsewhere propagates)."""
    dog = watchdog()
    task = dog.enter(seconds)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if dog.expired(task):
            raise TimeoutError from None
        raise
    finally:
        dog.leave(task)
