"""Recordings mirrored to Redis and written again by the central recorder.

Real redis-server, real control plane and session processes, real `spikeloop recorder`
processes, all on 127.0.0.1. Every wait is bounded; nothing asserts on wall-clock time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from service.cluster.central_recorder import CentralRecorder
from service.cluster.recording_mirror import RecordingMirror
from service.cluster.redis_streams import Keys, connect
from service.recording.recorder import MAGIC, Recorder, read_log
from tests.helpers import PY, REPO, SimThread, free_port, start_redis, stop_redis, wait_for

LEASE_S = 2.0


# --------------------------------------------------------------------------- helpers
class Centrals:
    """`spikeloop recorder` processes, each logging to its own file; all killed at the end."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen] = []

    def start(self, url: str, out: Path, consumer: str = "c1", *extra: str) -> subprocess.Popen:
        log = open(self.tmp / f"central-{consumer}.log", "ab")  # noqa: SIM115 - child owns it
        proc = subprocess.Popen(
            [PY, "-m", "clients.cli", "recorder", "--redis", url, "--out", str(out),
             "--consumer", consumer, "--lease-s", str(LEASE_S), *extra],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, consumer: str = "c1") -> str:
        return (self.tmp / f"central-{consumer}.log").read_text()

    def stop(self, proc: subprocess.Popen) -> int:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the central recorder did not stop on SIGTERM") from None

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def centrals(tmp_path: Path):
    c = Centrals(tmp_path)
    try:
        yield c
    finally:
        c.kill_all()


def _config(endpoint: str, redis_url: str) -> dict:
    return {"name": "mirrored", "bin_ms": 20.0,
            "source": {"endpoint": endpoint, "channels": 96},
            "decoder": {"type": "kalman", "calibration_s": 2.0},
            "redis": {"url": redis_url, "mirror_recording": True, "mirror_output": False}}


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _final_status(server, sid: str) -> dict:
    return json.loads((server.data_dir / "run" / f"{sid}.status.json").read_text())


def _assert_readable(path: Path, clean: bool) -> int:
    reader = read_log(path)
    n = sum(1 for _ in reader)
    assert reader.discarded_bytes == 0, reader.tail_error
    assert reader.clean is clean
    return n


def _start_session(server, sim: SimThread, redis_url: str) -> tuple[str, Path]:
    c = server.client()
    s = c.start(c.create_session(_config(sim.endpoint, redis_url))["id"])
    return s["id"], Path(s["recording"])


def _mirror(c, sid: str) -> dict:
    return c.session(sid)["live"]["recording_mirror"]


# --------------------------------------------------------------------------- live sessions
def test_live_session_is_copied_byte_for_byte_and_exported(server, redis_server, centrals,
                                                           tmp_path):
    from service.recording.verify import verify

    out = tmp_path / "central"
    central = centrals.start(redis_server.url, out)
    c = server.client()
    with SimThread(units=96, seed=11) as sim:
        sid, local = _start_session(server, sim, redis_server.url)
        wait_for(lambda: (lambda x: x["state"] == "running" and x["bins"] > 200)(
            c.session(sid)["live"]), 60, "the session to decode")
        wait_for(lambda: _mirror(c, sid)["mirrored_bytes"] > 0, 30, "the mirror to send")
        c.stop(sid)
    mirror = _final_status(server, sid)["recording_mirror"]
    assert mirror["complete"] and mirror["unmirrored_bytes"] == 0 and mirror["error"] is None
    assert mirror["mirrored_bytes"] == local.stat().st_size

    copy = out / local.name
    wait_for(lambda: copy.with_suffix(".nwb").exists(), 120, "the central NWB export")
    assert copy.read_bytes() == local.read_bytes()
    assert _assert_readable(copy, clean=True) > 200
    report = verify(copy)
    assert report.identical and report.bins_compared > 200

    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(copy.with_suffix(".nwb")), "r") as io:
        assert len(io.read().units) == 96

    r = connect(redis_server.url, socket_timeout=5)
    # Done: acknowledged and trimmed (the newest entry, the end marker, stays), lock released.
    wait_for(lambda: r.xlen(Keys.recording(sid)) <= 1, 30, "the stream to be trimmed")
    wait_for(lambda: not r.exists(Keys.recording_owner(sid)), 30, "the owner key to go")
    assert r.xpending(Keys.recordings, "central")["pending"] == 0
    assert centrals.stop(central) == 0
    assert f"{local.name}: complete" in centrals.log()


