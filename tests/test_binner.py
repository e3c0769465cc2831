"""Binning on the source clock: exact counts, reorder tolerance, late events, clock jumps."""

from __future__ import annotations

import numpy as np
import pytest

from service.loop.binner import Binner

pytestmark = pytest.mark.unit

MS = 1_000_000


def _drain(b, watermark):
    return [(i, s, c.copy()) for i, s, c in b.ready(watermark)]


def test_events_land_in_their_bins():
    b = Binner(channels=3, bin_ns=10 * MS)
    ids = np.array([0, 1, 1, 2, 0])
    times = np.array([1, 2, 11, 15, 25]) * MS
    b.add_events(ids, times, watermark_ns=30 * MS)
    out = _drain(b, 30 * MS)
    assert [o[0] for o in out] == [0, 1, 2]
    np.testing.assert_array_equal(out[0][2], [1, 1, 0])
    np.testing.assert_array_equal(out[1][2], [0, 1, 1])
    np.testing.assert_array_equal(out[2][2], [1, 0, 0])
    assert out[1][1] - out[0][1] == 10 * MS


def test_bin_is_not_emitted_before_its_end():
    b = Binner(channels=1, bin_ns=10 * MS)
    b.add_events(np.array([0]), np.array([1 * MS]), 9 * MS)
    assert _drain(b, 9 * MS) == []
    assert len(_drain(b, 10 * MS)) == 1


def test_reordering_within_tolerance_is_binned_correctly():
    b = Binner(channels=1, bin_ns=10 * MS, tolerance_ns=5 * MS)
    b.add_events(np.array([0]), np.array([12 * MS]), 12 * MS)
    assert _drain(b, 12 * MS) == []  # bin 0 still open: tolerance
    b.add_events(np.array([0]), np.array([8 * MS]), 14 * MS)  # late but within tolerance
    out = _drain(b, 15 * MS)
    assert len(out) == 1 and out[0][2][0] == 1
    assert b.late_events == 0


def test_events_for_emitted_bins_are_counted_late_not_misbinned():
    b = Binner(channels=1, bin_ns=10 * MS)
    b.add_events(np.array([0]), np.array([5 * MS]), 10 * MS)
    _drain(b, 10 * MS)
    b.add_events(np.array([0, 0]), np.array([4 * MS, 15 * MS]), 20 * MS)
    out = _drain(b, 20 * MS)
    assert b.late_events == 1
    assert out[0][2][0] == 1


def test_pre_binned_counts_accumulate_into_wider_bins():
    b = Binner(channels=2, bin_ns=4 * MS)
    for k in range(8):
        b.add_counts(k * MS, np.array([1.0, 2.0]))
    out = _drain(b, 8 * MS)
    assert len(out) == 2
    np.testing.assert_array_equal(out[0][2], [4, 8])


def test_clock_jump_resyncs_instead_of_emitting_thousands_of_empty_bins():
    b = Binner(channels=1, bin_ns=1 * MS, max_jump_ns=1000 * MS)
    b.add_events(np.array([0]), np.array([0]), 1 * MS)
    _drain(b, 1 * MS)
    b.add_events(np.array([0]), np.array([3600_000 * MS]), 3600_001 * MS)
    out = _drain(b, 3600_001 * MS)
    assert b.clock_jumps == 1
    assert len(out) == 1 and out[0][2][0] == 1


def test_a_far_watermark_never_emits_an_unbounded_run_of_bins():
    b = Binner(channels=1, bin_ns=1 * MS, max_jump_ns=100 * MS)
    b.add_counts(0, np.array([1.0]))
    assert len(_drain(b, 1 * MS)) == 1
    # A hostile watermark (e.g. a huge bin width) re-anchors instead of looping for ever.
    assert _drain(b, 2**62) == []
    assert b.clock_jumps == 1
