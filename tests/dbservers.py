"""PostgreSQL and MariaDB servers configured for change capture, started by the tests.

Each runs on a free loopback port from a temporary data directory and is stopped by its
process id; the machine's own database servers are never touched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers import free_port


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start on port {port}")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class PostgresServer:
    """PostgreSQL with ``wal_level=logical``, run as the ``postgres`` OS user when started by
    root (initdb and postgres refuse root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="fastrdb-test-pg-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def client(self) -> list[str]:
        """The ``psql`` command-line client's argv for this server."""
        return ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-X", "-q"]

    def _as_postgres(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> PostgresServer:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not binaries:
            raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql")
        bin_dir = Path(binaries[-1])
        data = self.folder / "data"
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        subprocess.run(
            [*self._as_postgres(), *initdb, "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        settings = {
            "port": str(self.port),
            "unix_socket_directories": str(self.folder),
            "listen_addresses": "127.0.0.1",
            "wal_level": "logical",
            "max_replication_slots": "10",
            "max_wal_senders": "10",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
        }
        options = [part for name, value in settings.items() for part in ("-c", f"{name}={value}")]
        self._process = subprocess.Popen(
            [*self._as_postgres(), str(bin_dir / "postgres"), "-D", str(data), *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_port(self.port, self._process, "postgres")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the port opens before connections are accepted
            ready = subprocess.run(
                ["pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.05)
        raise RuntimeError("postgres did not become ready")

    def stop(self) -> None:
        _stop(self._process)  # runuser forwards SIGTERM: a smart shutdown
        self._process = None
        shutil.rmtree(self.folder, ignore_errors=True)


class MariaDBServer:
    """MariaDB with the row-based binlog and full row images and metadata."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="fastrdb-test-mariadb-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/capture"

    def client(self) -> list[str]:
        """The ``mariadb`` command-line client's argv for this server."""
        return ["mariadb", "-h", "127.0.0.1", f"-P{self.port}", "-uroot"]

    def start(self) -> MariaDBServer:
        data = self.folder / "data"
        user = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *user,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self._process = subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.folder / 'mariadb.sock'}",
                f"--pid-file={self.folder / 'mariadb.pid'}",
                f"--log-bin={self.folder / 'binlog'}",
                "--binlog-format=ROW",
                "--binlog-row-image=FULL",
                "--binlog-row-metadata=FULL",
                "--server-id=1",
                "--skip-name-resolve",
                "--innodb-flush-log-at-trx-commit=2",
                "--sync-binlog=0",
                "--innodb-buffer-pool-size=32M",
                *user,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_port(self.port, self._process, "mariadbd")
        subprocess.run(
            [*self.client(), "-e", "CREATE DATABASE IF NOT EXISTS capture"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return self

    def stop(self) -> None:
        _stop(self._process)
        self._process = None
        shutil.rmtree(self.folder, ignore_errors=True)
