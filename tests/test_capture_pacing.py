"""The pause between capture's deliveries, from the rate rows arrive at (pure, no servers)."""

from __future__ import annotations

import pytest
import redis.asyncio

from fastrdb.capture import Capture
from fastrdb.capture.pacing import BUSY_RATE, Pacing
from fastrdb.cli import build_parser
from fastrdb.errors import FastRDBError


def steady(pacing: Pacing, rate: float, seconds: float, every: float = 0.005) -> float:
    """Feed ``pacing`` reads of ``rate`` rows/s, one every ``every`` seconds; the last pause."""
    now = 0.0
    carried = 0.0
    while now < seconds:
        now += every
        carried += rate * every
        rows = int(carried)
        carried -= rows
        pacing.observe(rows, now)
    return pacing.pause()


def test_a_steady_thousand_rows_a_second_keeps_the_shortest_pause() -> None:
    """At the rate the lag targets are stated for, deliveries stay poll_interval apart."""
    assert steady(Pacing(0.005, 0.025), 1_000, 2.0) == 0.005


def test_a_fast_stream_waits_up_to_max_interval() -> None:
    """From twice BUSY_RATE on, the pause is max_interval, and never longer."""
    assert steady(Pacing(0.005, 0.025), 2 * BUSY_RATE, 2.0) == pytest.approx(0.025, abs=0.001)
    assert steady(Pacing(0.005, 0.025), 20 * BUSY_RATE, 2.0) == 0.025


def test_the_pause_grows_in_proportion_between_the_two_rates() -> None:
    """Halfway between BUSY_RATE and twice it, the pause is halfway too."""
    pause = steady(Pacing(0.005, 0.025), 1.5 * BUSY_RATE, 2.0)
    assert pause == pytest.approx(0.015, abs=0.001)


def test_rows_a_stall_held_back_do_not_lengthen_the_pause() -> None:
    """At 1,000 rows/s, 125 rows arriving together after a 125 ms stall (a slow delivery,
    a busy machine) are no fast stream: the catch-up is not slowed down."""
    pacing = Pacing(0.005, 0.025)
    steady(pacing, 1_000, 2.0)
    pacing.observe(125, 2.125)
    assert pacing.pause() == 0.005


def test_a_burst_is_forgotten_within_a_second() -> None:
    """A large transaction lengthens the pauses after it; a second later they are short."""
    pacing = Pacing(0.005, 0.025)
    pacing.observe(10_000, 1.0)
    assert pacing.pause() == 0.025
    pacing.observe(1, 2.0)
    assert pacing.pause() == 0.005


def test_max_interval_equal_to_poll_interval_is_a_fixed_pace() -> None:
    """max_interval = poll_interval (or less) turns the adaptive pause off."""
    assert steady(Pacing(0.005, 0.005), 10 * BUSY_RATE, 1.0) == 0.005
    assert steady(Pacing(0.005, 0.001), 10 * BUSY_RATE, 1.0) == 0.005


def test_capture_checks_max_interval_against_poll_interval() -> None:
    """max_interval below poll_interval is refused by name; left out, it is 25 ms or
    poll_interval when that is longer (an earlier poll_interval=0.05 still works)."""
    client = redis.asyncio.Redis()
    url = "postgresql://u@127.0.0.1/db"
    with pytest.raises(FastRDBError, match="max_interval"):
        Capture(url, client, poll_interval=0.01, max_interval=0.005)
    assert Capture(url, client)._runner.pacing.max_interval == 0.025
    assert Capture(url, client, poll_interval=0.05)._runner.pacing.max_interval == 0.05
    assert Capture(url, client, max_interval=0.04)._runner.pacing.max_interval == 0.04


def test_the_capture_subcommand_takes_max_interval_in_milliseconds() -> None:
    """fastrdb capture --max-interval-ms, 25 by default."""
    base = ["capture", "--database", "postgresql://h/db", "--redis", "redis://h"]
    assert build_parser().parse_args(base).max_interval_ms == 25.0
    args = build_parser().parse_args([*base, "--max-interval-ms", "10"])
    assert args.max_interval_ms == 10.0
