"""Per-stage latency histograms and counters kept inside the session loop.

Recording a sample is one ``searchsorted`` and an increment on preallocated
arrays, so metrics cost well under a microsecond per stage. The raw end-to-end
samples are also kept in a ring so benchmarks can compute exact percentiles.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any

import numpy as np

#: histogram upper bounds in microseconds (sub-millisecond resolution)
BUCKETS_US = (5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 2000, 5000, 10_000, 50_000, 250_000)
#: parse: a frame's checks and binning; bin: all of one bin's work (decoder, policy, guard,
#: publishing, audit, recording); decode: the decoder's step alone; stim: publishing the
#: stim message; publish: publishing the decoded vector; e2e: frame received -> stim sent
STAGES = ("parse", "bin", "decode", "stim", "publish", "e2e")


class StageHistogram:
    __slots__ = ("counts", "sum_us", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_US) + 1)
        self.sum_us = 0.0
        self.n = 0

    def observe_ns(self, ns: int) -> None:
        us = ns / 1000.0
        self.counts[bisect.bisect_left(BUCKETS_US, us)] += 1
        self.sum_us += us
        self.n += 1

    def to_dict(self) -> dict[str, Any]:
        return {"buckets_us": list(BUCKETS_US), "counts": list(self.counts),
                "sum_us": self.sum_us, "count": self.n}


class SessionMetrics:
    def __init__(self, ring: int = 1 << 20):
        self.stages = {s: StageHistogram() for s in STAGES}
        self.rejected: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._e2e = np.zeros(ring, np.int64)
        self._e2e_n = 0

    def e2e(self, ns: int) -> None:
        self.stages["e2e"].observe_ns(ns)
        self._e2e[self._e2e_n % len(self._e2e)] = ns
        self._e2e_n += 1

    def e2e_samples(self) -> np.ndarray:
        """All kept samples, oldest first (for benchmarks; not called per bin)."""
        n = len(self._e2e)
        if self._e2e_n <= n:
            return self._e2e[:self._e2e_n].copy()
        end = self._e2e_n % n
        return np.concatenate([self._e2e[end:], self._e2e[:end]])

    def e2e_recent(self, n: int = 2048) -> np.ndarray:
        """The last ``n`` samples (a view): what status percentiles are computed on."""
        k = min(self._e2e_n, len(self._e2e), n)
        end = self._e2e_n % len(self._e2e)
        if k <= end:
            return self._e2e[end - k:end]
        return np.concatenate([self._e2e[len(self._e2e) - (k - end):], self._e2e[:end]])

    def summary(self) -> dict[str, Any]:
        # Runs in the loop thread between bins: percentiles over the recent window only
        # (~30 us), never over the whole ring (1M samples would stall the loop for ms).
        s = self.e2e_recent()
        pct = {}
        if s.size:
            p = np.percentile(s, [50, 99, 99.9]) / 1000.0
            pct = {"p50_us": p[0], "p99_us": p[1], "p999_us": p[2], "max_us": s.max() / 1000.0,
                   "window": int(s.size)}
        return {
            "counters": dict(self.counters),
            "rejected": dict(self.rejected),
            "latency_e2e": pct,
            "stages": {k: v.to_dict() for k, v in self.stages.items()},
        }
