"""Worker statistics in Redis: what each batch adds to a version's `worker_stats` hash, and how it reads back.

Kept apart from the queue protocol (serving/protocol.py owns the key): the worker writes these
(worker/metrics.py), the API's /metrics reads them (app/metrics.py).
"""

from __future__ import annotations

from dataclasses import dataclass

# Worker statistics. Every worker adds each batch to one hash, {prefix}:worker_stats, with HINCRBY
# (atomic, so workers never overwrite each other); the API's /metrics reads it at scrape time. The
# sums are the fleet's and outlive any one worker: they restart from zero only when Redis loses its
# data, which Prometheus reads as a counter reset. Fields: `expired`, `<histogram>_sum`
# and one `<histogram>_le:<upper bound>` per bucket, counting the observations of that bucket only.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, float("inf"))
INFERENCE_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


def _bucket_field(histogram: str, bound: float) -> str:
    return f"{histogram}_le:{'+Inf' if bound == float('inf') else f'{bound:g}'}"


def batch_stats_increments(batch_size: int, inference_seconds: float, expired: int) -> dict[str, float]:
    """What one batch adds to the worker_stats hash; a batch that ran nothing adds only its expired count."""
    increments: dict[str, float] = {"expired": expired} if expired else {}
    if batch_size:
        for histogram, buckets, value in (("batch_size", BATCH_SIZE_BUCKETS, batch_size),
                                          ("inference_seconds", INFERENCE_SECONDS_BUCKETS, inference_seconds)):
            increments[_bucket_field(histogram, next(b for b in buckets if value <= b))] = 1
            increments[f"{histogram}_sum"] = value
    return increments


@dataclass(frozen=True)
class Histogram:
    buckets: list[tuple[str, int]]  # (upper bound as Prometheus spells it, cumulative count), ending with +Inf
    sum: float


@dataclass(frozen=True)
class WorkerStats:
    expired: int
    batch_size: Histogram
    inference_seconds: Histogram

    @property
    def batches(self) -> int:
        return self.batch_size.buckets[-1][1]  # every batch is counted once, and +Inf counts them all


def decode_worker_stats(fields: dict[bytes, bytes]) -> WorkerStats:
    """The worker_stats hash (HGETALL) as totals and cumulative histograms; an absent hash is all zeros."""
    values = {name.decode(): float(value) for name, value in fields.items()}

    def histogram(name: str, bounds: tuple[float, ...]) -> Histogram:
        running, buckets = 0, []
        for bound in bounds:
            field_name = _bucket_field(name, bound)
            running += int(values.get(field_name, 0))
            buckets.append((field_name.split(":", 1)[1], running))
        return Histogram(buckets, values.get(f"{name}_sum", 0.0))

    return WorkerStats(int(values.get("expired", 0)),
                       histogram("batch_size", BATCH_SIZE_BUCKETS),
                       histogram("inference_seconds", INFERENCE_SECONDS_BUCKETS))