def test_central_recorder_killed_and_restarted_loses_and_duplicates_nothing(
        server, redis_server, centrals, tmp_path):
    out = tmp_path / "central"
    central = centrals.start(redis_server.url, out)
    c = server.client()
    with SimThread(units=96, seed=12) as sim:
        sid, local = _start_session(server, sim, redis_server.url)
        copy = out / local.name
        wait_for(lambda: _size(copy) > 20_000, 60, "the central copy to grow")
        os.kill(central.pid, signal.SIGKILL)
        central.wait()
        at_kill = _size(copy)
        # The session records on while no central recorder runs; Redis keeps it.
        wait_for(lambda: local.stat().st_size > at_kill + 50_000, 60, "the session to go on")
        central = centrals.start(redis_server.url, out)
        wait_for(lambda: _size(copy) > at_kill, 60, "the restarted recorder to resume")
        c.stop(sid)
    wait_for(lambda: copy.with_suffix(".nwb").exists(), 120, "the central NWB export")
    assert copy.read_bytes() == local.read_bytes()
    _assert_readable(copy, clean=True)
    assert "resuming at byte" in centrals.log()
    assert centrals.stop(central) == 0


def test_redis_restart_mid_session_mirror_catches_up(server, redis_server, centrals, tmp_path):
    out = tmp_path / "central"
    central = centrals.start(redis_server.url, out)
    c = server.client()
    restarted = None
    try:
        with SimThread(units=96, seed=13) as sim:
            sid, local = _start_session(server, sim, redis_server.url)
            copy = out / local.name
            wait_for(lambda: _size(copy) > 10_000, 60, "the central copy to grow")
            stop_redis(redis_server)  # no persistence: the restarted server is empty
            down = wait_for(lambda: (lambda m: m if m["error"] else None)(_mirror(c, sid)), 30,
                            "the mirror to notice")
            assert "cannot mirror to Redis" in down["error"]
            size = local.stat().st_size
            wait_for(lambda: local.stat().st_size > size + 30_000, 60,
                     "the local recording to go on without Redis")
            restarted = start_redis(tmp_path / "redis2", port=redis_server.port)
            wait_for(lambda: (lambda m: m["error"] is None and m["resends"] >= 1)(
                _mirror(c, sid)), 60, "the mirror to catch up")
            c.stop(sid)
        mirror = _final_status(server, sid)["recording_mirror"]
        assert mirror["complete"] and mirror["unmirrored_bytes"] == 0
        assert mirror["failures"] >= 1 and mirror["resends"] >= 1
        _assert_readable(local, clean=True)
        wait_for(lambda: copy.with_suffix(".nwb").exists(), 120, "the central NWB export")
        assert copy.read_bytes() == local.read_bytes()
        assert centrals.stop(central) == 0
    finally:
        if restarted is not None:
            stop_redis(restarted)


def test_worker_killed_mid_recording_keeps_everything_mirrored(server, redis_server,
                                                               centrals, tmp_path):
    out = tmp_path / "central"
    centrals.start(redis_server.url, out)
    c = server.client()
    r = connect(redis_server.url, socket_timeout=5)
    with SimThread(units=96, seed=14) as sim:
        sid, local = _start_session(server, sim, redis_server.url)
        copy = out / local.name
        wait_for(lambda: _size(copy) > 30_000, 60, "the central copy to grow")
        os.kill(c.session(sid)["live"]["pid"], signal.SIGKILL)
        wait_for(lambda: c.session(sid)["state"] == "failed", 30, "the session to be failed")
    # The newest entry is never trimmed: it says how far the stream got.
    (_, newest), = r.xrevrange(Keys.recording(sid), count=1)
    assert b"end" not in newest
    reached = int(newest[b"off"]) + len(newest[b"data"])
    wait_for(lambda: _size(copy) == reached, 30, "the central copy to hold the whole stream")
    data = local.read_bytes()
    assert copy.read_bytes() == data[:reached]
    n = _assert_readable(copy, clean=False)  # ends at a record boundary: no torn tail
    assert n > 50
    local_reader = read_log(local)
    assert sum(1 for _ in local_reader) >= n and local_reader.valid_bytes >= reached


# --------------------------------------------------------------------------- mirror alone
def _records(rec: Recorder, start: int, n: int) -> None:
    for i in range(start, start + n):
        rec.input([b"spikes", i.to_bytes(8, "little"), b"p" * 500], recv_ns=i)


def _stream_bytes(r, key: str) -> bytes:
    """Reassemble a stream the way the central recorder does: each entry at its offset."""
    buf = bytearray()
    for _, f in r.xrange(key):
        if b"data" in f:
            off = int(f[b"off"])
            assert off <= len(buf)
            buf[off:off + len(f[b"data"])] = f[b"data"]
    return bytes(buf)


