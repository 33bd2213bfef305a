"""What a phase of the soak measured: throughput, latency, server errors and stale answers,
from the exchanges logged by the load generator and the writer worker."""

from __future__ import annotations

from dataclasses import dataclass

from bench.http.check import Exchange, History
from bench.http.run import percentile
from bench.soak.chaos import Outage


@dataclass
class Figures:
    app: str
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    writes: int
    errors: int
    """Answers of 500 or more, and requests that got no answer (599), in all."""
    errors_in_outages: int
    """Of ``errors``, those that overlapped a Redis-down window (with its allowance)."""
    stale: int
    stale_examples: list[dict[str, object]]
    """Up to 5 stale answers, each with the writes of its row around it (seconds from the
    start of the load) and the Redis-down windows near it."""


def measure(
    app: str,
    seconds: float,
    http: list[Exchange],
    worker: list[Exchange],
    settles: list[Exchange],
    outages: list[Outage],
    allowance_us: float,
    began_us: float,
) -> Figures:
    """``http``: the load generator's exchanges (and the checks after kills); ``worker``: the
    writer worker's; ``settles``: reads of the database that settle writes of killed workers."""
    history = History()
    history.add(http + worker + settles)
    answered = [ex for ex in http if ex.kind != "S"]
    latencies = [(ex.finished - ex.started) / 1000 for ex in answered]
    errors = [ex for ex in answered if ex.status >= 500]
    windows = [(outage.down, outage.up + allowance_us) for outage in outages]
    inside = [
        ex for ex in errors if any(ex.started <= up and ex.finished >= down for down, up in windows)
    ]
    stale = history.stale(answered)
    examples = []
    if stale:
        everything = http + worker + settles
        examples = [
            explain(ex, everything, outages, began_us) for ex in answered if history.stale([ex])
        ][:5]
    written = [ex for ex in answered + worker if ex.kind == "P" and ex.status == 200]
    return Figures(
        app,
        seconds,
        len(answered),
        len(answered) / seconds,
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        len(written),
        len(errors),
        len(inside),
        stale,
        examples,
    )


def explain(
    stale: Exchange, exchanges: list[Exchange], outages: list[Outage], began_us: float
) -> dict[str, object]:
    """A stale answer with what happened to its row within 5 s before it."""

    def seconds(moment: float) -> float:
        return round((moment - began_us) / 1e6, 4)

    def describe(ex: Exchange) -> str:
        until = seconds(ex.finished) if ex.finished else "?"
        return f"{ex.kind} {ex.status} {ex.name} {seconds(ex.started)}..{until}"

    near = [
        ex
        for ex in exchanges
        if ex.row == stale.row and stale.started - 5e6 <= ex.started <= stale.finished
    ]
    return {
        "answer": describe(stale),
        "row": stale.row,
        "row_history": [describe(ex) for ex in sorted(near, key=lambda ex: ex.started)],
        "redis_down": [
            f"{seconds(o.down)}..{seconds(o.up)}"
            for o in outages
            if o.down - 10e6 <= stale.started <= o.up + 10e6
        ],
    }
