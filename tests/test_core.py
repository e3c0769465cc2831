"""The session core across lifecycle events, on the recorded path and through verify.

Each scenario runs wire frames through the same core the session process runs (with
its recorder sink), then checks what a user relies on: armed stimulation comes back
after a restart or a jump, bin indices and recorded times only go forward, status
says why nothing is sent, and ``verify`` of the recording is identical.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from decoders.base import build_decoder
from service.loop.core import Control, ControlOp, OnBin, SessionCore, SessionState
from service.recording.recorder import RecordType, read_log
from service.recording.verify import verify
from service.session.config import SessionConfig
from service.session.simsession import run_frames
from service.wire.protocol import KIND_BEHAVIOR, decode, encode_array, encode_events
from sources.motor import MotorCortexSim

pytestmark = pytest.mark.unit

BIN_MS = 20.0
BINS_PER_S = int(1000 / BIN_MS)
UNITS = 32


def _cfg(**decoder) -> SessionConfig:
    return SessionConfig.model_validate({
        "bin_ms": BIN_MS, "source": {"channels": UNITS},
        "decoder": {"type": "kalman", "calibration_s": 3.0} | decoder,
        "stim": {"policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.2}}})


def segment(seed: int, seconds: float, epoch: int, seq0: int = 0, shift_ns: int = 0,
            frame_ms: float = 5.0) -> Iterator[list[bytes]]:
    """A simulated source's frames: its own clock from 0 (plus ``shift_ns``), its epoch."""
    sim = MotorCortexSim(units=UNITS, seed=seed)
    frame_ns = int(frame_ms * 1e6)
    names = {"names": list(sim.truth_names)}
    for k in range(int(seconds * 1000 / frame_ms)):
        st = sim.advance(frame_ns)
        t = st.t_ns + shift_ns
        yield encode_array(b"behavior", KIND_BEHAVIOR, "sim.behavior", seq0 + k, t, st.truth,
                           epoch=epoch, extra=names)
        yield encode_events(b"spikes", "sim", seq0 + k, t, UNITS, st.ids, st.times + shift_ns,
                            epoch=epoch)


def _bins(path):
    return [r.value for r in read_log(path, {RecordType.BIN})]


def _events(path):
    return [r.value for r in read_log(path, {RecordType.EVENT})]


def _on(outcome: dict) -> bool:
    cmd = outcome["command"]
    return outcome["status"] in ("sent", "clamped") and cmd is not None and \
        cmd["amplitude_ma"] > 0


def _check_forward_and_verified(path) -> list:
    bins = _bins(path)
    idx = [b.index for b in bins]
    assert idx == list(range(idx[0], idx[0] + len(idx))), "bin indices skip or go back"
    starts = np.array([b.start_ns for b in bins])
    assert (np.diff(starts) > 0).all(), "recorded bin times went backwards"
    report = verify(path)
    assert report.identical, report.first_divergence
    assert report.bins_compared == len(bins)
    return bins


ARM_AT = 4 * BINS_PER_S  # after calibration (3 s) and the decoder install


@pytest.mark.parametrize("how", ["new_epoch", "clock_reset_same_epoch", "clock_jump"])
def test_armed_stimulation_resumes_after_a_source_discontinuity(tmp_path, how):
    """Restart (new process, new epoch, clock from zero), a restart that kept its epoch
    (clock back to zero), and a jump forward: safe at once, then stimulation again within
    1 s of source time after the new segment's first frame; time never goes back."""
    first = segment(1, 8.0, epoch=11)
    if how == "new_epoch":
        second = segment(2, 6.0, epoch=12)
    elif how == "clock_reset_same_epoch":
        second = segment(2, 6.0, epoch=11, seq0=1600)
    else:
        second = segment(2, 6.0, epoch=11, seq0=1600, shift_ns=30 * 10**9)
    path = tmp_path / "s.splog"
    res = run_frames(_cfg(), [*first, *second], path, events=[(ARM_AT, {"op": "arm"})],
                     fsync=False)
    core = res.core
    assert core is not None
    bins = _check_forward_and_verified(path)
    segments = [e for e in _events(path) if "segment" in e]
    assert len(segments) == 1, segments
    cut = segments[0]["bin"]
    before = [b for b in bins if ARM_AT <= b.index < cut]
    after = [b for b in bins if b.index >= cut]
    assert any(_on(b.outcome) for b in before), "nothing was sent before the discontinuity"
    first_on = next(b.index for b in after if _on(b.outcome))
    assert first_on - cut <= BINS_PER_S, f"stimulation resumed {first_on - cut} bins later"
    assert core.guard.armed is False  # stop() disarmed at the end
    key = "source_restarts" if how != "clock_jump" else "clock_jumps"
    assert core.counters[key] == 1 and core.epoch_segments == 2