def test_slow_redis_delays_nothing_and_status_says_exactly_what_is_missing(redis_server,
                                                                         tmp_path):
    path = tmp_path / "s1-x.splog"
    mirror = RecordingMirror(redis_server.url, "s1", path, {"session": "t"}, retry_s=0.1)
    rec = Recorder(path, flush_interval_s=0.02, on_durable=mirror.written)
    _records(rec, 0, 200)
    wait_for(lambda: mirror.mirrored == rec.durable_bytes and mirror.mirrored > len(MAGIC), 30,
             "the mirror to catch up")
    redis_server.proc.send_signal(signal.SIGSTOP)  # Redis hangs: every call times out
    try:
        durable = rec.durable_bytes
        _records(rec, 200, 400)
        # The local file keeps being written and synced while Redis does not answer.
        wait_for(lambda: rec.durable_bytes > durable and rec.records == 600, 30,
                 "local writes without Redis")
        wait_for(lambda: mirror.error is not None, 30, "the mirror to report the hang")
        final = rec.close()
        stats = mirror.close(final, timeout_s=0.5)
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert final["error"] is None and final["records"] == 601  # + CLOSE
    assert not stats["complete"] and "cannot mirror to Redis" in stats["error"]
    assert stats["unmirrored_bytes"] == path.stat().st_size - stats["mirrored_bytes"] > 0
    local = path.read_bytes()
    got = _stream_bytes(connect(redis_server.url, socket_timeout=5), Keys.recording("s1"))
    # A prefix of the file (an XADD that timed out may still have landed after SIGCONT).
    assert len(got) >= stats["mirrored_bytes"] and local.startswith(got)


def test_redis_down_from_the_start_costs_the_recording_nothing(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    path = tmp_path / "s2-x.splog"
    mirror = RecordingMirror(url, "s2", path, {}, retry_s=0.05)
    rec = Recorder(path, flush_interval_s=0.01, on_durable=mirror.written)
    _records(rec, 0, 100)
    stats = mirror.close(rec.close(), timeout_s=0.2)
    assert _assert_readable(path, clean=True) == 101
    assert stats["mirrored_bytes"] == 0 and stats["unmirrored_bytes"] == path.stat().st_size
    assert url in stats["error"] and stats["failures"] >= 1 and not stats["complete"]


# --------------------------------------------------------------------------- central alone
def test_redelivered_overlapping_and_missing_bytes(redis_server, tmp_path):
    r = connect(redis_server.url, socket_timeout=5)
    a, b = b"\x01" * 100, b"\x02" * 50  # stand-ins for records: the writer only places bytes
    for sid, name, entries in (
            ("dup", "dup-1.splog", [(0, MAGIC), (8, a), (8, a), (8, a + b), (108, b)]),
            ("gap", "gap-1.splog", [(0, MAGIC), (108, b)])):
        r.xadd(Keys.recordings, {"event": "start", "sid": sid, "name": name})
        for off, data in entries:
            r.xadd(Keys.recording(sid), {"name": name, "off": off, "data": data})
        r.xadd(Keys.recording(sid), {"name": name, "end": "1", "bytes": 158, "records": 2,
                                     "clean": 1})
    lines: list[str] = []
    rec = CentralRecorder(redis_server.url, tmp_path / "out", consumer="t", nwb=False,
                          log=lines.append)
    t = threading.Thread(target=rec.run)
    t.start()
    try:
        wait_for(lambda: rec.totals["finished"] == 2, 30, "both recordings to finish")
    finally:
        rec.stop()
        t.join(10)
    assert (tmp_path / "out" / "dup-1.splog").read_bytes() == MAGIC + a + b
    assert rec.totals["duplicates"] == 100 + 100 + 50
    assert (tmp_path / "out" / "gap-1.splog").read_bytes() == MAGIC
    text = "\n".join(lines)
    assert "dup-1.splog: complete" in text
    assert "gap-1.splog: the stream has no bytes 8..108" in text and "INCOMPLETE" in text


def test_two_recorders_share_sessions_and_take_over_from_a_dead_one(redis_server, centrals,
                                                                    tmp_path):
    out = tmp_path / "central"
    first = centrals.start(redis_server.url, out, "a", "--no-nwb")
    paths = [tmp_path / "w" / f"s{i}-x.splog" for i in range(2)]
    mirrors = [RecordingMirror(redis_server.url, f"s{i}", p, {}) for i, p in enumerate(paths)]
    recs = [Recorder(p, flush_interval_s=0.02, on_durable=m.written)
            for p, m in zip(paths, mirrors, strict=True)]
    for rec in recs:
        _records(rec, 0, 100)
    wait_for(lambda: all(_size(out / p.name) > 20_000 for p in paths), 60,
             "recorder a to copy both sessions")
    centrals.start(redis_server.url, out, "b", "--no-nwb")
    os.kill(first.pid, signal.SIGKILL)  # b takes over once a's lease has run out
    first.wait()
    for n in range(100, 400, 50):
        for rec in recs:
            _records(rec, n, 50)
        time.sleep(0.05)
    for rec, m in zip(recs, mirrors, strict=True):
        assert m.close(rec.close())["complete"]
    for p in paths:
        wait_for(lambda p=p: _size(out / p.name) == p.stat().st_size, 60,
                 f"b to finish {p.name}")
        assert (out / p.name).read_bytes() == p.read_bytes()
        assert _assert_readable(out / p.name, clean=True) == 401
    log_b = centrals.log("b")
    assert "session s0: following" in log_b and "session s1: following" in log_b
    wait_for(lambda: "s0-x.splog: complete" in centrals.log("b")
             and "s1-x.splog: complete" in centrals.log("b"), 30, "b to close both")
