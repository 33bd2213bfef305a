"""bench/http's stale-response check: counts what a linearizable store could not answer."""

from __future__ import annotations

from bench.http.check import Exchange, History


def patch(row: int, started: float, finished: float, name: str) -> Exchange:
    return Exchange("P", row, 200, started, finished, name)


def get(row: int, started: float, name: str) -> Exchange:
    return Exchange("G", row, 200, started, started + 1, name)


def test_a_get_after_a_finished_patch_must_show_it_or_later() -> None:
    """Showing the seeded value, or a value overwritten before the GET began, is stale."""
    history = History()
    history.add([patch(1, 10, 20, "a"), patch(1, 30, 40, "b")])
    assert history.stale([get(1, 25, "a"), get(1, 45, "b"), get(2, 45, "user 2")]) == 0
    assert history.stale([get(1, 25, "user 1")]) == 1
    assert history.stale([get(1, 45, "a")]) == 1


def test_overlapping_patches_may_commit_in_either_order() -> None:
    """Of two PATCHes that overlapped, either value may be the last one."""
    history = History()
    history.add([patch(1, 10, 30, "a"), patch(1, 20, 25, "b")])
    assert history.stale([get(1, 40, "a"), get(1, 40, "b")]) == 0


def test_a_patch_without_an_answer_is_never_held_against_a_get() -> None:
    """A PATCH only seen being sent (the load stopped first) may have committed any time."""
    history = History()
    history.add([Exchange("S", 1, 0, 10, 0, "a"), patch(1, 15, 20, "b")])
    assert history.stale([get(1, 30, "a")]) == 0


def test_a_read_showing_an_unknown_write_settles_it() -> None:
    """Once a GET showed a write only seen sent, a later GET may not show what it overwrote."""
    history = History()
    history.add([patch(1, 10, 20, "a"), Exchange("S", 1, 0, 30, 0, "b"), get(1, 40, "b")])
    assert history.stale([get(1, 35, "a")]) == 0  # before the read that showed "b" finished
    assert history.stale([get(1, 45, "a"), get(1, 45, "user 1")]) == 2
    assert history.stale([get(1, 45, "b")]) == 0