def test_controls_model_swap_and_adaptation_replay_identically(tmp_path):
    """Arm, limits, disarm, re-arm, a model swap mid-run and adaptation on: all at bin
    boundaries, all reproduced by verify bit for bit."""
    cfg = _cfg()
    rng = np.random.default_rng(0)
    other = build_decoder("wiener").fit(rng.poisson(1.0, (400, UNITS)),
                                        rng.normal(size=(400, 4)), bin_ms=BIN_MS,
                                        output_names=["x", "y", "vx", "vy"])
    swapped = []

    def swap(core: SessionCore) -> None:
        if not swapped and core.next_index >= 6 * BINS_PER_S:
            core.install(other)
            swapped.append(core.next_index)

    events = [(ARM_AT, {"op": "arm"}),
              (ARM_AT + 20, {"op": "limits", "limits": {"max_amplitude_ma": 0.5}}),
              (ARM_AT + 60, {"op": "disarm"}), (ARM_AT + 80, {"op": "arm"}),
              (7 * BINS_PER_S, Control(ControlOp.ADAPT, enabled=True))]
    path = tmp_path / "c.splog"
    res = run_frames(cfg, segment(3, 9.0, epoch=5), path, events=events, fsync=False,
                     core_hook=swap)
    assert swapped and res.core is not None and res.core.decoder is not None
    assert res.core.decoder.kind == "wiener" and res.core.adapt
    bins = _check_forward_and_verified(path)
    limited = [b.outcome["command"]["amplitude_ma"] for b in bins
               if ARM_AT + 20 <= b.index < ARM_AT + 60 and b.outcome["command"]]
    assert limited and max(limited) <= 0.5
    assert verify(path).models == 2


def test_a_policy_that_raises_drives_stim_safe_and_degrades():
    class Boom:
        kind = "boom"

        def bind(self, names):
            pass

        def step(self, decoded, t_ns):
            raise RuntimeError("policy bug")

    cfg = _cfg()
    outcomes = []
    core = SessionCore(cfg, OnBin(lambda r: outcomes.append(r.outcome.status)))
    rng = np.random.default_rng(1)
    core.begin(build_decoder("kalman").fit(rng.poisson(1.0, (300, UNITS)),
                                           rng.normal(size=(300, 4)), bin_ms=BIN_MS,
                                           output_names=["x", "y", "vx", "vy"]))
    core.policy = Boom()  # type: ignore[assignment]
    core.control(Control(ControlOp.ARM))
    for f in segment(4, 1.0, epoch=1):
        core.accept(f)
    assert outcomes and set(outcomes) == {"safe"}
    assert core.degraded and "policy error: RuntimeError: policy bug" in core.error
    assert core.state is SessionState.RUNNING
    assert "policy bug" in core.stim_status()["why_not_stimulating"]


def test_a_policy_reading_missing_outputs_is_refused_at_install_with_its_reason():
    core = SessionCore(_cfg())
    rng = np.random.default_rng(2)
    dec = build_decoder("kalman").fit(rng.poisson(1.0, (300, UNITS)),
                                      rng.normal(size=(300, 2)), bin_ms=BIN_MS,
                                      output_names=["cos", "sin"])
    with pytest.raises(ValueError, match=r"outputs named vx, vy.*\['cos', 'sin'\]"):
        core.begin(dec)
    assert core.decoder is None


