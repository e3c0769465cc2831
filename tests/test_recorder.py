"""The session log: round trip, torn tails, SIGKILL recovery, write failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zmq

from service.recording.recorder import MAGIC, Recorder, RecordType, read_log

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def _write_sample(path: Path, n_inputs: int = 50) -> None:
    with Recorder(path, flush_interval_s=0.01) as rec:
        rec.config({"name": "t", "bin_ms": 20.0})
        rec.model({"type": "kalman", "n_inputs": 3}, {"A": np.eye(2), "m": np.arange(3.0)})
        for i in range(n_inputs):
            rec.input([b"spikes", b"hdr%d" % i, memoryview(b"x" * i)], recv_ns=i)
        rec.input([zmq.Frame(b"spikes"), zmq.Frame(b"h")], recv_ns=99)
        rec.rejected([b"spikes", b"garbage"], "header_unparseable", recv_ns=100)
        rec.event({"op": "arm", "bin": 3})
        rec.bin(0, 1000, np.array([1.5, -2.0]), {"status": "refused", "command": None,
                                                  "request": None, "reasons": ["disarmed"]})
        rec.bin(1, 2000, None, {"status": "safe", "command": {"amplitude_ma": 0.0},
                                "request": None, "reasons": ["no decoder"]})


def test_round_trip(tmp_path):
    path = tmp_path / "s.splog"
    _write_sample(path)
    reader = read_log(path)
    recs = list(reader)
    assert reader.clean and reader.discarded_bytes == 0
    types = [r.type for r in recs]
    assert types[0] == RecordType.CONFIG and types[-1] == RecordType.CLOSE
    cfg = recs[0].value
    assert cfg["config"] == {"name": "t", "bin_ms": 20.0} and "numpy" in cfg["software"]
    meta, state = recs[1].value
    assert meta["type"] == "kalman"
    np.testing.assert_array_equal(state["A"], np.eye(2))
    inputs = [r.value for r in recs if r.type == RecordType.INPUT]
    assert [i.recv_ns for i in inputs] == list(range(50)) + [99]
    assert inputs[7].frames == [b"spikes", b"hdr7", b"x" * 7]
    assert inputs[-1].frames == [b"spikes", b"h"]
    (rej,) = [r.value for r in recs if r.type == RecordType.REJECTED]
    assert rej.reason == "header_unparseable"
    bins = [r.value for r in recs if r.type == RecordType.BIN]
    assert bins[0].decoded.tobytes() == np.array([1.5, -2.0]).tobytes()
    assert bins[1].decoded is None and bins[1].outcome["reasons"] == ["no decoder"]
    assert path.with_suffix(".json").exists()


def test_torn_tail_every_cut(tmp_path):
    path = tmp_path / "s.splog"
    _write_sample(path, n_inputs=3)
    data = path.read_bytes()
    full = list(read_log(path))
    offsets = [r.offset for r in full] + [len(data)]
    cut_path = tmp_path / "cut.splog"
    for cut in range(len(data)):
        cut_path.write_bytes(data[:cut])
        reader = read_log(cut_path)
        got = list(reader)
        complete = sum(1 for o in offsets[1:] if o <= cut) if cut >= len(MAGIC) else 0
        assert len(got) == complete, cut
        assert reader.valid_bytes + reader.discarded_bytes == cut
        assert not reader.clean


def test_corrupt_byte_stops_there(tmp_path):
    path = tmp_path / "s.splog"
    _write_sample(path)
    data = bytearray(path.read_bytes())
    recs = list(read_log(path))
    victim = recs[10]
    data[victim.offset + 12] ^= 0xFF  # inside the payload
    path.write_bytes(bytes(data))
    reader = read_log(path)
    assert len(list(reader)) == 10
    assert "checksum" in reader.tail_error
    assert reader.discarded_bytes == len(data) - victim.offset


def test_full_buffer_writes_synchronously_never_drops(tmp_path):
    path = tmp_path / "s.splog"
    rec = Recorder(path, flush_interval_s=60, fsync=False, max_buffer_bytes=1000)
    for i in range(500):
        rec.input([b"t", b"%d" % i, b"y" * 100], recv_ns=i)
    assert rec.sync_writes > 0
    rec.close()
    got = [r.value.recv_ns for r in read_log(path, {RecordType.INPUT})]
    assert got == list(range(500))


_CHILD = textwrap.dedent("""
    import sys, time
    from service.recording.recorder import Recorder
    rec = Recorder(sys.argv[1], flush_interval_s=0.02)
    i = 0
    while True:
        rec.input([b"spikes", i.to_bytes(8, "little"), b"p" * 4000], recv_ns=i)
        i += 1
        if i % 50 == 0:
            print(rec.records, flush=True)  # records durable so far
            time.sleep(0.001)
""")


def test_sigkill_recovers_everything_up_to_last_flush(tmp_path):
    path = tmp_path / "killed.splog"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    durable = 0
    try:
        while durable < 2000:
            line = proc.stdout.readline()
            assert line, "child died early"
            durable = int(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    reader = read_log(path)
    seqs = [int.from_bytes(r.value.frames[1], "little") for r in reader]
    assert not reader.clean
    assert len(seqs) >= durable
    assert seqs == list(range(len(seqs)))  # in order, none missing, none corrupt


_FSIZE_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from service.recording.recorder import Recorder
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    rec = Recorder(sys.argv[1], flush_interval_s=0.01)
    i = 0
    while rec.error is None and i < 100_000:
        rec.input([b"spikes", i.to_bytes(8, "little"), b"p" * 1000], recv_ns=i)
        i += 1
        if i % 20 == 0:
            rec.flush()
    rec.close()
    print(json.dumps({"error": rec.error, "offered": i, "written": rec.records}))
""")


def test_write_failure_sets_error_and_keeps_what_was_written(tmp_path):
    import json

    path = tmp_path / "full.splog"
    out = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True)
    res = json.loads(out.stdout)
    assert res["error"] and "large" in res["error"].lower()
    reader = read_log(path)
    seqs = [int.from_bytes(r.value.frames[1], "little") for r in reader]
    assert len(seqs) >= res["written"] > 0  # a failed batch may still land partly
    assert seqs == list(range(len(seqs)))
    assert path.stat().st_size <= 200_000


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "s.splog"
    path.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        Recorder(path)


def test_on_durable_reports_whole_records_once_synced(tmp_path):
    path = tmp_path / "s.splog"
    seen: list[int] = []
    rec = Recorder(path, flush_interval_s=0.01, max_buffer_bytes=2000, on_durable=seen.append)
    for i in range(300):  # the small buffer makes the loop write (unsynced) now and then
        rec.input([b"t", b"%d" % i, b"y" * 100], recv_ns=i)
    assert rec.sync_writes > 0
    rec.close()
    size = path.stat().st_size
    assert seen[0] == len(MAGIC) and seen == sorted(seen) and seen[-1] == size
    boundaries = {r.offset for r in read_log(path)} | {size}
    assert set(seen) <= boundaries  # never a torn prefix
