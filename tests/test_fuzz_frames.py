"""A short run of bench/fuzz.py in CI: mutated frames through the parser and the whole loop."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fuzz  # noqa: E402

from service.wire import protocol as P  # noqa: E402

pytestmark = pytest.mark.unit


def test_fuzz_mutated_frames_never_crash_or_exceed_limits():
    res = fuzz.run(cases=30_000, seed=7)
    assert res["crashes"] == 0, res["crash_examples"]
    assert res["accepted"] > 1000 and res["bins"] > 500  # the loop was really exercised
    assert len(res["rejected"]) >= 8  # and so were many rejection paths


def test_fuzz_regression_hostile_bin_width_is_rejected():
    f = P.encode_array(b"spikes", P.KIND_COUNTS, "s", 0, 0, np.ones(4, np.uint16),
                       bin_ns=2**63 - 1)
    with pytest.raises(P.ProtocolError) as e:
        P.decode(f)
    assert e.value.reason == "header_invalid"


def test_fuzz_regression_counts_wider_than_the_session_bin_are_refused():
    core = fuzz.make_core()
    f = P.encode_array(b"spikes", P.KIND_COUNTS, "s", 0, 0, np.ones(fuzz.CH, np.uint16),
                       bin_ns=5_000_000)
    core.accept(f)
    assert dict(core.rejected) == {"bin_mismatch": 1}
    assert core.counters["frames"] == 0 and core.counters["bins"] == 0
