"""The examples: the FastAPI app over HTTP, and the app and the worker as real processes."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event

from tests.conftest import REDIS_URL
from tests.processes import ROOT, finish, run_script
from tests.servers import free_port


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", "REDIS_URL": REDIS_URL}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
async def api(app_env: dict[str, str], redis_client: object) -> AsyncIterator[httpx.AsyncClient]:
    from examples.fastapi_app import app

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


async def test_the_users_api(api: httpx.AsyncClient) -> None:
    """Create, read (cached), list with paging and ordering, update, delete, and errors."""
    for email, name in [("b@x.io", "Bea"), ("a@x.io", "Al"), ("c@x.io", "Cy")]:
        response = await api.post("/users", json={"email": email, "name": name})
        assert response.status_code == 201, response.text
    assert (await api.post("/users", json={"email": "a@x.io", "name": "x"})).status_code == 409
    assert (await api.post("/users", json={"email": "nope", "name": "x"})).status_code == 422
    assert (await api.get("/users/a@x.io")).json()["name"] == "Al"
    page = (await api.get("/users", params={"limit": 2, "order_by": "name"})).json()
    assert [u["name"] for u in page["data"]] == ["Al", "Bea"]
    assert (page["limit"], page["page"], page["total"]) == (2, 1, 3)
    second = (await api.get("/users", params={"limit": 2, "page": 2, "order_by": "name"})).json()
    assert [u["name"] for u in second["data"]] == ["Cy"]
    bad = await api.get("/users", params={"order_by": "__class__"})
    assert bad.status_code == 422
    assert bad.json()["field"] == "order_by"
    assert (await api.patch("/users/a@x.io", json={"name": "Alan"})).json()["name"] == "Alan"
    assert (await api.get("/users/a@x.io")).json()["name"] == "Alan"
    assert (await api.delete("/users/a@x.io")).status_code == 204
    assert (await api.get("/users/a@x.io")).status_code == 404
    stats = (await api.get("/stats")).json()
    assert stats["hits"] >= 1


async def test_the_app_wiring_costs_a_hit_no_thread_and_no_connection(
    api: httpx.AsyncClient,
) -> None:
    """The example's dependencies run on the event loop (no threadpool hop); a cached GET
    checks out no database connection; requests that used the database give theirs back."""
    from examples.fastapi_app import app, get_db, get_redis

    assert inspect.isasyncgenfunction(get_db)
    assert inspect.iscoroutinefunction(get_redis)
    engine = app.state.sessions.kw["bind"]
    checkouts: list[object] = []
    event.listen(engine.sync_engine, "checkout", lambda *args: checkouts.append(args))
    assert (await api.post("/users", json={"email": "h@x.io", "name": "H"})).status_code == 201
    assert (await api.get("/users/h@x.io")).status_code == 200  # a miss: fills
    assert engine.pool.checkedout() == 0
    used = len(checkouts)
    for _ in range(3):
        assert (await api.get("/users/h@x.io")).json()["name"] == "H"
    assert len(checkouts) == used
    assert (await api.patch("/users/h@x.io", json={"name": "I"})).json()["name"] == "I"
    assert (await api.get("/users/h@x.io")).json()["name"] == "I"
    assert engine.pool.checkedout() == 0


@pytest.mark.slow
async def test_app_and_worker_as_processes(app_env: dict[str, str], redis_client: object) -> None:
    """uvicorn serves cached reads; the worker process writes; the app's reads follow."""
    port = free_port()
    env = {**os.environ, **app_env, "PYTHONPATH": str(ROOT)}
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "examples.fastapi_app:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):
                try:
                    if (await http.get("/stats")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            created = await http.post("/users", json={"email": "w@x.io", "name": "Before"})
            assert created.status_code == 201, created.text
            assert (await http.get("/users/w@x.io")).json()["name"] == "Before"
            assert (await http.get("/users")).json()["data"][0]["visits"] == 0

            worker = await run_script(
                ROOT / "examples" / "worker.py",
                "--rename",
                "w@x.io",
                "After",
                "--visits",
                "2",
                "--interval",
                "0",
            )
            assert worker.returncode == 0, worker.stderr

            assert (await http.get("/users/w@x.io")).json()["name"] == "After"
            assert (await http.get("/users")).json()["data"][0]["visits"] == 2
            assert (await http.get("/stats")).json()["hits"] >= 1
    finally:
        server.terminate()
        await finish(server)


@pytest.mark.slow
async def test_the_demo_on_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/demo.py runs on SQLite and the embedded Redis and shows the cache following
    FastRDB, bulk and ORM writes."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    demo = await run_script(ROOT / "examples" / "demo.py")
    assert demo.returncode == 0, demo.stderr
    assert "embedded" in demo.stdout or "unix://" in demo.stdout
    assert "update via FastRDB -> get: Ada L." in demo.stdout
    assert "-> get: G. Hopper / L.T." in demo.stdout
    assert "get_multi page 1 -> ['Ada L.', 'G. Hopper']" in demo.stdout
    assert "raw SQL + invalidate -> get: Ada (SQL)" in demo.stdout


@pytest.mark.slow
async def test_the_metrics_example_scrapes_its_own_counters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """examples/metrics.py registers the collector, serves /metrics and finds its hits there,
    and the health of its Redis client."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    metrics = await run_script(ROOT / "examples" / "metrics.py")
    assert metrics.returncode == 0, metrics.stderr
    assert 'fastrdb_cache_hits_total{model="User",table="users"} 3.0' in metrics.stdout
    assert "fastrdb_redis_serving{" in metrics.stdout
    assert "'breaker': 'closed'" in metrics.stdout
