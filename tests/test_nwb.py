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


# --------------------------------------------------------------------------- DANDI-ready export

META = {"subject": {"subject_id": "sim-monkey-1", "species": "Macaca mulatta", "sex": "M",
                    "age": "P6Y", "description": "simulated motor cortex"},
        "experimenter": ["Doe, Jane"], "session_description": "simulated reaching, restarted",
        "institution": "Test Institute", "lab": "Closed Loop Lab", "device": "Utah array",
        "location": "M1", "output_units": {"x": "cm", "y": "cm", "vx": "cm/s", "vy": "cm/s"}}


def _segment(seed: int, seconds: float, epoch: int, shift_s: float):
    """A simulated source's frames on its own clock (from ``shift_s``), with its epoch."""
    from service.wire.protocol import KIND_BEHAVIOR, encode_array, encode_events

    sim = MotorCortexSim(units=32, seed=seed)
    shift = int(shift_s * 1e9)
    names = {"names": list(sim.truth_names)}
    for k in range(int(seconds * 1000 / 10)):
        st = sim.advance(10_000_000)
        yield encode_array(b"behavior", KIND_BEHAVIOR, "sim.behavior", k, st.t_ns + shift,
                           st.truth, epoch=epoch, extra=names)
        yield encode_events(b"spikes", "sim", k, st.t_ns + shift, 32, st.ids, st.times + shift,
                            epoch=epoch)


@pytest.fixture(scope="module")
def restarted(tmp_path_factory) -> tuple[Path, Path, int]:
    """A session whose source (clock at 1000 s) restarts after 5 s with its clock from 0."""
    from itertools import chain

    from service.session.simsession import run_frames

    d = tmp_path_factory.mktemp("dandi")
    cfg = SessionConfig(name="dandi", bin_ms=20.0, source={"channels": 32},
                        decoder={"type": "kalman", "calibration_s": 2.0},
                        stim={"policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.2}},
                        metadata=META)
    second = list(_segment(2, 4.0, epoch=2, shift_s=0.0))
    from service.wire.protocol import KIND_EVENTS, decode

    n_second = sum(decode(f).header.n for f in second if decode(f).header.kind == KIND_EVENTS)
    log = d / "s.splog"
    run_frames(cfg, chain(_segment(1, 5.0, epoch=1, shift_s=1000.0), second), log,
               events=[(150, {"op": "arm"})], flush_interval_s=0.05, fsync=False)
    return log, export_nwb(log, d / "s.nwb"), n_second


@pytest.mark.unit
def test_export_with_metadata_passes_the_dandi_inspection(restarted):
    _, nwb, _ = restarted
    findings = inspect_nwb(nwb, config="dandi")
    bad = [f for f in findings if f["importance"] in ("CRITICAL", "BEST_PRACTICE_VIOLATION",
                                                      "ERROR", "PYNWB_VALIDATION")]
    assert not bad, bad


@pytest.mark.unit
def test_export_times_are_relative_to_the_session_start_and_a_restart_is_a_segment(restarted):
    from pynwb import NWBHDF5IO

    log, nwb, n_second = restarted
    with NWBHDF5IO(str(nwb), "r") as io:
        f = io.read()
        assert f.timestamps_reference_time == f.session_start_time
        t = f.units.spike_times.data[:]
        # Raw source clocks were 1000-1005 s, then 0-4 s again: the file holds 0-9 s.
        assert 0.0 <= t.min() < 0.1 and 8.9 < t.max() < 9.05
        assert int((t > 5.0).sum()) == n_second  # the second segment follows the first
        ev = f.intervals["session_events"]
        seg = [s for s, lab in zip(ev["start_time"][:], ev["label"][:], strict=True)
               if lab == "segment"]
        assert len(seg) == 1 and seg[0] == pytest.approx(5.0, abs=0.05)
        stim = f.intervals["stimulation"]["start_time"][:]
        assert np.all(np.diff(stim) > 0) and stim[0] == pytest.approx(0.02)
        truth = f.processing["behavior"]["ground_truth"]
        ts = truth.timestamps[:] if truth.timestamps is not None else None
        assert ts is None or np.all(np.diff(ts) >= 0)
        assert "x [cm]" in f.processing["behavior"]["decoded"].comments
        assert len(f.electrodes) == 32 and f.electrodes["location"][0] == "M1"
        assert f.units["electrodes"][3].index[0] == 3
        assert f.devices["source"].description == "Utah array"
        assert f.subject.species == "Macaca mulatta" and list(f.experimenter) == ["Doe, Jane"]
        notes = json.loads(f.notes)
        assert notes["time_origin_source_ns"] == pytest.approx(1000e9, abs=0.1e9)
