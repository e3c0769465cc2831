"""Online recalibration, live (issue #16, item 3): a running session recovers from drift.

A real control plane and real session processes read a simulated motor cortex on
127.0.0.1 that drifts mid-run (``drift_at_s``, as ``spikeloop sim --drift-at``:
preferred directions rotated 30 deg, 20 % of the units silenced). Two sessions read
the same frames and calibrate the same decoder before the drift; one has adaptation
switched on through the REST API (``ControlClient.adapt``, ``POST
/sessions/{id}/adapt``), the other is the control. R² of decoded vs true velocity is
measured from each session's own decoded stream (``StreamClient``; decoded messages
carry the truth of their bin) in three windows of source time: before the drift,
just after it (the first 10 s), and the last 30 s of the 2 minutes after it.

Recovered = (end - drift) / (pre - drift) with ``pre`` and ``end`` from the adaptive
session and ``drift`` from its twin, the control: an adapting session starts recovering
within seconds (the SNN's R² over the first 10 s after the drift is 0.77 adapting, 0.62
frozen), so its own "just after" window would hide most of the loss. Both measures are
printed; the control's own must show no recovery.

The source runs as fast as the sessions take it (it is held once, at a known source
time, while the test switches adaptation on), so 2 minutes of simulated time cost
seconds of wall time; every decision in the loop depends on the source clock only.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from clients.stream import StreamClient
from decoders.metrics import r2_per_output
from sources.motor import MotorCortexSim
from tests.helpers import PY, REPO, SimThread, free_port, wait_for

BIN_MS = 50.0  # 2 minutes of source time = 2400 bins
NS = 1_000_000_000
DRIFT = {"drift_deg": 30.0, "drift_silence": 0.2}
OUTPUTS = ["vx", "vy"]  # a cursor-velocity decoder

#: decoder -> (params, calibration seconds). The SNN is the test's small one (64 neurons,
#: 15 epochs, as tests/test_decoders_recalibration.py): the default 256-neuron network
#: would take minutes of CPU to calibrate in the session.
DECODERS = {
    "kalman": ({}, 150.0),
    "snn": ({"hidden": 64, "epochs": 15, "batch": 8, "seed": 0}, 300.0),
}


@dataclass
class Decoded:
    """A session's decoded stream, collected by a thread: bin start (s), output, truth."""

    endpoint: str
    t: list[float] = field(default_factory=list)
    out: list[np.ndarray] = field(default_factory=list)
    truth: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = StreamClient(self.endpoint, topics=(b"decoded",))
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # decoded: the outputs in decoder.outputs order; truth: the whole behaviour vector
        cols = [MotorCortexSim.truth_names.index(n) for n in OUTPUTS]
        while not self._stop.is_set():
            u = self.client.recv(100)
            if u is None or u.truth is None or u.decoded is None:
                continue
            self.out.append(u.decoded)
            self.truth.append(u.truth[cols])
            self.t.append(u.t_ns / NS)  # appended last: a reader sees complete rows

    @property
    def last_s(self) -> float:
        return self.t[-1] if self.t else -1.0

    def r2(self, t0: float, t1: float) -> float:
        """Mean R² over the outputs, bins starting in [t0, t1) of source time."""
        n = len(self.t)
        t = np.asarray(self.t[:n])
        sel = np.flatnonzero((t >= t0) & (t < t1))
        assert len(sel) >= 0.9 * (t1 - t0) * 1000 / BIN_MS, \
            f"only {len(sel)} decoded bins in [{t0}, {t1}) s"
        out = np.asarray([self.out[i] for i in sel])
        truth = np.asarray([self.truth[i] for i in sel])
        return float(r2_per_output(truth, out).mean())

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.client.close()


def _session(c, name: str, endpoint: str, kind: str) -> tuple[str, Decoded]:
    params, calibration_s = DECODERS[kind]
    sid = c.create_session({
        "name": name, "bin_ms": BIN_MS,
        "source": {"endpoint": endpoint, "channels": 96},
        "decoder": {"type": kind, "params": params, "calibration_s": calibration_s,
                    "outputs": OUTPUTS},
        # an ordinary process: the source runs faster than real time, and a SCHED_FIFO
        # session busy with its backlog would starve everything else on the machine
        "realtime": False, "record": False})["id"]
    s = c.start(sid)
    return sid, Decoded(s["output_endpoint"])


def _running(c, sid: str):
    live = c.session(sid).get("live") or {}
    if live.get("state") == "failed":
        raise AssertionError(f"session {sid} failed: {live.get('error')}")
    return live if live.get("state") == "running" else None


SNN_SHORT = (
    "the SNN recalibrates its readout (RLS, delta 300) and re-centres its inputs; live it "
    "gets back to R² 0.808 from 0.624 (frozen) against 0.860 before the drift, 78 % of the "
    "loss (76 % with the old delta 10 and no re-centring); offline, on 2,400 bins of the "
    "same drift, it recovers 90-93 % (docs/decoders.md, online recalibration)")


@pytest.mark.timeout(600)  # the SNN's calibration fit alone takes a minute or more
@pytest.mark.parametrize("kind", ["kalman", pytest.param(
    "snn", marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=SNN_SHORT))])
