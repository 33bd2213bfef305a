"""Logging fits the application: quiet when it configures nothing, its levels when it
configures the standard logging module or structlog; list and count events name the list
pattern."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import REDIS_URL
from tests.processes import ROOT, Finished, finish, run_python, start_interpreter
from tests.test_crud import add_user, users

Redis = redis.asyncio.Redis


async def run_example(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Finished:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'log.db'}")
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    process = await start_interpreter(str(ROOT / "examples" / "logging_setup.py"), mode)
    finished = await finish(process)
    assert finished.returncode == 0, finished.stderr
    return finished


@pytest.mark.slow
async def test_an_app_that_configures_nothing_sees_only_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: Redis
) -> None:
    """No FastRDB line below WARNING on stdout or stderr; the warning reaches stderr."""
    out = await run_example("nothing", tmp_path, monkeypatch)
    assert "cache_miss" not in out.stdout + out.stderr
    assert "cache_fill" not in out.stdout + out.stderr
    assert out.stdout == ""
    assert "redis_unavailable" in out.stderr


@pytest.mark.slow
async def test_an_app_that_configures_logging_sees_fastrdb_at_its_levels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: Redis
) -> None:
    """logging.basicConfig and a DEBUG level for "fastrdb": debug events under that name."""
    out = await run_example("stdlib", tmp_path, monkeypatch)
    lines = out.stderr.splitlines()
    assert any(line.startswith("fastrdb DEBUG cache_miss ") for line in lines), out.stderr
    assert any(line.startswith("fastrdb DEBUG cache_fill ") for line in lines)
    assert any(line.startswith("fastrdb WARNING redis_unavailable ") for line in lines)


@pytest.mark.slow
async def test_an_app_that_configures_structlog_sees_fastrdb_at_its_levels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: Redis
) -> None:
    """structlog configured to filter at INFO: the warning, and no debug event."""
    out = await run_example("structlog", tmp_path, monkeypatch)
    assert "redis_unavailable" in out.stdout
    assert "cache_miss" not in out.stdout + out.stderr


async def test_fastrdb_does_not_configure_structlog() -> None:
    """Importing FastRDB and logging through it leaves structlog and logging unconfigured."""
    code = (
        "import logging, structlog\n"
        "import fastrdb, fastrdb.events\n"
        "from fastrdb._logging import log\n"
        "log.debug('cache_miss', key='k')\n"
        "print(structlog.is_configured(), logging.getLogger().handlers,"
        " logging.getLogger('fastrdb').handlers)\n"
    )
    out = await run_python(code)
    assert out.returncode == 0, out.stderr
    assert (out.stdout.split(), out.stderr) == (["False", "[]", "[]"], "")


@pytest.fixture
def structlog_unconfigured() -> Iterator[None]:
    """structlog as an application that never configured it has it (other tests' use of
    structlog.testing.capture_logs leaves it marked as configured)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("structlog_unconfigured")
async def test_list_and_count_events_carry_the_list_pattern(
    db: AsyncSession, redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A get_multi or count miss is logged with the list pattern, a get miss with the row
    pattern; keys appear as short references, never values."""
    await add_user(db, redis_client, "secret@x.io")
    await redis_client.delete("user:email:secret@x.io")
    caplog.set_level(logging.DEBUG, logger="fastrdb")
    await users.get_multi(db=db, redis=redis_client)
    await users.count(db=db, redis=redis_client)
    await users.get(db=db, redis=redis_client, email="secret@x.io")
    misses = [r for r in caplog.records if getattr(r, "fastrdb_event", None) == "cache_miss"]
    patterns = [r.fastrdb_fields["pattern"] for r in misses]
    assert patterns == [users.list_pattern, users.list_pattern, users.pattern]
    assert all(r.name == "fastrdb" for r in misses)
    assert "secret" not in caplog.text
