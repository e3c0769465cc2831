"""NWB export passes nwbinspector; real NWB and dataset files replay with exact counts.

The real files are MC_Maze_Small (Neural Latents Benchmark, DANDI archive 000140,
CC-BY-4.0; Pei et al. 2021), read from the shared data folder, never copied here.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynwb", reason="NWB support needs the optional 'nwb' extra (pynwb)")

from service.loop.core import OnBin, SessionCore  # noqa: E402
from service.recording.nwb_export import export_nwb, inspect_nwb  # noqa: E402
from service.recording.recorder import RecordType, read_log  # noqa: E402
from service.recording.replay import open_recording, publish, run_in_process  # noqa: E402
from service.session.config import SessionConfig  # noqa: E402
from service.session.simsession import run_sim_session  # noqa: E402
from sources.datasets import data_root  # noqa: E402
from sources.motor import MotorCortexSim  # noqa: E402

REAL_NWB = data_root() / "mc_maze_small" / "sub-Jenkins_ses-small_desc-test_ecephys.nwb"
needs_data = pytest.mark.skipif(not REAL_NWB.exists(),
                                reason=f"shared data folder absent ({REAL_NWB} not found)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("nwb")
    cfg = SessionConfig(name="nwb-test", bin_ms=20.0, source={"channels": 32},
                        decoder={"type": "kalman", "calibration_s": 4.0},
                        stim={"policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.2}})
    log = d / "s.splog"
    run_sim_session(cfg, MotorCortexSim(units=32, seed=2), 7.0, log,
                    events=[(220, {"op": "arm"}), (300, {"op": "disarm"})],
                    flush_interval_s=0.05, fsync=False)
    return log, export_nwb(log, d / "s.nwb")


def _input_spike_counts(log: Path, channels: int) -> np.ndarray:
    from service.wire.protocol import KIND_EVENTS, decode

    n = np.zeros(channels, np.int64)
    for r in read_log(log, {RecordType.INPUT}):
        msg = decode(r.value.frames)
        if msg.header.kind == KIND_EVENTS:
            n += np.bincount(msg.ids, minlength=channels)
    return n


def test_export_passes_nwbinspector(exported):
    _, nwb = exported
    findings = inspect_nwb(nwb)
    critical = [f for f in findings if f["importance"] in ("CRITICAL", "ERROR")]
    assert not critical, critical


def test_export_content(exported):
    from pynwb import NWBHDF5IO

    log, nwb = exported
    bins = [r.value for r in read_log(log, {RecordType.BIN})]
    with NWBHDF5IO(str(nwb), "r") as io:
        f = io.read()
        per_unit = np.array([len(f.units["spike_times"][i]) for i in range(len(f.units))])
        np.testing.assert_array_equal(per_unit, _input_spike_counts(log, 32))
        stim = f.intervals["stimulation"]
        assert len(stim) == len(bins)
        assert list(stim["status"][:]) == [b.outcome["status"] for b in bins]
        amps = stim["command_amplitude_ma"][:]
        rec_amps = [np.nan if b.outcome["command"] is None else b.outcome["command"]
                    ["amplitude_ma"] for b in bins]
        np.testing.assert_array_equal(amps, rec_amps)
        decoded = f.processing["behavior"]["decoded"].data[:]
        want = np.stack([b.decoded for b in bins if b.decoded is not None])
        assert decoded.tobytes() == want.tobytes()
        assert f.processing["behavior"]["ground_truth"].data.shape[1] == 4
        notes = json.loads(f.notes)
        assert notes["config"]["name"] == "nwb-test" and "numpy" in notes["software"]
        assert "spikeloop" in [name for name, _ in f.was_generated_by]
        labels = list(f.intervals["session_events"]["label"][:])
        assert "arm" in labels and "disarm" in labels


def test_exported_nwb_reads_back_as_a_source(exported):
    log, nwb = exported
    rec = open_recording(nwb)
    counts = _replay_counts(rec)
    np.testing.assert_array_equal(counts, _input_spike_counts(log, 32))


def _replay_counts(rec) -> np.ndarray:
    cfg = SessionConfig(bin_ms=20.0, source={"channels": rec.channels}, stim={"policy": {}})
    total = np.zeros(rec.channels)

    def on_bin(r):
        total[:] += r.counts

    core = SessionCore(cfg, OnBin(on_bin))
    run_in_process(rec, core)
    assert core.binner.late_events == 0 and core.binner.future_events == 0
    return total.astype(np.int64)


def _file_counts(path: Path) -> np.ndarray:
    """Per-unit spike counts read independently, with pynwb."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        units = io.read().units
        return np.array([len(units["spike_times"][i]) for i in range(len(units))])


@needs_data
def test_real_nwb_replays_with_exact_per_unit_counts():
    rec = open_recording(REAL_NWB)
    assert rec.channels == 107
    np.testing.assert_array_equal(_replay_counts(rec), _file_counts(REAL_NWB))


@needs_data
def test_real_nwb_over_the_wire(tmp_path):
    """Published on ZeroMQ as fast as possible, received, binned: same counts."""
    import zmq

    from service.wire.protocol import decode

    rec = open_recording(REAL_NWB)
    endpoint = f"ipc://{tmp_path}/replay.sock"
    cfg = SessionConfig(bin_ms=20.0, source={"channels": rec.channels}, stim={"policy": {}})
    total = np.zeros(rec.channels)

    def on_bin(r):
        total[:] += r.counts

    core = SessionCore(cfg, OnBin(on_bin))
    result: dict = {}
    pub = threading.Thread(target=lambda: result.update(stats=publish(rec, endpoint, None)))
    pub.start()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(endpoint)
    sub.subscribe(b"")
    frames = 0
    try:
        while True:
            if not sub.poll(5000):
                break
            raw = sub.recv_multipart()
            frames += 1
            core.accept(raw)
            if decode(raw).header.t_ns >= rec.end_ns:
                break
    finally:
        sub.close(0)
        pub.join()
    assert frames == result["stats"].frames
    np.testing.assert_array_equal(total.astype(np.int64), _file_counts(REAL_NWB))


@needs_data
def test_dataset_replays_exact_counts_and_behaviour():
    from sources.datasets import load_mc_maze_small

    ds = load_mc_maze_small()
    rec = open_recording("dataset:mc_maze_small")
    cfg = SessionConfig(bin_ms=ds.bin_ms, source={"channels": rec.channels}, stim={"policy": {}})
    rows, truth = [], []

    def on_bin(r):
        rows.append(r.counts.copy())
        truth.append(r.truth.copy())

    run_in_process(rec, SessionCore(cfg, OnBin(on_bin)))
    np.testing.assert_array_equal(np.array(rows), ds.counts)
    np.testing.assert_array_equal(np.array(truth), ds.behavior)
