"""Lifecycle events through the real session process and the REST API, as an operator sees them.

A source restart of an armed session, adaptation and limits changes mid-run, a model
swap, then verify of the session's own recording; and the regressions the session-core
issue listed at the API (create-time refusal, fresh state, limits keep secrets,
Prometheus stimulation counters).
"""

from __future__ import annotations

import re
import sqlite3

import numpy as np
import pytest

from clients.stream import StreamClient
from decoders.base import build_decoder
from decoders.store import ModelStore
from service.recording.verify import verify
from tests.helpers import SimThread, free_port, wait_for

BIN_MS = 20.0


def _cfg(endpoint: str, **over) -> dict:
    cfg = {"name": "lifecycle", "bin_ms": BIN_MS,
           "source": {"endpoint": endpoint, "channels": 48},
           "decoder": {"type": "kalman", "calibration_s": 4.0},
           "stim": {"modality": "dbs",
                    "policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.2}}}
    cfg.update(over)
    return cfg


def _stim_total(text: str, sid: str, status: str) -> float:
    line = rf'^spikeloop_stim_commands_total\{{session="{sid}",status="{status}"\}} (\S+)$'
    m = re.search(line, text, re.M)
    assert m, f"no spikeloop_stim_commands_total for {sid}/{status}"
    return float(m.group(1))


def _on(msg: dict) -> bool:
    cmd = msg.get("cmd")
    return msg["status"] in ("sent", "clamped") and cmd is not None and \
        (cmd.get("amplitude_ma") or cmd.get("power_mw") or 0) > 0


#: an armed DBS session and an armed optogenetic one
STIM = {"dbs": {"modality": "dbs",
                "policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.2}},
        # a clamp asking for light on every bin (its target is far above the decoded value),
        # so "resumes" measures the loop, not when an event-triggered policy next fires
        "opto": {"modality": "opto",
                 "policy": {"type": "opto_rate_clamp", "index": 2, "target_hz": 1000.0,
                            "max_power_mw": 2.0}}}


def _wait_on(sc: StreamClient, what: str, timeout_s: float = 30) -> dict:
    def got():
        u = sc.recv(timeout_ms=200)
        return u.fields if u is not None and u.kind == "stim.command" and _on(u.fields) \
            else None
    return wait_for(got, timeout_s, what, 0)


@pytest.mark.parametrize("modality", ["dbs", "opto"])
def test_armed_session_stimulates_again_after_its_source_restarts(server, modality):
    """The source process stops (the watchdog drives the stimulator safe), then a new one
    starts (new epoch, clock from zero) under the armed session: safe at once, then
    stimulation again within 1 s of source time of the new source's first frame; status
    and Prometheus say so; indices go forward; verify holds. DBS and light alike."""
    c = server.client()
    port = free_port()
    with SimThread(units=48, seed=1, port=port) as sim:
        s = c.start(c.create_session(_cfg(sim.endpoint, stim=STIM[modality]))["id"])
        sid = s["id"]
        wait_for(lambda: c.session(sid)["state"] == "running", 60, "calibration")
        # subscribed before arming: a command the guard repeats is a "hold" (no cmd), so
        # a subscriber that joins after the first "sent" may see no other
        sc = StreamClient(s["output_endpoint"], topics=(b"stim",))
        try:
            wait_for(lambda: sc.recv(timeout_ms=200) is not None, 30, "the stim stream", 0)
            c.arm(sid)
            _wait_on(sc, "stimulation before the restart")
            sent_before = _stim_total(c.prometheus(), sid, "sent") + \
                _stim_total(c.prometheus(), sid, "clamped")
            live0 = c.session(sid)["live"]
        finally:
            sc.close()
    # The source is gone: heartbeats go on, the watchdog drives the stimulator safe.
    sc = StreamClient(s["output_endpoint"], topics=(b"stim",))
    try:
        stalled = wait_for(lambda: (lambda u: u.fields if u is not None and
                                    u.kind == "stim.command" and "watchdog" in
                                    " ".join(u.fields["reasons"]) else None)(
                                        sc.recv(timeout_ms=200)),
                           30, "the watchdog's safe command", 0)
        assert stalled["status"] == "safe" and not _on(stalled)
        with SimThread(units=48, seed=2, port=port):
            safe = wait_for(lambda: (lambda u: u.fields if u is not None and
                                     u.kind == "stim.command" and "source restarted" in
                                     " ".join(u.fields["reasons"]) else None)(
                                         sc.recv(timeout_ms=200)),
                            30, "the restart's safe command", 0)
            assert safe["status"] == "safe" and safe["armed"] is True
            cut = safe["bin"]
            on = _wait_on(sc, "stimulation after the restart")
            assert on["bin"] - cut <= 1000 / BIN_MS, f"{on['bin'] - cut} bins after the restart"
            live = c.session(sid)["live"]
            assert live["state"] == "running" and live["armed"] and not live["degraded"]
            assert live["source_restarts"] == 1 and live["segments"] == 2
            assert live["bins"] > live0["bins"]
            assert live["stim_status"]["why_not_stimulating"] == ""
            sent_after = _stim_total(c.prometheus(), sid, "sent") + \
                _stim_total(c.prometheus(), sid, "clamped")
            assert sent_after > sent_before
    finally:
        sc.close()
    row = c.stop(sid)
    assert row["state"] == "stopped"
    report = verify(row["recording"])
    assert report.identical, report.first_divergence


def test_adaptation_limits_and_model_swap_mid_run_verify_identically(server):
    c = server.client()
    rng = np.random.default_rng(0)
    ModelStore(server.data_dir / "models").save(
        "swap-wiener", build_decoder("wiener").fit(
            rng.poisson(1.0, (400, 48)), rng.normal(size=(400, 4)), bin_ms=BIN_MS,
            output_names=["x", "y", "vx", "vy"]))
    with SimThread(units=48, seed=3) as sim:
        sid = c.start(c.create_session(_cfg(sim.endpoint))["id"])["id"]
        wait_for(lambda: c.session(sid)["state"] == "running", 60, "calibration")
        c.arm(sid)
        bins = lambda: c.session(sid)["live"]["bins"]  # noqa: E731
        b0 = bins()
        wait_for(lambda: bins() > b0 + 50, 30, "bins")
        out = c.adapt(sid, True)
        assert out["adapt"] is True
        c.set_limits(sid, {"max_amplitude_ma": 0.5})
        wait_for(lambda: bins() > b0 + 100, 30, "bins")
        out = c.swap_model(sid, "swap-wiener")
        assert out["decoder"]["type"] == "wiener"
        wait_for(lambda: bins() > b0 + 150, 30, "bins")
        live = c.session(sid)["live"]
        assert live["decoder"]["type"] == "wiener" and live["adapt"] is True
        assert live["limits"]["max_amplitude_ma"] == 0.5
    row = c.stop(sid)
    report = verify(row["recording"])
    assert report.identical, report.first_divergence
    assert report.models == 2


def test_create_refuses_a_policy_the_models_outputs_cannot_feed(server):
    rng = np.random.default_rng(1)
    ModelStore(server.data_dir / "models").save(
        "hd", build_decoder("kalman").fit(rng.poisson(1.0, (300, 48)),
                                          rng.normal(size=(300, 2)), bin_ms=BIN_MS,
                                          output_names=["cos", "sin"]))
    c = server.client()
    r = c.http.post("/sessions", json=_cfg("tcp://127.0.0.1:1", decoder={"model": "hd"}))
    assert r.status_code == 422, r.text
    assert "vx, vy" in r.json()["detail"] and "['cos', 'sin']" in r.json()["detail"]
    r = c.http.post("/sessions", json=_cfg("tcp://127.0.0.1:1", decoder={"model": "nope"}))
    assert r.status_code == 422 and "GET /models" in r.json()["detail"]
    ok = _cfg("tcp://127.0.0.1:1", decoder={"model": "hd"},
              stim={"policy": {"type": "single_threshold_dbs", "index": 1}})
    assert c.http.post("/sessions", json=ok).status_code == 201


def test_a_redis_password_in_a_session_config_is_refused_with_the_fix(server):
    """A password in redis.url would be stored with the session and copied into its
    recording: the server's own password file is the place for it."""
    c = server.client()
    for url in ("redis://:s3cret@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=s3cret"):
        r = c.http.post("/sessions", json=_cfg("tcp://127.0.0.1:1", redis={"url": url}))
        assert r.status_code == 422, r.text
        assert "--redis-password-file" in r.text and "s3cret" not in r.text
    with sqlite3.connect(server.data_dir / "spikeloop.db") as db:
        assert db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
