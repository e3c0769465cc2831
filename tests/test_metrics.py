"""Session metrics: histogram buckets and the ring of raw end-to-end samples."""

from __future__ import annotations

import numpy as np

from service.session.metrics import BUCKETS_US, SessionMetrics


def test_ring_returns_samples_oldest_first_after_wrapping():
    m = SessionMetrics(ring=10)
    for i in range(25):
        m.e2e(i * 1000)
    np.testing.assert_array_equal(m.e2e_samples(), np.arange(15, 25) * 1000)
    np.testing.assert_array_equal(m.e2e_recent(4), np.arange(21, 25) * 1000)


def test_summary_uses_the_recent_window_and_histogram_counts_everything():
    m = SessionMetrics(ring=100_000)
    for _ in range(5000):
        m.e2e(10_000_000)  # 10 ms, long ago
    for _ in range(2048):
        m.e2e(50_000)  # 50 us, recent
    s = m.summary()
    assert s["latency_e2e"]["p99_us"] == 50.0 and s["latency_e2e"]["window"] == 2048
    h = s["stages"]["e2e"]
    assert sum(h["counts"]) == 7048 and h["buckets_us"] == list(BUCKETS_US)
    assert h["counts"][BUCKETS_US.index(50)] == 2048
