"""The loop really closed over sockets: Parkinsonian source -> session -> aDBS -> source."""

from __future__ import annotations

import time

import numpy as np

from clients.stream import StreamClient
from sources.parkinson import ParkinsonSim
from tests.helpers import SimThread, free_port, wait_for


def _mean_beta(sc: StreamClient, seconds: float) -> tuple[float, float]:
    """Mean decoded beta power and mean true DBS amplitude (source truth) over a window."""
    beta, amp = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        u = sc.recv(1000)
        if u is not None and u.kind == "decoded":
            beta.append(u.decoded[0])
            if u.truth is not None:
                amp.append(u.truth[3])  # dbs_ma as the tissue received it
    return float(np.mean(beta)), float(np.mean(amp)) if amp else 0.0


def test_adaptive_dbs_suppresses_beta_live_over_zeromq(server):
    c = server.client()
    port = free_port()
    src_ep = f"tcp://127.0.0.1:{port}"
    s = c.start(c.create_session({
        "name": "adbs-live", "bin_ms": 1.0, "record": False,
        "source": {"endpoint": src_ep, "channels": 64},
        "decoder": {"type": "beta_power", "calibration_s": 3.0},
        "stim": {"modality": "dbs", "policy": {
            "type": "dual_threshold_dbs", "lower": 0.275, "upper": 0.55, "min_ma": 0.0,
            "max_ma": 3.0, "average_ms": 500, "onset_ms": 100, "termination_ms": 100,
            "ramp_up_ma_per_s": 2.5, "ramp_down_ma_per_s": 1.0, "pulse_width_us": 60.0,
            "frequency_hz": 130.0, "contacts": [1]}}})["id"])
    sid = s["id"]
    # The source listens to the session's stimulation output: the loop closes through it.
    with SimThread(source=ParkinsonSim(seed=3), port=port, stim_endpoint=s["output_endpoint"]):
        wait_for(lambda: c.session(sid)["live"]["state"] == "running", 30, "calibration")
        sc = StreamClient(s["output_endpoint"], (b"decoded",))
        beta_off, amp_off = _mean_beta(sc, 4.0)
        c.arm(sid)
        _mean_beta(sc, 2.0)  # ramp up and settle
        beta_on, amp_on = _mean_beta(sc, 5.0)
        sc.close()
        live = c.session(sid)["live"]
    c.stop(sid)
    assert amp_off == 0.0 and amp_on > 0.2, (amp_off, amp_on)  # the source was stimulated
    assert beta_on < 0.7 * beta_off, (beta_on, beta_off)
    assert live["counters"].get("stim_sent", 0) + live["counters"].get("stim_clamped", 0) > 0