def test_live_session_recovers_from_drift_with_adaptation_on(server, kind, caplog):
    _, calibration_s = DECODERS[kind]
    hold = calibration_s + 10.0  # calibrated by then; adaptation is switched on here
    drift = hold + 60.0  # before: [hold, drift)
    end = drift + 120.0  # 2 minutes of source time after the drift
    windows = {"pre": (hold, drift), "drift": (drift, drift + 10.0), "end": (end - 30.0, end)}
    c = server.client()
    streams: list[Decoded] = []
    caplog.set_level(logging.INFO, logger="sources.motor")
    # 10 ms frames, rates updated every 5 ms (the default 1 ms is 4x slower to simulate)
    with SimThread(units=96, seed=0, realtime=False, step_ms=10.0, substep_ns=5_000_000,
                   subscribers=2, hold_at_s=(hold,), seconds=end + 1.0, drift_at_s=drift,
                   **DRIFT) as src:
        try:
            t0 = time.monotonic()
            adaptive, s_a = _session(c, f"{kind}-adapt", src.endpoint, kind)
            control, s_c = _session(c, f"{kind}-control", src.endpoint, kind)
            streams += [s_a, s_c]
            wait_for(lambda: src.holds_reached, 600, f"the source to reach {hold} s")
            for sid in (adaptive, control):
                wait_for(lambda sid=sid: _running(c, sid), 900, f"session {sid} to calibrate")
            wall = {"start_to_calibrated_at_hold": time.monotonic() - t0}
            reply = c.adapt(adaptive, True)  # what docs/decoders.md tells a user to call
            assert reply == {"adapt": True, "adapting": True}
            src.resume()
            t0 = time.monotonic()
            wait_for(lambda: min(s.last_s for s in streams) >= end, 900,
                     f"both sessions to decode {end} s of source time")
            wall["hold_to_end"] = time.monotonic() - t0
            live_a, live_c = _running(c, adaptive), _running(c, control)
        finally:
            for s in streams:
                s.close()
    assert src.sim.drifted_at_ns == int(drift * NS)
    assert any(f"drifted at {drift:.3f} s" in r.getMessage() for r in caplog.records)
    assert live_a["adapting"] and not live_c["adapting"]
    assert live_a["gaps"] == live_c["gaps"] == 0

    r2 = {name: {w: s.r2(*span) for w, span in windows.items()}
          for name, s in (("adapt", s_a), ("control", s_c))}
    # Each session's own three windows. The adaptive one starts recovering within seconds
    # (its "drift" window is already partly recalibrated), so the R² the drift costs is
    # read from its twin: the control decodes the same frames with the same decoder,
    # calibrated on the same bins (every frame from t = 0 reaches both) and then frozen.
    own = {name: (v["end"] - v["drift"]) / (v["pre"] - v["drift"]) for name, v in r2.items()}
    lost_to = r2["control"]["drift"]
    recovered = (r2["adapt"]["end"] - lost_to) / (r2["adapt"]["pre"] - lost_to)
    print(f"\n{kind}: R² {r2}\nrecovered {recovered:.3f} (own windows: {own}); wall s "
          f"{wall}")
    assert r2["control"]["pre"] - lost_to > 0.1, (r2, "the drift should hurt the decoder")
    assert recovered >= 0.8, (r2, recovered)
    assert own["adapt"] > 0, (r2, own)
    assert own["control"] < 0.5, (r2, own)  # the same decoder, frozen, does not recover


@pytest.mark.unit
def test_scheduled_drift_is_the_drift_at_that_source_time(caplog):
    bin_ns = int(BIN_MS * 1e6)
    caplog.set_level(logging.INFO, logger="sources.motor")
    scheduled = MotorCortexSim(units=32, seed=4, drift_at_s=5.0, **DRIFT)
    by_hand = MotorCortexSim(units=32, seed=4)
    c1, y1 = scheduled.counts(200, bin_ns)
    c2a, y2a = by_hand.counts(100, bin_ns)
    by_hand.drift(DRIFT["drift_deg"], DRIFT["drift_silence"])
    c2b, y2b = by_hand.counts(100, bin_ns)
    np.testing.assert_array_equal(c1, np.concatenate([c2a, c2b]))
    np.testing.assert_array_equal(y1, np.concatenate([y2a, y2b]))
    assert scheduled.drifted_at_ns == 5 * NS
    assert [r.getMessage() for r in caplog.records] == [
        "motor source drifted at 5.000 s (source clock): preferred directions rotated 30 deg, "
        "6 of 32 units silenced"]
    # event mode (what the live publisher sends): silenced units fall quiet at that time
    live = MotorCortexSim(units=32, seed=4, drift_at_s=1.0, **DRIFT)
    step = live.advance(2 * NS)
    quiet = np.isin(step.ids, np.flatnonzero(live.gain == 0))
    assert (live.gain == 0).sum() == 6 and quiet.any()
    assert step.times[quiet].max() < NS  # the silenced units fall quiet at 1 s
    with pytest.raises(ValueError, match="drift_silence"):
        MotorCortexSim(drift_at_s=1.0, drift_silence=2.0)


def test_cli_sim_drifts_at_the_given_source_time():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.run([PY, "-m", "clients.cli", "sim", "--endpoint", endpoint, "--fast",
                           "--seconds", "2", "--step-ms", "10", "--drift-at", "1.5",
                           "--drift-deg", "45", "--drift-silence", "0.25"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ("motor source drifted at 1.500 s (source clock): preferred directions rotated "
            "45 deg, 24 of 96 units silenced") in proc.stderr
    bad = subprocess.run([PY, "-m", "clients.cli", "sim", "--endpoint", endpoint, "--source",
                          "parkinson", "--drift-at", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "only the motor source drifts" in bad.stderr