def test_status_says_why_calibration_does_not_progress_without_behaviour():
    core = SessionCore(_cfg())
    core.begin()
    core.control(Control(ControlOp.ARM))
    for f in segment(5, 1.0, epoch=1):
        if b"behavior" not in bytes(f[0]):
            core.accept(f)
    why = core.stim_status()["why_not_stimulating"]
    assert core.state is SessionState.CALIBRATING
    assert "0 of 150 bins" in why and "no behaviour frames in 1 s" in why
    assert "decoder.model" in why
    assert core.calibration_status()["waiting"].startswith("no behaviour frames in 1 s")


def test_empty_behaviour_frames_mean_no_truth_and_calibration_says_so():
    """An empty behaviour frame (a replayed file's gap) ends the truth: the bins after it
    are not calibrated on with the last value, and the status names why."""
    core = SessionCore(_cfg())
    core.begin()
    names = {"names": ["x", "y", "vx", "vy"]}
    seen: list[bool] = []
    core.sink = OnBin(lambda r: seen.append(r.truth is not None))
    for k, f in enumerate(segment(5, 1.0, epoch=1)):
        if b"behavior" in bytes(f[0]):
            h = decode(f).header
            values = np.zeros(0) if k >= 100 else decode(f).values
            f = encode_array(b"behavior", KIND_BEHAVIOR, "sim.behavior", h.seq, h.t_ns,
                             np.asarray(values, "<f8"), epoch=1, extra=names)
        core.accept(f)
    # 50 behaviour frames of 5 ms = the first 12 whole bins of 20 ms, then none
    assert seen[:12] == [True] * 12 and not any(seen[13:]) and len(seen) > 40
    assert core.counters["behavior_gaps"] == 150
    assert core.calibration_status()["bins"] == sum(seen)
    assert core.calibration_status()["waiting"] == ""  # some bins came: not stuck on frames


def test_a_source_restart_during_calibration_starts_calibration_over():
    """Never one decoder fitted on two sources' data (a restart, or a stranger taking a
    stopped source's endpoint): the collected block is dropped, counted, visible."""
    core = SessionCore(_cfg())
    core.begin()
    for f in segment(6, 2.0, epoch=1):
        core.accept(f)
    assert core.calibration_status()["bins"] > 50
    for f in segment(7, 1.0, epoch=2):
        core.accept(f)
    st = core.calibration_status()
    assert st["restarts"] == 1 and 0 < st["bins"] <= BINS_PER_S
    assert core.state is SessionState.CALIBRATING


@pytest.mark.parametrize("kind", ["kalman", "wiener", "snn"])
def test_adaptation_reaches_the_decoder_and_changes_it(kind):
    """decoder.adapt in the config and the adapt control reach a decoder that adapts (it
    was wired but inert: only tests switched the SNN's adaptation on). The behaviour
    columns are mapped onto the decoder's outputs by name (here it decodes vx, vy only)."""
    cfg = _cfg(type=kind, outputs=["vx", "vy"],
               params={"epochs": 2} if kind == "snn" else {})
    core = SessionCore(cfg)
    core.begin()
    frames = list(segment(8, 6.0, epoch=1))
    fitted = False
    for f in frames[:1400]:  # calibration (3 s) and then some
        core.accept(f)
        if core.state is SessionState.CALIBRATING and len(core._cal_counts) >= \
                core.calibration_needed and not fitted:
            from service.loop.core import fit_calibration
            core.install(fit_calibration(cfg, np.asarray(core._cal_counts),
                                         np.asarray(core._cal_truth), core.truth_names))
            fitted = True
    assert core.decoder is not None and not core.decoder.adapting
    before = {k: v.copy() for k, v in core.decoder.state_dict().items()}
    core.control(Control(ControlOp.ADAPT, enabled=True))
    assert core.decoder.adapting
    for f in frames[1400:]:
        core.accept(f)
    after = core.decoder.state_dict()
    assert core.counters["decoder_errors"] == 0
    assert any(not np.array_equal(before[k], after[k]) for k in before), "nothing adapted"
