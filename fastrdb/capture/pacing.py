"""How long the capture loop pauses between two deliveries, from the rate rows arrive at.

Each delivery costs capture about the same CPU whatever it carries (the asyncio loop's
wakeups, the greenlet bridge, redis-py, one script call): ~0.6 ms here, against a few µs per
row. Under a stream of small commits, capture delivers at most once per ``poll_interval``
(what arrived meanwhile goes together); a faster stream waits longer, up to ``max_interval``,
so a flat-out writer pays for fewer deliveries while 1,000 rows/s keeps the short pause and
its lag. A commit after a quiet moment is delivered at once (the pause follows a delivery).
"""

from __future__ import annotations

import math

__all__ = ["BUSY_RATE", "WINDOW", "Pacing"]

BUSY_RATE = 1_500.0
"""Rows per second up to which deliveries are paced at ``poll_interval``; above it the pause
grows in proportion, reaching ``max_interval`` at twice this rate."""

WINDOW = 0.25
"""Seconds over which the arrival rate is averaged (exponentially): rows that a stall held
back and that then arrive together do not read as a fast stream, and lengthen no pause."""


class Pacing:
    """The pause after each delivery: ``poll_interval`` up to :data:`BUSY_RATE` rows per
    second, growing linearly to ``max_interval`` at twice that rate (and staying there).
    ``max_interval`` equal to ``poll_interval``: a fixed pace."""

    def __init__(
        self,
        poll_interval: float,
        max_interval: float,
        *,
        busy_rate: float = BUSY_RATE,
        window: float = WINDOW,
    ) -> None:
        self.poll_interval = poll_interval
        self.max_interval = max(max_interval, poll_interval)
        self.busy_rate = busy_rate
        self.window = window
        self.rate = 0.0
        """Rows per second, averaged over about :data:`WINDOW` seconds."""
        self._at: float | None = None

    def observe(self, rows: int, now: float) -> None:
        """A read brought ``rows`` rows at ``now`` (a monotonic clock, seconds)."""
        if self._at is not None:
            self.rate *= math.exp(-max(now - self._at, 0.0) / self.window)
        self._at = now
        self.rate += rows / self.window

    def pause(self) -> float:
        """The pause before the next delivery, at the rate observed so far."""
        excess = min(max((self.rate - self.busy_rate) / self.busy_rate, 0.0), 1.0)
        return self.poll_interval + (self.max_interval - self.poll_interval) * excess
