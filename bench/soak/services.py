"""The processes a soak runs: its own Redis, PostgreSQL (its own or a given server), the apps
under uvicorn, the example worker and change capture. Each is started here and stopped by its
process id."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from bench.http.check import Exchange
from bench.http.run import seed_databases
from tests.dbservers import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
APPS = {"fastrdb": "examples.fastapi_app:app", "twin": "bench.http.plain:plain"}


def environment(**values: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **values}


@dataclass
class Database:
    """A PostgreSQL server the soak creates its databases on: ``user@host:port``."""

    server: str
    own: PostgresServer | None = None

    @classmethod
    def start(cls, url: str | None) -> Database:
        if url is None:
            own = PostgresServer().start()  # wal_level=logical: change capture can run
            return cls(f"postgres@127.0.0.1:{own.port}", own)
        parsed = make_url(url)
        user = f"{parsed.username}:{parsed.password}" if parsed.password else parsed.username
        return cls(f"{user}@{parsed.host or '127.0.0.1'}:{parsed.port or 5432}")

    def url(self, name: str, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{self.server}/{name}"

    async def seed(self, names: list[str], rows: int) -> None:
        """Each database afresh with ``rows`` users u1@bench.io …, whole rows in the WAL."""
        import asyncpg

        await seed_databases(self.server, names, rows)
        for name in names:
            connection = await asyncpg.connect(self.url(name, "postgresql"))
            try:
                await connection.execute("ALTER TABLE users REPLICA IDENTITY FULL")
            finally:
                await connection.close()

    async def logical(self) -> bool:
        """Whether change capture can follow this server (``wal_level = logical``)."""
        import asyncpg

        connection = await asyncpg.connect(self.url("postgres", "postgresql"))
        try:
            return bool(await connection.fetchval("SHOW wal_level") == "logical")
        finally:
            await connection.close()

    async def read_name(self, name: str, row: int) -> tuple[str, float, float]:
        """The row's name as the database holds it, and when the read started and ended (µs)."""
        import asyncpg

        connection = await asyncpg.connect(self.url(name, "postgresql"))
        try:
            started = time.monotonic() * 1e6
            value = await connection.fetchval("SELECT name FROM users WHERE id = $1", row)
            return str(value), started, time.monotonic() * 1e6
        finally:
            await connection.close()

    async def drop(self, names: list[str]) -> None:
        import asyncpg

        admin = await asyncpg.connect(self.url("postgres", "postgresql"))
        try:
            for name in names:
                with contextlib.suppress(asyncpg.PostgresError):
                    await admin.execute(f"SELECT pg_drop_replication_slot('{name}')")
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    def stop(self) -> None:
        if self.own is not None:
            self.own.stop()


def start_app(app: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``app`` under uvicorn with 2 worker processes, its output in ``log``."""
    command = [sys.executable, "-m", "uvicorn", APPS[app], "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "2", "--log-level", "warning"]
    command += ["--no-access-log"]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)


def start_capture(database: str, redis_url: str, slot: str, log: Path) -> subprocess.Popen[bytes]:
    """``fastrdb capture`` for the users table, its JSON log lines in ``log``."""
    command = [sys.executable, "-m", "fastrdb", "capture", "--database", database]
    command += ["--redis", redis_url, "--slot", slot, "--tables", "users"]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=out, stderr=out)


@dataclass
class Worker:
    """examples/worker.py writing tagged names, with the chaos hook; one per generation."""

    process: asyncio.subprocess.Process
    tag: str
    exchanges: list[Exchange]
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    hooked: asyncio.Event = field(default_factory=asyncio.Event)
    begun: dict[str, tuple[int, float]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, tag: str, env: dict[str, str], hot: int, exchanges: list[Exchange], log: Path
    ) -> Worker:
        command = [str(ROOT / "examples" / "worker.py"), "--visits", "1000000000"]
        command += ["--interval", "0.02", "--hot", str(hot), "--tag", tag]
        with log.open("ab") as err:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *command,
                cwd=ROOT,
                env={**env, "FASTRDB_WORKER_HOOK": "bench.soak.hook:install"},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        worker = cls(process, tag, exchanges)
        worker.reader = asyncio.create_task(worker._read())
        return worker

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            words = line.decode().split()
            if words[:1] == ["stopped"]:
                self.stopped.set()
            elif words[:1] == ["hooked"]:
                self.hooked.set()
            elif words[:1] == ["reached"]:
                self.reached.set()
            elif words[:1] == ["begin"]:
                row, name, started = int(words[1]), words[2], float(words[3])
                self.begun[name] = (row, started)
                self.exchanges.append(Exchange("S", row, 0, started, 0, name))
            elif words[:1] == ["visit"]:
                row, started = self.begun.pop(words[2])
                self.exchanges.append(Exchange("P", row, 200, started, float(words[3]), words[2]))

    def writing(self) -> tuple[int, str] | None:
        """The write begun last and not seen committed: (row, name)."""
        if not self.begun:
            return None
        name, (row, _) = next(reversed(self.begun.items()))
        return row, name

    async def kill_at(
        self, point: str, meanwhile: Callable[[int], Awaitable[object]], patience: float = 20
    ) -> tuple[int, str] | None:
        """Stop the next commit at ``point`` (for ``after-commit``, first run ``meanwhile(row)``
        while it waits before COMMIT), SIGKILL the worker there; the write it was making, or
        None if no commit reached that point in time (it is killed anyway)."""
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            async with asyncio.timeout(patience):
                await self._until(self.hooked)  # a signal before that would end the process
                if point == "before-commit":
                    self.process.send_signal(signal.SIGUSR1)
                else:
                    self.process.send_signal(signal.SIGUSR2)
                    await self._until(self.reached)
                    write = self.writing()
                    if write is not None:
                        await meanwhile(write[0])
                    assert self.process.stdin is not None
                    self.process.stdin.write(b"go\n")
                    await self.process.stdin.drain()
                await self._until(self.stopped)
        write = self.writing()
        await self.kill()
        return write if self.stopped.is_set() else None

    async def _until(self, said: asyncio.Event) -> None:
        """Wait until the worker said so; raise ProcessLookupError if it exited first."""
        assert self.reader is not None
        waiting = asyncio.ensure_future(said.wait())
        await asyncio.wait([waiting, self.reader], return_when=asyncio.FIRST_COMPLETED)
        if not said.is_set():
            waiting.cancel()
            raise ProcessLookupError(f"worker {self.tag} exited with {self.process.returncode}")

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        if self.reader is not None:
            await self.reader
