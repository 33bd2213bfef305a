"""fastrdb.prometheus: the collector's figures, scraped over HTTP from a real metrics server."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fastrdb import FastRDB, Settings
from fastrdb.events import listen
from fastrdb.prometheus import MODEL_COUNTERS, FastRDBCollector, register
from tests.conftest import DATABASES
from tests.models import User, UserCreate, UserResponse, UserUpdate
from tests.servers import Proxy, RedisServer, free_port

SETTINGS = Settings(redis_timeout=2.0, breaker_threshold=2, breaker_cooldown=30)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def metrics_url() -> Iterator[str]:
    """A prometheus_client HTTP server on a free port, exporting a registry that holds only
    FastRDB's collector."""
    registry = CollectorRegistry()
    register(registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(10)


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(url, timeout=10)
    response.raise_for_status()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_crud_counters_are_exported_by_model_and_table(
    maker: async_sessionmaker[AsyncSession], redis_client: redis.asyncio.Redis, metrics_url: str
) -> None:
    """Hits and misses (of a present and an absent row) show in the scraped counters of the
    model, equal to the instance's stats(), and the create's invalidation in the table's."""
    crud = FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:email:{email}"
    )
    user = {"model": "User", "table": "users"}
    gc.collect()  # instances of earlier tests take their counts with them: not between scrapes
    before = await scrape(metrics_url)
    async with maker() as db:
        await crud.create(db=db, redis=redis_client, obj_in=UserCreate(email="a@x.io", name="A"))
        for _ in range(2):  # hits: create filled the entry (write-through)
            await crud.get(db=db, redis=redis_client, email="a@x.io")
        for _ in range(2):  # a miss that fills a negative entry, then a negative hit
            with pytest.raises(Exception, match="No row"):
                await crud.get(db=db, redis=redis_client, email="nobody@x.io")
    after = await scrape(metrics_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    stats = crud.stats()
    assert stats["hits"] >= 2 and stats["misses"] >= 1, stats  # (MariaDB fills less: RR)
    for counter in MODEL_COUNTERS:
        assert delta(f"fastrdb_cache_{counter}_total", **user) == stats[counter], counter
    assert delta("fastrdb_invalidations_total", table="users") == 1


@pytest.mark.parametrize("database", DATABASES[:1], indirect=True)
async def test_health_figures_are_exported_by_server(
    maker: async_sessionmaker[AsyncSession],
    server: RedisServer,
    proxy: Proxy,
    metrics_url: str,
) -> None:
    """Healthy: breaker closed, serving, nothing pending. Link cut, a commit kept, reads failing:
    pending, its age, the errors, the last error's time and the open breaker are scraped."""
    client = redis.asyncio.Redis(
        host="127.0.0.1", port=proxy.port, socket_timeout=2.0, socket_connect_timeout=2.0
    )
    labels = {"server": f"redis://127.0.0.1:{proxy.port}/0", "namespace": "fastrdb"}
    crud = FastRDB[User, UserCreate, UserUpdate, UserResponse](
        User, UserResponse, pattern="user:email:{email}", settings=SETTINGS
    )
    writer = async_sessionmaker(maker.kw["bind"])
    handle = listen(writer, client, settings=SETTINGS)
    async with maker() as db:
        await crud.create(db=db, redis=client, obj_in=UserCreate(email="a@x.io", name="A"))
    samples = await scrape(metrics_url)
    assert value(samples, "fastrdb_redis_serving", **labels) == 1
    assert value(samples, "fastrdb_redis_breaker_open", **labels) == 0
    assert value(samples, "fastrdb_redis_pending", **labels) == 0
    assert value(samples, "fastrdb_redis_errors_total", **labels) == 0
    assert value(samples, "fastrdb_redis_last_error_timestamp_seconds", **labels) == 0

    await proxy.cut()
    cut = time.time()
    async with writer() as session:
        (await session.scalars(select(User))).one().name = "B"
        await session.commit()
    await asyncio.sleep(0.1)
    async with maker() as db:
        await crud.count(db=db, redis=client)  # the replay fails: the breaker opens
    samples = await scrape(metrics_url)
    assert value(samples, "fastrdb_redis_serving", **labels) == 0
    assert value(samples, "fastrdb_redis_breaker_open", **labels) == 1
    assert value(samples, "fastrdb_redis_consecutive_failures", **labels) == 2
    assert value(samples, "fastrdb_redis_errors_total", **labels) == 2
    assert value(samples, "fastrdb_redis_pending", **labels) == 2
    assert value(samples, "fastrdb_redis_pending_oldest_age_seconds", **labels) >= 0.1
    last_error = value(samples, "fastrdb_redis_last_error_timestamp_seconds", **labels)
    assert cut <= last_error <= time.time()
    handle.remove()
    await client.aclose()


def test_a_registry_refuses_a_second_collector() -> None:
    """The collector names its metrics: registering two in one registry is refused."""
    registry = CollectorRegistry()
    registry.register(FastRDBCollector())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(FastRDBCollector())


def test_importing_fastrdb_does_not_import_prometheus_client() -> None:
    """prometheus_client is an optional extra: only fastrdb.prometheus imports it."""
    code = (
        "import sys, fastrdb, fastrdb.events\n"
        "print('prometheus_client' in sys.modules)\n"
        "import fastrdb.prometheus\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "True"]
