"""The operator can always disarm, and no request can take the service's guarantees away.

Each test reproduces a finding of the security probe against a real server on loopback
and checks that it now gets a refusal or a bounded, safe outcome.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time

import httpx
import pytest
import zmq

from clients.stimulator import StimulatorLink
from clients.stream import StreamClient
from service.api.auth import new_token
from service.session.store import Store
from service.wire import protocol as P
from tests.helpers import SimThread, free_port, wait_for


def _cfg(endpoint: str, **over) -> dict:
    cfg = {"name": "safety", "bin_ms": 20.0,
           "source": {"endpoint": endpoint, "channels": 48},
           "decoder": {"type": "kalman", "calibration_s": 3.0},
           "stim": {"modality": "dbs",
                    "policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.2}}}
    cfg.update(over)
    return cfg


def _token(server, *scopes: str) -> str:
    store = Store(server.data_dir / "spikeloop.db")
    try:
        return new_token(store, "-".join(scopes), list(scopes))
    finally:
        store.close()


def _http(server, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


@pytest.mark.parametrize("endpoint", [
    "ipc://{victim}", "ipc://relative.sock", "inproc://x", "tcp://0.0.0.0:0", "tcp://*:0",
    "tcp://127.0.0.1:0\n"])
def test_a_request_cannot_choose_where_a_session_binds(server, tmp_path, endpoint):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    with _http(server, server.token) as h:
        r = h.post("/sessions", json=_cfg("tcp://127.0.0.1:1", output={
            "endpoint": endpoint.format(victim=victim)}))
    assert r.status_code == 422, r.text
    assert victim.read_text() == "precious"


def test_output_ipc_lives_in_the_sessions_own_directory(server):
    c = server.client()
    with SimThread(units=48, seed=4) as sim:
        s = c.start(c.create_session(_cfg(sim.endpoint, output={"endpoint": "ipc"}))["id"])
        sdir = server.data_dir / "run" / s["id"]
        assert s["output_endpoint"] == f"ipc://{sdir / 'output.sock'}"
        assert stat.S_IMODE(sdir.stat().st_mode) == 0o700
        sc = StreamClient(s["output_endpoint"], topics=(b"heartbeat",))
        try:
            assert sc.recv(timeout_ms=10_000) is not None
        finally:
            sc.close()
        c.stop(s["id"])


def test_safety_limits_other_than_the_defaults_need_the_stim_scope(server):
    control = _token(server, "read", "control")
    loose = _cfg("tcp://127.0.0.1:1", stim={
        "policy": {"type": "speed_to_dbs"},
        "limits": {"max_amplitude_ma": 25, "max_charge_per_phase_uc": 100,
                   "watchdog_ms": 5000, "thermal_horizon_s": 10}})
    with _http(server, control) as h:
        r = h.post("/sessions", json=loose)
        assert r.status_code == 403 and "stim" in r.json()["detail"], r.text
        assert h.post("/sessions", json=_cfg("tcp://127.0.0.1:1")).status_code == 201
    with _http(server, _token(server, "control", "stim")) as h:
        assert h.post("/sessions", json=loose).status_code == 201


def test_bodies_are_bounded_and_read_only_after_a_known_token(server):
    big = b'{"name": "' + b"x" * (2 << 20) + b'"}'
    deep = b"[" * 200_000 + b"]" * 200_000
    with _http(server, None) as h:
        r = h.post("/sessions", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 401  # refused before the body is read
    with _http(server, "not-a-token") as h:
        assert h.post("/sessions", content=deep,
                      headers={"content-type": "application/json"}).status_code == 401
    with _http(server, server.token) as h:
        r = h.post("/sessions", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = h.post("/sessions", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "deeper" in r.json()["detail"]
        assert h.get("/healthz").status_code == 200


def test_configs_that_would_take_the_hosts_memory_are_refused(server):
    with _http(server, server.token) as h:
        r = h.post("/sessions", json=_cfg("tcp://127.0.0.1:1", bin_ms=0.1, source={
            "endpoint": "tcp://127.0.0.1:1", "channels": 65535, "reorder_tolerance_ms": 1000}))
        assert r.status_code == 422 and "binner ring" in r.text
        r = h.post("/sessions", json=_cfg("tcp://127.0.0.1:1", output={
            "endpoint": "tcp://127.0.0.1:0", "high_water_mark": 10_000_000}))
        assert r.status_code == 422


def test_websockets_are_capped_and_cross_origin_refused_and_the_api_still_answers(server):
    from websockets.sync.client import connect

    c = server.client()
    with SimThread(units=48, seed=8) as sim:
        sid = c.start(c.create_session(_cfg(sim.endpoint))["id"])["id"]
        # Thinned streams to idle viewers: clients whose library takes in everything (and
        # answers the server's pings) but that never read it.
        url = server.url.replace("http://", "ws://") + f"/sessions/{sid}/stream?every=10000"
        opened, refused = 0, 0
        with contextlib.ExitStack() as stack:
            for _ in range(70):
                try:
                    stack.enter_context(connect(url, open_timeout=10, ping_interval=None,
                                               max_queue=None, additional_headers=server.bearer))
                    opened += 1
                except Exception:
                    refused += 1
            assert opened == 64 and refused == 6
            with pytest.raises(Exception), \
                    connect(url, origin="http://evil.example", open_timeout=10,  # noqa: B017
                            additional_headers=server.bearer) as ws:
                ws.recv(timeout=5)
            with _http(server, server.token) as h:
                assert h.get("/healthz").status_code == 200
                assert h.post(f"/sessions/{sid}/disarm").json()["armed"] is False

                def shared():  # 64 followers, one subscriber on the session's socket
                    m = h.get("/metrics").text
                    return "spikeloop_live_followers 64.0" in m and m
                metrics = wait_for(shared, 30, "all 64 streams to follow the session")
                assert "spikeloop_live_feeds 1.0" in metrics
        c.stop(sid)


def test_a_taken_over_control_socket_drives_stimulation_safe_and_disarm_still_answers(server):
    """Another process binds the armed session's control socket path: the session goes
    safe at once, takes its path back, and disarm answers."""
    c = server.client()
    with SimThread(units=48, seed=5) as sim:
        s = c.start(c.create_session(_cfg(sim.endpoint))["id"])
        sid = s["id"]
        wait_for(lambda: c.session(sid)["state"] == "running", 60, "calibration")
        c.arm(sid)
        sc = StreamClient(s["output_endpoint"], topics=(b"stim",))
        thief = zmq.Context.instance().socket(zmq.ROUTER)
        thief.setsockopt(zmq.LINGER, 0)
        try:
            thief.bind(f"ipc://{server.data_dir / 'run' / sid / 'control.sock'}")

            def went_safe():
                u = sc.recv(timeout_ms=200)
                return u if u is not None and u.kind == "stim.command" and \
                    "control socket" in " ".join(u.fields["reasons"]) else None
            u = wait_for(went_safe, 10, "the session to notice the takeover", 0)
            assert u.fields["status"] == "safe"
            assert u.fields["cmd"] is None or u.fields["cmd"]["amplitude_ma"] == 0.0
            out = c.disarm(sid)
            assert out["armed"] is False
            live = c.session(sid)["live"]
            assert live["armed"] is False and live["counters"]["control_socket_lost"] >= 1
        finally:
            thief.close(0)
            sc.close()
        c.stop(sid)


def test_disarm_falls_back_to_a_signal_when_the_control_socket_does_not_answer(server):
    c = server.client()
    with SimThread(units=48, seed=6) as sim:
        s = c.start(c.create_session(_cfg(sim.endpoint))["id"])
        sid = s["id"]
        wait_for(lambda: c.session(sid)["state"] == "running", 60, "calibration")
        c.arm(sid)
        pid = c.session(sid)["pid"]
        os.kill(pid, signal.SIGSTOP)  # the session cannot answer its control socket
        try:
            out = c.disarm(sid)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert out["armed"] is False
        wait_for(lambda: c.session(sid)["live"].get("armed") is False, 10,
                 "the session to disarm on the signal")
        c.stop(sid)


def test_data_files_are_readable_by_their_owner_only(server):
    c = server.client()
    with SimThread(units=48, seed=7) as sim:
        sid = c.start(c.create_session(_cfg(sim.endpoint))["id"])["id"]
        wait_for(lambda: c.session(sid)["live"]["bins"] > 20, 60, "bins")
        c.stop(sid)
    loose = []
    for root, dirs, files in os.walk(server.data_dir):
        for name in dirs + files:
            p = os.path.join(root, name)
            if stat.S_IMODE(os.lstat(p).st_mode) & 0o077:
                loose.append(p)
    assert not loose, loose


def test_stimulator_link_refuses_another_sessions_commands():
    port = free_port()
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{port}")
    got = []
    link = StimulatorLink(f"tcp://127.0.0.1:{port}", session_id="mine",
                          on_command=got.append)
    try:
        time.sleep(0.3)  # slow joiner
        for k, sid in enumerate(["other", "mine", "other"]):
            pub.send_multipart(P.encode_control(
                b"stim", P.KIND_STIM, sid, k + 1, k,
                {"status": "sent", "cmd": {"amplitude_ma": 1.0 + k}, "reasons": []}))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and link.foreign + len(got) < 3:
            link.poll(100)
        assert got == [{"amplitude_ma": 2.0}] and link.foreign == 2
    finally:
        link.close()
        pub.close(0)
