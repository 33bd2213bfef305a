"""A ``prometheus_client`` collector for FastRDB: every live instance's ``stats()`` counters per
model, the invalidations per table, and the health of every Redis server in use.

Needs the ``prometheus`` extra (``pip install 'fastrdb[prometheus]'``); importing ``fastrdb``
does not import this module. Registering is the application's choice::

    from prometheus_client import REGISTRY
    from fastrdb.prometheus import FastRDBCollector

    REGISTRY.register(FastRDBCollector())

Figures are read when Prometheus scrapes, from this process only (run one collector per
process; with several workers, let Prometheus sum them). Nothing here calls Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry

from fastrdb.events.invalidator import delivered
from fastrdb.instances import live
from fastrdb.status import RedisHealth, health

__all__ = ["FastRDBCollector", "register"]

_T = TypeVar("_T")
_Family = CounterMetricFamily | GaugeMetricFamily

MODEL_COUNTERS = {
    "hits": "Reads served from the cache (Redis or the near cache), negative entries included.",
    "misses": "Reads that found no usable entry.",
    "fills": "Entries stored after a miss.",
    "fills_refused": "Fills not stored: the lease was lost to an invalidation, or the read could "
    "be older than the lease.",
    "lease_waits": "Reads that waited for another reader's fill.",
    "bypasses": "Reads served from the database without the cache (Redis unusable, "
    "invalidations pending, unflushed writes).",
    "corrupt": "Cached values that failed validation (treated as misses).",
    "negative_hits": "Hits on a negative entry (a get answered 'no row').",
    "near_hits": "Reads served by the near cache without Redis.",
    "near_invalidations": "Near-cache entries dropped because they changed.",
}
"""The per-instance counters of ``FastRDB.stats()`` exported by model and table (the others,
``invalidations`` and ``redis_*``, are per table and per server: summed by model they would be
counted once per instance)."""

_NOT_PER_MODEL = frozenset({"invalidations", "redis_errors", "redis_overloads"})


class FastRDBCollector:
    """Collects FastRDB's figures at each scrape (a custom ``prometheus_client`` collector).

    - ``fastrdb_cache_<counter>_total{model, table}``: ``stats()`` counters of every live
      instance, summed over instances of one model (see :data:`MODEL_COUNTERS`);
    - ``fastrdb_invalidations_total{table}``: invalidations this process delivered;
    - ``fastrdb_redis_*{server, namespace}``: :func:`fastrdb.health` of every client in use,
      per server: ``breaker_open`` (1 while open or half-open), ``serving``, ``bypassed``,
      ``consecutive_failures``, ``errors_total``, ``pending``,
      ``pending_oldest_age_seconds``, ``last_error_timestamp_seconds`` (0: none yet).
    """

    def describe(self) -> Iterable[Metric]:
        """The metric names (so a registry refuses a second collector exporting them)."""
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        for name, figures in _stable(_model_figures).items():
            model, table = name
            for counter, value in figures.items():
                families[f"fastrdb_cache_{counter}"].add_metric([model, table], value)
        for table, count in sorted(_stable(lambda: dict(delivered)).items()):
            families["fastrdb_invalidations"].add_metric([table], count)
        for labels, reports in _stable(_by_server).items():
            _add_server(families, list(labels), reports)
        return list(families.values())

    def _families(self) -> dict[str, _Family]:
        families: dict[str, _Family] = {}
        for counter, documentation in MODEL_COUNTERS.items():
            name = f"fastrdb_cache_{counter}"
            families[name] = CounterMetricFamily(name, documentation, labels=["model", "table"])
        families["fastrdb_invalidations"] = CounterMetricFamily(
            "fastrdb_invalidations",
            "Invalidations of the table this process delivered to Redis.",
            labels=["table"],
        )
        server = ["server", "namespace"]
        for name, documentation, kind in (
            ("breaker_open", "1 while the circuit breaker is open or half-open.", "gauge"),
            ("serving", "1 while cached values are served (0: reads go to the DB).", "gauge"),
            ("bypassed", "1 if the memory policy makes FastRDB bypass the cache.", "gauge"),
            ("consecutive_failures", "Redis calls that failed in a row.", "gauge"),
            ("errors", "Failed Redis calls of the clients in use.", "counter"),
            ("pending", "Invalidations kept for replay (row versions, whole tables).", "gauge"),
            (
                "pending_oldest_age_seconds",
                "Age of the oldest invalidation kept for replay (0: none).",
                "gauge",
            ),
            (
                "last_error_timestamp_seconds",
                "Unix time of the last failed Redis call (0: none yet).",
                "gauge",
            ),
        ):
            full = f"fastrdb_redis_{name}"
            families[full] = (
                CounterMetricFamily(full, documentation, labels=server)
                if kind == "counter"
                else GaugeMetricFamily(full, documentation, labels=server)
            )
        return families


def register(registry: CollectorRegistry = REGISTRY) -> FastRDBCollector:
    """Register a :class:`FastRDBCollector` with ``registry`` (the default one if not given)
    and return it."""
    collector = FastRDBCollector()
    registry.register(collector)
    return collector


def _model_figures() -> dict[tuple[str, str], dict[str, int]]:
    figures: dict[tuple[str, str], dict[str, int]] = {}
    for instance in live():
        summed = figures.setdefault((instance.model.__name__, instance.table), {})
        for counter, value in instance.stats().items():
            if counter in MODEL_COUNTERS:
                summed[counter] = summed.get(counter, 0) + value
    return dict(sorted(figures.items()))


def _by_server() -> dict[tuple[str, str], list[RedisHealth]]:
    servers: dict[tuple[str, str], list[RedisHealth]] = {}
    for report in health():
        servers.setdefault((report.server, report.namespace), []).append(report)
    return servers


def _add_server(
    families: dict[str, _Family], labels: list[str], reports: list[RedisHealth]
) -> None:
    def add(name: str, value: float) -> None:
        families[f"fastrdb_redis_{name}"].add_metric(labels, value)

    add("breaker_open", max(int(r.breaker != "closed") for r in reports))
    add("serving", min(int(r.serving) for r in reports))
    add("bypassed", max(int(r.bypassed) for r in reports))
    add("consecutive_failures", max(r.consecutive_failures for r in reports))
    add("errors", sum(r.errors for r in reports))
    add("pending", max(r.pending for r in reports))
    add("pending_oldest_age_seconds", max(r.pending_oldest_age or 0.0 for r in reports))
    add("last_error_timestamp_seconds", max(r.last_error_at or 0.0 for r in reports))


def _stable(read: Callable[[], _T]) -> _T:
    """``read()``, tried again if the event loop's thread changed a collection it iterated
    (a scrape runs in the metrics server's thread)."""
    for _ in range(4):
        try:
            return read()
        except RuntimeError:  # "... changed size during iteration"
            continue
    return read()
