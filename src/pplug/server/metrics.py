"""Request counts, latency and batch-size histograms, rendered in the Prometheus text format."""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: ``le`` upper bounds, +Inf implied)."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket (not cumulative), last = +Inf
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, cum = [], 0
        for le, c in zip([*map(_num, self.buckets), "+Inf"], self.counts, strict=True):
            cum += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cum}')
        braces = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{braces} {self.total:.6f}", f"{name}_count{braces} {self.n}"]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class Metrics:
    """Thread-safe counters of one server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()  # (method, route template, status)
        self.latency: dict[tuple[str, str], Histogram] = {}  # (method, route template) -> seconds
        self.batch_size = Histogram(BATCH_BUCKETS)  # generate requests per backbone call
        self.batch_seconds = Histogram(LATENCY_BUCKETS)  # backbone call duration
        self.queue_seconds = Histogram(LATENCY_BUCKETS)  # wait from enqueue to the start of its batch

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.latency.setdefault((method, route), Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int, seconds: float, waits: list[float]) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.batch_seconds.observe(seconds)
            for w in waits:
                self.queue_seconds.observe(w)

    def snapshot(self) -> dict[str, Any]:
        """A JSON view: request counts, batches and mean batch size."""
        with self._lock:
            return {"requests": [{"method": m, "route": r, "status": s, "count": c}
                                 for (m, r, s), c in sorted(self.requests.items())],
                    "batches": self.batch_size.n, "batched_requests": int(self.batch_size.total),
                    "mean_batch_size": round(self.batch_size.total / max(1, self.batch_size.n), 3),
                    "batch_size_buckets": dict(zip([*map(_num, BATCH_BUCKETS), "+Inf"], self.batch_size.counts,
                                                   strict=True))}

    def render(self) -> str:
        """Prometheus text exposition (version 0.0.4)."""
        with self._lock:
            out = ["# HELP pplug_requests_total HTTP requests by method, route and status.",
                   "# TYPE pplug_requests_total counter"]
            out += [f'pplug_requests_total{{method="{m}",route="{r}",status="{s}"}} {c}'
                    for (m, r, s), c in sorted(self.requests.items())]
            out += ["# HELP pplug_request_seconds HTTP request latency by method and route template.",
                    "# TYPE pplug_request_seconds histogram"]
            for (method, route), h in sorted(self.latency.items()):
                out += h.lines("pplug_request_seconds", f'method="{method}",route="{route}"')
            for name, h, text in (("pplug_batch_size", self.batch_size, "Generate requests per backbone call."),
                                  ("pplug_batch_seconds", self.batch_seconds, "Backbone call duration."),
                                  ("pplug_queue_seconds", self.queue_seconds, "Wait before a request's batch ran.")):
                out += [f"# HELP {name} {text}", f"# TYPE {name} histogram", *h.lines(name)]
            return "\n".join(out) + "\n"
