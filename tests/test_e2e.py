"""The loop closed for real: uvicorn, session processes and ZeroMQ sockets on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import msgpack
import numpy as np
import pytest

from clients.control import ControlError
from clients.stream import StreamClient
from service.api.auth import new_token
from service.session.store import Store
from service.wire import protocol as P
from tests.helpers import (
    PY,
    REPO,
    SimThread,
    free_port,
    processes_mentioning,
    start_server,
    stop_server,
    wait_for,
)


def _session_config(endpoint: str, **over):
    cfg = {"name": "e2e", "bin_ms": 10.0,
           "source": {"endpoint": endpoint, "channels": 96},
           "decoder": {"type": "kalman", "calibration_s": 8.0},
           "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}}}
    cfg.update(over)
    return cfg


def _r2(pred, true):
    pred, true = np.asarray(pred), np.asarray(true)
    return 1 - ((true - pred) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)


def test_session_decodes_simulated_reaching_end_to_end(server):
    c = server.client()
    with SimThread(units=96, seed=3) as sim:
        # 20 ms bins, 20 s of calibration, 1000 scored bins: offline, over 30 random start
        # offsets, this gives velocity R² >= 0.68 (10 ms / 8 s gave a median of 0.38).
        s = c.create_session(_session_config(
            sim.endpoint, bin_ms=20.0, decoder={"type": "kalman", "calibration_s": 20.0}))
        assert s["state"] == "created"
        s = c.start(s["id"])
        assert s["state"] == "calibrating"
        sc = StreamClient(s["output_endpoint"], topics=(b"decoded",))
        pred, true = [], []
        try:
            while len(pred) < 1000:
                u = sc.recv(timeout_ms=60_000)
                assert u is not None, "no decoded output within 60 s"
                if u.truth is not None:
                    pred.append(u.decoded[2:4])
                    true.append(u.truth[2:4])
        finally:
            sc.close()
        r2 = _r2(pred, true)
        assert r2.mean() >= 0.5, f"velocity R² {r2}"
        live = c.session(s["id"])["live"]
        assert live["state"] == "running" and live["bins"] >= 1000
        assert live["armed"] is False and live["stim"]["amplitude_ma"] == 0.0
        final = c.stop(s["id"])
    assert final["state"] == "stopped"
    assert not processes_mentioning(s["id"])


def _bad_frames(step: int):
    good = P.encode_events(b"spikes", "sim", 10**9 + step, 0, 96, np.array([1]), np.array([0]))
    good = [bytes(f) for f in good]
    if step % 97 != 50:
        return []
    hdr = msgpack.unpackb(good[1])
    return [
        [good[0], good[1], good[2][:1], good[3]],  # truncated ids
        [good[0], b"\xc1not msgpack", good[2], good[3]],  # unparseable header
        [good[0], msgpack.packb(hdr | {"v": 9}), good[2], good[3]],  # unknown version
        [good[0], msgpack.packb(hdr | {"ch": 1}), good[2], good[3]],  # id >= channel count
        [b"spikes"],  # missing frames
    ]


def test_malformed_frames_are_counted_and_decoding_goes_on(server):
    c = server.client()
    with SimThread(units=96, seed=4, inject=_bad_frames) as sim:
        s = c.create_session(_session_config(sim.endpoint,
                                             decoder={"type": "kalman", "calibration_s": 2.0}))
        s = c.start(s["id"])
        sid = s["id"]
        live = wait_for(lambda: (lambda x: x if x["state"] == "running" and x["bins"] > 300
                                 else None)(c.session(sid)["live"]), 60, "decoding")
        bins_before = live["bins"]
        live = wait_for(lambda: (lambda x: x if x["bins"] > bins_before + 200 else None)(
            c.session(sid)["live"]), 30, "decoding to go on")
        for reason in ("payload_size", "header_unparseable", "bad_version", "channel_range",
                       "missing_frames"):
            assert live["rejected"].get(reason, 0) >= 1, (reason, live["rejected"])
        text = c.prometheus()
        m = re.search(rf'spikeloop_rejected_frames_total{{reason="bad_version",'
                      rf'session="{sid}"}} (\d+)', text)
        assert m and int(m.group(1)) >= 1, text[:2000]
        assert f'spikeloop_bins_total{{session="{sid}"}}' in text
        assert 'stage="decode"' in text and 'le="0.0001"' in text
        c.stop(sid)


def test_auth_stimulation_endpoints_need_the_stim_scope(server):
    c = server.client()
    with SimThread(units=96, seed=5) as sim:
        s = c.start(c.create_session(_session_config(
            sim.endpoint, decoder={"type": "kalman", "calibration_s": 1.0}))["id"])
        sid = s["id"]
        store = Store(server.data_dir / "spikeloop.db")
        read_only = new_token(store, "viewer", ["read"])
        operator = new_token(store, "operator", ["read", "control"])
        store.close()
        with pytest.raises(ControlError) as e:
            server.client(token=None).arm(sid)
        assert e.value.status == 401 and "stim" in str(e.value)
        with pytest.raises(ControlError) as e:
            server.client(token="slp_not_a_token").arm(sid)
        assert e.value.status == 401
        for tok in (read_only, operator):
            with pytest.raises(ControlError) as e:
                server.client(token=tok).arm(sid)
            assert e.value.status == 403
            with pytest.raises(ControlError) as e:
                server.client(token=tok).set_limits(sid, {"max_amplitude_ma": 25})
            assert e.value.status == 403
        assert c.session(sid)["live"]["armed"] is False
        wait_for(lambda: c.session(sid)["live"]["state"] == "running", 30, "calibration")
        assert c.arm(sid) == {"armed": True}
        assert c.disarm(sid) == {"armed": False}
        # Arm then disarm between two bins must stay disarmed at the following bins.
        b0 = c.session(sid)["live"]["bins"]
        live = wait_for(lambda: (lambda x: x if x["bins"] > b0 + 20 else None)(
            c.session(sid)["live"]), 20, "bins after disarm")
        assert live["armed"] is False and live["stim"]["amplitude_ma"] == 0.0
        audit = c._call("GET", f"/sessions/{sid}/audit?limit=100000")
        events = [r["event"] for r in audit if "event" in r]
        assert events.count("arm") == 1 and events.count("disarm") == 1
        refused = [r for r in audit if r.get("status") == "refused" and "repeated" not in r]
        assert refused and all("disarmed" in r["reasons"] for r in refused)
        assert any(r.get("repeated") for r in audit)  # one line per run of identical bins
        c.stop(sid)


def test_invalid_payloads_and_unknown_ids_get_clear_errors(server):
    c = server.client()
    with pytest.raises(ControlError) as e:
        c.create_session({"bin_ms": -1})
    assert e.value.status == 422
    with pytest.raises(ControlError) as e:
        c.create_session({"source": {"endpoint": "http://nope"}})
    assert e.value.status == 422 and "ZeroMQ endpoint" in str(e.value)
    with pytest.raises(ControlError) as e:
        c.create_session({"stim": {"limits": {"min_pulse_width_us": 500,
                                               "max_pulse_width_us": 100}}})
    assert e.value.status == 422
    with pytest.raises(ControlError) as e:
        c.create_session({"spin": True, "rt_priority": 50})
    assert e.value.status == 422 and "starve" in str(e.value)
    with pytest.raises(ControlError) as e:
        c.start("doesnotexist")
    assert e.value.status == 404 and "GET /sessions" in str(e.value)
    s = c.create_session({})
    with pytest.raises(ControlError) as e:
        c.arm(s["id"])
    assert e.value.status == 409 and "start it first" in str(e.value)


def test_fault_sessions_survive_an_api_crash_and_are_reattached(tmp_path):
    data = tmp_path / "data"
    srv = start_server(data)
    sid = None
    try:
        with SimThread(units=96, seed=6) as sim:
            c = srv.client()
            s = c.start(c.create_session(_session_config(
                sim.endpoint, decoder={"type": "kalman", "calibration_s": 1.0}))["id"])
            sid = s["id"]
            wait_for(lambda: c.session(sid)["live"]["state"] == "running", 30, "running")
            os.killpg(srv.proc.pid, signal.SIGKILL)  # the API dies; the loop must not
            srv.proc.wait()
            assert processes_mentioning(sid), "session process died with the API"
            srv = start_server(data, port=srv.port)
            c = srv.client()
            s = c.session(sid)
            assert s["state"] == "running"
            b0 = s["live"]["bins"]
            wait_for(lambda: c.session(sid)["live"]["bins"] > b0 + 50, 20, "bins to advance")
            assert c.stop(sid)["state"] == "stopped"
    finally:
        stop_server(srv)
        leaked = processes_mentioning(str(tmp_path))
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert not leaked


def test_run_command_closes_the_loop_and_leaves_no_process(tmp_path):
    data = tmp_path / "var"
    proc = subprocess.run(
        [PY, "-m", "clients.cli", "run", "--seconds", "12", "--calibration-s", "3",
         "--port", str(free_port()), "--source-port", str(free_port()), "--data-dir", str(data)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "R²" in proc.stdout and "decoded v" in proc.stdout, proc.stdout[-2000:]
    assert "stopped" in proc.stderr and "all processes stopped" in proc.stderr
    assert not processes_mentioning(str(tmp_path))


def test_websocket_stream_delivers_decoded_bins_and_closes_when_the_session_stops(server):
    import json

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    c = server.client()
    with SimThread(units=96, seed=9) as sim:
        s = c.start(c.create_session(_session_config(
            sim.endpoint, decoder={"type": "kalman", "calibration_s": 1.0}))["id"])
        sid = s["id"]
        wait_for(lambda: c.session(sid)["live"]["state"] == "running", 30, "running")
        url = server.url.replace("http", "ws") + f"/sessions/{sid}/stream?every=5"
        with connect(url, open_timeout=10, additional_headers=server.bearer) as ws:
            kinds, bins, out_seqs = set(), [], []
            while len(bins) < 20:
                m = json.loads(ws.recv(timeout=10))
                kinds.add(m["kind"])
                assert m["session"] == sid  # docs/protocol.md §9: every message says whose
                if m["kind"] == "decoded":
                    bins.append(m["bin"])
                    assert m["seq"] == m["bin"]
                    assert len(m["decoded"]) == 4 and m["truth"] is not None
                    assert m["names"] == m["truth_names"] == ["x", "y", "vx", "vy"]
                else:  # stim.command and heartbeat share one output sequence
                    out_seqs.append(m["seq"])
                    if m["kind"] == "stim.command":
                        assert set(m) >= {"status", "cmd", "in_force", "reasons", "bin",
                                          "in_seq", "armed"}
            assert {"decoded", "stim.command"} <= kinds
            assert out_seqs == sorted(set(out_seqs)) and out_seqs[0] >= 1
            assert set(np.diff(bins)) == {5}  # every 5th bin only
            c.stop(sid)
            with pytest.raises(ConnectionClosed):  # closed by the server, not a timeout
                while True:
                    ws.recv(timeout=10)


def test_ctrl_c_on_run_stops_everything_without_a_traceback(tmp_path):
    """Ctrl-C in a terminal signals the whole foreground process group: run alone must
    handle it (its children have their own groups), stop the session, then them."""
    data = tmp_path / "var"
    proc = subprocess.Popen(
        [PY, "-m", "clients.cli", "run", "--calibration-s", "2", "--port", str(free_port()),
         "--source-port", str(free_port()), "--data-dir", str(data)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        wait_for(lambda: list((data / "recordings").glob("*.splog")), 90, "the session")
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in err, err[-3000:]
    assert "all processes stopped" in err and "API http://127.0.0.1:" in err
    assert not processes_mentioning(str(tmp_path))


def test_stream_thins_decoded_bins_but_never_a_safety_event(server):
    """every=10 thins decoded vectors and routine commands; every clamped, refused or safe
    command reaches the client (the dashboard's safety panel)."""
    import json

    from websockets.sync.client import connect

    c = server.client()
    with SimThread(units=96, seed=10) as sim:
        cfg = _session_config(sim.endpoint, decoder={"type": "kalman", "calibration_s": 1.0})
        cfg["stim"]["policy"]["gain_ma_per_cm_s"] = 5.0  # asks far above the limit: clamped
        sid = c.start(c.create_session(cfg)["id"])["id"]
        wait_for(lambda: c.session(sid)["live"]["state"] == "running", 30, "running")
        c.arm(sid)
        url = server.url.replace("http", "ws") + f"/sessions/{sid}/stream?every=10"
        with connect(url, open_timeout=10, additional_headers=server.bearer) as ws:
            stim, decoded = [], []
            while len(decoded) < 30:
                m = json.loads(ws.recv(timeout=10))
                if m["kind"] == "decoded":
                    decoded.append(m["bin"])
                    assert m["names"] == ["x", "y", "vx", "vy"]
                elif m["kind"] == "stim.command" and m["in_seq"] >= 0:
                    stim.append(m)
        final = c.stop(sid)
    from service.recording.recorder import RecordType, read_log

    span = range(decoded[0], decoded[-1])
    flagged = ("clamped", "refused", "safe")
    recorded = {r.value.index for r in read_log(final["recording"], {RecordType.BIN})
                if r.value.index in span and r.value.outcome["status"] in flagged}
    # The physical monitor may clamp what the guard sent (a backlog on a loaded machine):
    # those bins are flagged on the stream and recorded as monitor events.
    monitored = {r.value["bin"] for r in read_log(final["recording"], {RecordType.EVENT})
                 if "monitor" in r.value}
    streamed = {m["bin"] for m in stim if m["bin"] in span and m["status"] in flagged}
    assert len(recorded) > 10 and recorded <= streamed
    assert streamed - recorded <= monitored
    assert len({m["bin"] for m in stim if m["bin"] in span}) < len(span)  # others thinned


def test_api_docs_work_offline(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=10) as h:
        page = h.get("/docs").text
        assert "/docs/static/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
        assert h.get("/docs/static/swagger-ui-bundle.js").status_code == 200
        assert h.get("/docs/static/swagger-ui.css").status_code == 200


def test_cli_errors_are_one_line_and_session_create_prints_the_id(server, tmp_path):
    port = free_port()
    busy = __import__("socket").socket()
    busy.bind(("127.0.0.1", port))
    busy.listen()
    try:
        sim = subprocess.run([PY, "-m", "clients.cli", "sim", "--endpoint",
                              f"tcp://127.0.0.1:{port}", "--seconds", "1"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    assert sim.returncode == 1 and "Traceback" not in sim.stderr
    assert "another process holds it" in sim.stderr, sim.stderr
    common = ["--api", server.url, "--data-dir", str(server.data_dir)]
    out = subprocess.run([PY, "-m", "clients.cli", "session", "create", "--channels", "96",
                          *common], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    sid, state = out.stdout.split()[:2]
    assert len(out.stdout.strip().splitlines()) == 1 and state == "created"
    assert server.client().session(sid)["id"] == sid
    bad = subprocess.run([PY, "-m", "clients.cli", "session", "start", "nope", *common],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "404" in bad.stderr, bad.stderr
