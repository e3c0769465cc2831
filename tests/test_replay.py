"""Replay reproduces a live session bit for bit; a changed model is caught at its first bin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.recording.recorder import Recorder, RecordType, read_log
from service.recording.verify import verify
from service.session.config import SessionConfig
from service.session.simsession import SimSessionResult, run_sim_session
from sources.motor import MotorCortexSim

pytestmark = pytest.mark.unit

SECONDS = 14.0  # >= 10 s of source time, 4 s of it calibration
EVENTS = [
    (40, {"op": "arm"}),  # armed before the decoder exists: bins stay safe until then
    (300, {"op": "disarm"}),
    (350, {"op": "arm"}),
    (450, {"op": "limits", "limits": {"max_amplitude_ma": 1.5}}),
    (550, {"op": "safe", "reason": "test"}),
]


def _config() -> SessionConfig:
    return SessionConfig(
        name="replay-test", bin_ms=20.0, source={"channels": 48},
        decoder={"type": "kalman", "calibration_s": 4.0},
        stim={"policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.2}},
    )


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> tuple[Path, SimSessionResult]:
    path = tmp_path_factory.mktemp("rec") / "live.splog"
    res = run_sim_session(_config(), MotorCortexSim(units=48, seed=3), SECONDS, path,
                          frame_ms=5.0, events=EVENTS, flush_interval_s=0.05)
    return path, res


def test_live_session_is_varied(session):
    _, res = session
    assert res.bins >= 10 * 50
    statuses = set(res.statuses)
    assert {"safe", "refused"} <= statuses and statuses & {"sent", "clamped"}
    amps = {c["amplitude_ma"] for c in res.commands if c}
    assert len(amps) > 20, "the policy should produce many different commands"


def test_recording_holds_what_was_published(session):
    path, res = session
    bins = [r.value for r in read_log(path, {RecordType.BIN})]
    assert len(bins) == res.bins
    for b, live in zip(bins, res.decoded, strict=True):
        assert (b.decoded is None) == (live is None)
        if live is not None:
            assert b.decoded.tobytes() == live.tobytes()


def test_verify_identical(session):
    path, res = session
    report = verify(path)
    assert report.identical, report.first_divergence
    assert report.bins_compared == res.bins
    # + states calibrating, running, stopped and the disarm at stop
    assert report.models == 1 and report.events == len(EVENTS) + 4
    assert report.source_seconds == pytest.approx(SECONDS, abs=0.05)


def _rewrite(src: Path, dst: Path, change_state) -> None:
    """Copy a log record by record, passing the model state through ``change_state``."""
    with Recorder(dst, flush_interval_s=1.0, fsync=False) as rec:
        for r in read_log(src):
            v = r.value
            if r.type == RecordType.CONFIG:
                rec.config(v["config"])
            elif r.type == RecordType.MODEL:
                rec.model(v[0], change_state(v[1]))
            elif r.type == RecordType.INPUT:
                rec.input(v.frames, v.recv_ns)
            elif r.type == RecordType.BIN:
                rec.bin(v.index, v.start_ns, v.decoded, v.outcome)
            elif r.type == RecordType.EVENT:
                rec.event(v)


def test_changed_decoder_reports_first_divergence(session, tmp_path):
    path, res = session
    first_decoded = next(i for i, d in enumerate(res.decoded) if d is not None)

    def nudge(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        state = dict(state)
        state["y_mean"] = state["y_mean"] + 1e-9  # far below any plotting resolution
        return state

    same = tmp_path / "same.splog"
    _rewrite(path, same, lambda s: s)
    assert verify(same).identical

    bad = tmp_path / "bad.splog"
    _rewrite(path, bad, nudge)
    report = verify(bad)
    assert not report.identical
    d = report.first_divergence
    assert d.bin == first_decoded and d.field == "decoded"
    assert d.recorded != d.replayed
    assert np.allclose(d.recorded, d.replayed, atol=1e-6)


def test_torn_recording_verifies_up_to_the_tear(session, tmp_path):
    path, res = session
    torn = tmp_path / "torn.splog"
    data = path.read_bytes()
    torn.write_bytes(data[: len(data) * 2 // 3 + 7])
    report = verify(torn)
    assert report.identical and not report.log_clean and report.discarded_bytes > 0
    assert 0 < report.bins_compared < res.bins


def test_config_accepts_the_session_wrapper():
    from service.session.config import recorded_config as session_config

    cfg = _config()
    wrapped = {"session_id": "s1", "config": cfg.model_dump(), "software": {"numpy": "x"}}
    assert session_config(wrapped) == cfg
    assert session_config(cfg.model_dump(mode="json")) == cfg
