"""Sources and outputs over Redis Streams: real redis-server, control plane and sessions."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import msgpack
import numpy as np
import pytest

from clients.control import ControlError
from clients.publisher import SpikePublisher
from clients.redis_publisher import RedisStreamSink
from clients.redis_stream import GroupReader
from clients.stimulator import StimulatorLink
from service.cluster.redis_streams import Keys, connect, fields_to_frames, frames_to_fields
from service.wire import protocol as P
from tests.helpers import (
    PY,
    REPO,
    SimThread,
    free_port,
    start_redis,
    start_server,
    stop_redis,
    stop_server,
    wait_for,
)


def _cfg(redis_url: str, stream: str, **over) -> dict:
    cfg = {"name": "redis", "bin_ms": 10.0,
           "source": {"channels": 96, "redis_stream": stream},
           "decoder": {"type": "kalman", "calibration_s": 1.0},
           "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs",
                                                  "gain_ma_per_cm_s": 0.2},
                    "limits": {"watchdog_ms": 100}},
           "redis": {"url": redis_url, "mirror_output": True, "output_maxlen": 100_000,
                     "mirror_recording": False}}
    cfg.update(over)
    return cfg


def _publisher(redis_url: str, stream: str) -> SpikePublisher:
    return SpikePublisher(None, 96, sink=RedisStreamSink(redis_url, stream))


def _live(c, sid):
    return c.session(sid)["live"]


def _until(c, sid, pred, what, timeout_s=60):
    return wait_for(lambda: (lambda x: x if x and pred(x) else None)(_live(c, sid)), timeout_s,
                    what)


def _bad_frames(step: int) -> list[list[bytes]]:
    """Every 97th step, frames that must each be rejected for their own reason."""
    if step % 97 != 50:
        return []
    good = [bytes(f) for f in P.encode_events(b"spikes", "sim", 10**9 + step, 0, 96,
                                              np.array([1]), np.array([0]))]
    hdr = msgpack.unpackb(good[1])
    return [
        [good[0], good[1], good[2][:1], good[3]],  # truncated ids
        [good[0], b"\xc1not msgpack", good[2], good[3]],  # unparseable header
        [good[0], msgpack.packb(hdr | {"v": 9}), good[2], good[3]],  # unknown version
        [good[0], msgpack.packb(hdr | {"ch": 1}), good[2], good[3]],  # id >= channel count
    ]


def test_session_fed_through_redis_decodes_and_its_output_reaches_a_consumer_group(
        server, redis_server):
    c = server.client()
    r = connect(redis_server.url, socket_timeout=5)
    pub = _publisher(redis_server.url, "rig1")
    with SimThread(seed=21, inject=_bad_frames, publisher=pub):
        s = c.start(c.create_session(_cfg(redis_server.url, "rig1"))["id"])
        sid = s["id"]
        # An entry that holds no frame at all (the only missing_frames of this test), and
        # one on a topic the session ignores.
        r.xadd(Keys.source("rig1"), {"junk": b"no f0"})
        r.xadd(Keys.source("rig1"), frames_to_fields([b"other", b"x"]))
        live = _until(c, sid, lambda x: x["state"] == "running" and x["bins"] > 400,
                      "decoding from the Redis stream")
        # Two consumers on other hosts, one group: they share the output, nothing is lost.
        # (One entry per read, taken in turn: together they hold a prefix of the stream.)
        a = GroupReader(redis_server.url, sid, "lab", consumer="a", start="0", count=1)
        b = GroupReader(redis_server.url, sid, "lab", consumer="b", count=1)
        got: dict[str, list] = {"a": [], "b": []}
        try:
            while sum(u.kind == "decoded" for u in got["a"] + got["b"]) < 300:
                for name, reader in (("a", a), ("b", b)):
                    u = reader.recv(timeout_ms=10_000)
                    assert u is not None, "no output entry within 10 s"
                    got[name].append(u)
        finally:
            a.close()
            b.close()
        live = _live(c, sid)
        prometheus = c.prometheus()
        c.stop(sid)
    assert got["a"] and got["b"]
    ids = [u.entry_id for u in got["a"] + got["b"]]
    assert len(set(ids)) == len(ids), "an entry was delivered twice in one group"
    control = sorted(u.seq for u in got["a"] + got["b"] if u.kind != "decoded")
    assert control == list(range(control[0], control[0] + len(control))), "gap in stim/heartbeat"
    decoded = sorted(u.seq for u in got["a"] + got["b"] if u.kind == "decoded")
    assert decoded == list(range(decoded[0], decoded[0] + len(decoded))), "gap in decoded bins"
    assert all(u.truth is not None for u in got["a"] + got["b"] if u.kind == "decoded")
    for reason in ("payload_size", "header_unparseable", "bad_version", "channel_range",
                   "missing_frames"):
        assert live["rejected"].get(reason, 0) >= 1, (reason, live["rejected"])
    ingest, mirror = live["redis"]["ingest"], live["redis"]["mirror"]
    assert ingest["key"] == Keys.source("rig1") and ingest["skipped"] >= 1
    assert ingest["entries"] >= live["frames"] and ingest["errors"] == 0
    assert mirror["sent"] > 0 and mirror["dropped"] == 0 and mirror["failed"] == 0
    assert live["counters"]["redis_entries"] == ingest["entries"]
    assert f'counter="redis_entries",session="{sid}"' in prometheus
    # The stream is trimmed to about output_maxlen; the last entry is the final safe command.
    last = P.decode(fields_to_frames(r.xrevrange(Keys.output(sid), count=1)[0][1]))
    assert last.header.kind == P.KIND_STIM and last.header.extra["armed"] is False
    r.close()


def test_redis_outage_stim_goes_safe_and_the_session_recovers(server, redis_server, tmp_path):
    c = server.client()
    pub = _publisher(redis_server.url, "rig2")
    sim = SimThread(seed=22, publisher=pub).__enter__()
    restarted = None
    try:
        s = c.start(c.create_session(_cfg(redis_server.url, "rig2"))["id"])
        sid = s["id"]
        _until(c, sid, lambda x: x["state"] == "running" and x["bins"] > 50, "running")
        link = StimulatorLink(s["output_endpoint"], deadline_ms=1000)
        c.arm(sid)
        wait_for(lambda: (link.poll(50), link.current and link.current["amplitude_ma"] > 0)[1],
                 30, "stimulation while armed")
        trips = _live(c, sid)["counters"].get("watchdog_trips", 0)  # start-up may trip it
        os.kill(redis_server.proc.pid, signal.SIGKILL)  # Redis dies: no frames, no mirror
        redis_server.proc.wait()
        live = _until(c, sid, lambda x: x["counters"].get("watchdog_trips", 0) > trips
                      and x["redis"]["ingest"]["errors"] >= 1
                      and x["stim"]["amplitude_ma"] == 0.0, "the watchdog to drive stim safe", 30)
        assert live["state"] == "running" and live["armed"]
        wait_for(lambda: (link.poll(50), link.current and link.current["amplitude_ma"] == 0.0)[1],
                 10, "the stimulator to receive the safe state")
        assert not link.lost, "heartbeats keep flowing while only Redis is gone"
        bins_out = live["bins"]
        restarted = start_redis(tmp_path / "redis2", port=redis_server.port)  # empty, new
        live = _until(c, sid, lambda x: x["bins"] > bins_out + 100, "decoding to resume", 60)
        ingest = live["redis"]["ingest"]
        # The new server's entry IDs (its clock) are past the reader's position: read on.
        assert ingest["reconnects"] >= 1 and ingest["connected"]
        assert live["gaps"] >= 1 and live["state"] == "running"
        _until(c, sid, lambda x: x["redis"]["mirror"]["connected"]
               and x["redis"]["mirror"]["errors"] >= 1, "the mirror to reconnect", 30)
        assert pub.socket.errors >= 1  # the source counted what it could not publish
        link.close()
        assert c.stop(sid)["state"] == "stopped"
    finally:
        sim.__exit__()
        if restarted is not None:
            stop_redis(restarted)


def test_consumer_group_rereads_what_a_dead_consumer_had_not_acknowledged(redis_server):
    r = connect(redis_server.url, socket_timeout=5)
    key = Keys.output("s1")
    for seq in range(10):
        r.xadd(key, frames_to_fields(P.encode_control(b"heartbeat", P.KIND_HEARTBEAT, "s1",
                                                      seq, 0, {"state": "running"})))
    r.xadd(key, {"f0": b"heartbeat", "f1": b"\xc1"})  # not a protocol message: skipped
    a = GroupReader(redis_server.url, "s1", "g", consumer="a", start="0")
    assert [a.recv(1000).seq for _ in range(4)] == [0, 1, 2, 3]
    a.client.close()  # dies: nothing acknowledged
    b = GroupReader(redis_server.url, "s1", "g", consumer="b")
    assert b.recv(200) is None  # a's entries stay a's
    a = GroupReader(redis_server.url, "s1", "g", consumer="a")
    seqs = []
    while (u := a.recv(200)) is not None:
        seqs.append(u.seq)
    assert seqs == list(range(10)) and a.rejected == 1
    a.close()
    assert r.xpending(key, "g")["pending"] == 0
    b.close()
    r.close()


def test_cli_sim_publishes_to_redis_and_stream_follows_a_group(redis_server):
    out = subprocess.run([PY, "-m", "clients.cli", "sim", "--redis", redis_server.url,
                          "--redis-stream", "cli", "--fast", "--seconds", "0.2"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    r = connect(redis_server.url, socket_timeout=5)
    entries = r.xrange(Keys.source("cli"))
    assert len(entries) == 2 * 200  # behaviour + spikes per 1 ms step
    kinds = {P.decode(list(f.values())).header.kind for _, f in entries[:2]}
    assert kinds == {P.KIND_BEHAVIOR, P.KIND_EVENTS}
    for i in range(20):
        r.xadd(Keys.output("clis"), frames_to_fields(P.encode_array(
            b"decoded", P.KIND_DECODED, "clis", i, i * 10**7, np.arange(4.0), 10**7,
            {"truth": [0.0, 1.0, 2.0, 3.0]})))
    proc = subprocess.Popen([PY, "-m", "clients.cli", "stream", "clis", "--redis",
                             redis_server.url, "--group", "g", "--start", "0", "--every", "5"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    guard = threading.Timer(60, proc.kill)  # readline() must not wait for ever
    guard.start()
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        guard.cancel()
        proc.terminate()
        proc.wait(10)
    assert [ln.split()[1] for ln in lines] == ["4", "9", "14", "19"], lines
    r.close()


def test_unreachable_redis_fails_the_start_and_names_the_url(server):
    url = f"redis://127.0.0.1:{free_port()}/0"
    c = server.client()
    s = c.create_session(_cfg(url, "nowhere"))
    with pytest.raises(ControlError) as e:
        c.start(s["id"])
    assert f"cannot reach Redis at {url}" in str(e.value)
    assert c.session(s["id"])["state"] == "failed"


def test_a_password_protected_redis_is_used_with_the_servers_secret_and_shown_nowhere(
        tmp_path):
    """The password lives in the server's password file (0600) and reaches the session
    through its environment: not in the session config, the database, the recording, the
    session's status and log, or anything else in the data dir."""
    secret = "pw-" + os.urandom(8).hex()
    redis_srv = start_redis(tmp_path / "redis", password=secret)
    bare_url = f"redis://127.0.0.1:{redis_srv.port}/0"
    pw_file = tmp_path / "redis.pw"
    pw_file.write_text(secret + "\n")
    pw_file.chmod(0o644)
    refused = subprocess.run([PY, "-m", "clients.cli", "serve", "--data-dir", str(tmp_path / "x"),
                              "--port", str(free_port()), "--redis-password-file", str(pw_file)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "chmod 600" in refused.stderr
    pw_file.chmod(0o600)
    srv = start_server(tmp_path / "data", extra=("--redis-password-file", str(pw_file)))
    pub = _publisher(redis_srv.url, "rig3")  # the source has its own credentials
    try:
        c = srv.client()
        with SimThread(seed=23, publisher=pub):
            cfg = _cfg(bare_url, "rig3")
            cfg["redis"]["mirror_recording"] = True
            sid = c.start(c.create_session(cfg)["id"])["id"]
            live = _until(c, sid, lambda x: x["state"] == "running" and x["bins"] > 100,
                          "decoding from the password-protected Redis")
            assert live["redis"]["mirror"]["sent"] > 0
            shown = str(c.session(sid)) + c.prometheus()
            c.stop(sid)
        assert secret not in shown
        r = connect(redis_srv.url, socket_timeout=5)
        assert r.xlen(Keys.output(sid)) > 0, "the session wrote to Redis with the server's secret"
        r.close()
    finally:
        stop_server(srv)
        stop_redis(redis_srv)
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert any(p.suffix == ".splog" for p in files)
    holding = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not holding, f"the Redis password was written to {holding}"
