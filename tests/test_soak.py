"""scripts/soak (bench/soak): the example app under load and chaos, its answers history-checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATABASES
from tests.processes import finish, start_interpreter

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("postgresql" not in DATABASES, reason="the soak runs on PostgreSQL"),
]


async def soak(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    report = tmp_path / "soak.json"
    process = await start_interpreter("-m", "bench.soak", "--json", str(report), *args)
    done = await finish(process)
    return done.returncode, json.loads(report.read_text()), done.stdout + done.stderr


async def test_the_20_second_profile_serves_nothing_stale_under_chaos(tmp_path: Path) -> None:
    """20 s with a Redis restart and the worker killed before and after COMMIT: 0 stale, 0 5xx
    outside the Redis-down window, and the chaos really happened."""
    status, report, output = await soak(tmp_path, "--duration", "20", "--twin-duration", "4")
    assert status == 0, output
    assert report["capture"] is True
    for app in ("fastrdb", "twin"):
        figures = report[app]["figures"]
        assert figures["stale"] == 0, figures["stale_examples"]
        assert figures["errors"] == figures["errors_in_outages"] == 0, output
        assert figures["requests"] > 50
        assert figures["writes"] > 0
    fastrdb = report["fastrdb"]
    assert len(fastrdb["outages"]) == 1
    kills = {kill["point"]: kill for kill in fastrdb["kills"]}
    assert kills["before-commit"]["write"] is not None
    assert kills["before-commit"]["committed"] is False  # the database rolled it back
    assert kills["after-commit"]["write"] is not None  # committed: only capture drops its key
    assert "| FastRDB example app |" in output


async def test_without_capture_a_kill_after_commit_is_reported_stale(tmp_path: Path) -> None:
    """The check sees the window capture closes: the worker killed between COMMIT and its
    invalidation leaves the old value cached, served after the database showed the new one
    (GETs only and no settle delay, so that no other write drops the key first)."""
    status, report, output = await soak(
        tmp_path,
        *("--duration", "5", "--twin-duration", "1", "--chaos-interval", "2"),
        *("--capture", "off", "--events", "after-commit", "--writes", "0", "--settle", "0"),
    )
    assert status == 1, output
    assert report["capture"] is False
    assert any(kill["committed"] for kill in report["fastrdb"]["kills"])
    assert report["fastrdb"]["figures"]["stale"] >= 1
    assert "FAILED: fastrdb:" in output
