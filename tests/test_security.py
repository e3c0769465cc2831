"""Neural data is health data: every read needs a token, tokens are named, expire and can be
revoked, their names are in the audit trail, and the API serves https beyond loopback.

Real servers on 127.0.0.1 (tests/helpers.py), the real CLI, real files.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from clients.control import ControlClient, ControlError
from service.api.auth import (
    FailedAuthLimiter,
    hash_token,
    new_token,
    parse_duration,
    token_list,
)
from service.api.deps import PUBLIC_PATHS
from service.entry import serve_refusal
from service.session.store import Store
from tests.helpers import (
    PY,
    REPO,
    SimThread,
    free_port,
    start_server,
    stop_server,
    wait_for,
)

# ---------------------------------------------------------------------- routes


def _all_routes(routes) -> list:
    """Every route of the app, included routers' routes too."""
    out = []
    for r in routes:
        inner = getattr(r, "original_router", None)  # FastAPI's included router
        if inner is not None:
            out += _all_routes(inner.routes)
        else:
            out.append(r)
    return out


def _app_routes(tmp_path: Path) -> tuple[dict[str, set[str]], set[str], set[str], set[str]]:
    """(HTTP path -> methods, WebSocket paths, paths outside the schema, mounts) of the app
    ``spikeloop serve`` runs."""
    from fastapi.routing import APIRoute, APIWebSocketRoute
    from starlette.routing import Mount

    from service.api.app import Settings, create_app

    app = create_app(Settings(data_dir=tmp_path / "routes"))
    http: dict[str, set[str]] = {}
    ws, hidden, mounts = set(), set(), set()
    for r in _all_routes(app.routes):
        if isinstance(r, APIWebSocketRoute):
            ws.add(r.path)
        elif isinstance(r, Mount):
            mounts.add(r.path)
        elif isinstance(r, APIRoute):
            http.setdefault(r.path, set()).update(r.methods)
            if not r.include_in_schema:
                hidden.add(r.path)
        else:
            hidden.add(r.path)  # /openapi.json
    app.state.store.close()
    return http, ws, hidden, mounts


def _concrete(path: str) -> str:
    return path.replace("{sid}", "nosuchsession").replace("{name}", "nosuchname")


def _ws_status(url: str, headers: dict[str, str]) -> int:
    """The HTTP status that refused a WebSocket handshake (101 when it was accepted)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(url, additional_headers=headers, open_timeout=10):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def test_every_route_but_the_public_ones_needs_a_token_with_its_scope(server, tmp_path):
    """Walks the app's routes (the OpenAPI list and the WebSockets): 401 without a token,
    403 with a valid token that lacks the scope, for every route not marked public."""
    http, ws, hidden, mounts = _app_routes(tmp_path)
    schema = httpx.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert set(schema) == set(http) - hidden  # the walk covers the OpenAPI list
    # what is public is exactly what is declared so (mounts: static files only)
    assert hidden - {"/openapi.json"} <= PUBLIC_PATHS
    assert mounts == {"/docs/static", "/ui/static"}
    store = Store(server.data_dir / "spikeloop.db")
    no_read = new_token(store, "no-read", ["control", "stim"])
    read_only = new_token(store, "read-only", ["read"])
    store.close()
    checked = []
    with httpx.Client(base_url=server.url, timeout=30) as h:
        for path, methods in sorted(http.items()):
            url = _concrete(path)
            for method in sorted(methods - {"HEAD"}):
                if path in PUBLIC_PATHS or path == "/openapi.json":
                    assert method == "GET", (method, path)
                    assert h.request(method, url).status_code in (200, 307), path
                    continue
                lacking = no_read if method == "GET" else read_only
                anon = h.request(method, url)
                assert anon.status_code == 401, (method, path, anon.text)
                assert anon.headers["www-authenticate"] == "Bearer"
                wrong = h.request(method, url, headers={"Authorization": f"Bearer {lacking}"})
                assert wrong.status_code == 403, (method, path, wrong.text)
                checked.append((method, path))
    ws_base = server.url.replace("http://", "ws://")
    for path in sorted(ws):
        url = ws_base + _concrete(path)
        assert _ws_status(url, {}) == 401, path
        assert _ws_status(url, {"Authorization": f"Bearer {no_read}"}) == 403, path
        checked.append(("WS", path))
    # the health data named in the issue is among what was checked
    for must in ("/recordings/{name}", "/sessions/{sid}", "/sessions/{sid}/audit",
                 "/sessions/{sid}/stream", "/sessions", "/metrics"):
        assert must in {p for _, p in checked}, must
    assert ("GET", "/healthz") not in checked


def test_the_stream_and_the_dashboard_read_with_a_token_header_or_subprotocol(server):
    """A browser cannot set headers on a WebSocket: its token comes as the subprotocol
    ``bearer.<token>`` and the server answers ``spikeloop``."""
    from websockets.sync.client import connect

    c = server.client()
    with SimThread(units=48, seed=3) as sim:
        sid = c.start(c.create_session({
            "name": "ws", "bin_ms": 20.0, "source": {"endpoint": sim.endpoint, "channels": 48},
            "decoder": {"type": "kalman", "calibration_s": 1.0}})["id"])["id"]
        wait_for(lambda: c.session(sid)["live"]["state"] == "running", 30, "running")
        base = server.url.replace("http://", "ws://")
        for path in (f"/sessions/{sid}/stream", f"/ui/sessions/{sid}/raster"):
            with connect(base + path, subprotocols=["spikeloop", "bearer." + server.token],
                         open_timeout=10) as ws:
                assert ws.subprotocol == "spikeloop"
                assert ws.recv(timeout=10)
            assert _ws_status(base + path, {}) == 401
        c.stop(sid)


def test_public_read_serves_reads_without_a_token_on_loopback_only(tmp_path):
    srv = start_server(tmp_path / "data", extra=("--public-read",))
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as h:
            assert h.get("/sessions").status_code == 200
            assert h.get("/recordings").status_code == 200
            assert h.post("/sessions", json={}).status_code == 401  # changes still need one
            # a token that is presented is still checked
            r = h.get("/sessions", headers={"Authorization": "Bearer slp_nope"})
            assert r.status_code == 401
    finally:
        stop_server(srv)
    r = subprocess.run([PY, "-m", "clients.cli", "serve", "--host", "0.0.0.0", "--public-read",
                        "--data-dir", str(tmp_path / "d2"), "--port", str(free_port())],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--public-read is for" in r.stderr


# ---------------------------------------------------------------------- tokens


@pytest.mark.unit
def test_durations_and_token_states(tmp_path):
    assert parse_duration("30d") == 30 * 86400 and parse_duration("12h") == 43200
    assert parse_duration("90m") == 5400 and parse_duration("2w") == 14 * 86400
    for bad in ("30", "d", "-1d", "0d", "1y"):
        with pytest.raises(ValueError, match="e.g. 30d"):
            parse_duration(bad)
    store = Store(tmp_path / "db.sqlite")
    new_token(store, "alice", ["read"], expires_in_s=3600)
    with pytest.raises(ValueError, match="in use"):
        new_token(store, "alice", ["read"])
    with pytest.raises(ValueError, match="token name"):
        new_token(store, "bad name; drop", ["read"])
    now = time.time()
    assert [t["state"] for t in token_list(store, now)] == ["active"]
    assert [t["state"] for t in token_list(store, now + 7200)] == ["expired"]
    assert store.revoke_tokens("alice") == 1
    assert [t["state"] for t in token_list(store, now)] == ["revoked"]
    new_token(store, "alice", ["read"])  # the name is free again
    assert (tmp_path / "db.sqlite").stat().st_mode & 0o777 == 0o600
    store.close()


@pytest.mark.unit
def test_failed_authentications_are_limited_per_client_and_forgotten_after_the_window():
    t = [0.0]
    lim = FailedAuthLimiter(max_failures=3, window_s=60.0, clock=lambda: t[0])
    for _ in range(3):
        assert lim.retry_after("10.0.0.1") == 0
        lim.failed("10.0.0.1", "/sessions", "unknown token")
    assert lim.retry_after("10.0.0.1") == 60.0
    assert lim.retry_after("10.0.0.2") == 0  # another client is not affected
    t[0] = 30.0
    assert lim.retry_after("10.0.0.1") == 30.0
    t[0] = 60.0
    assert lim.retry_after("10.0.0.1") == 0
    assert lim.refused == 2


def _cli(*args: str, data: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([PY, "-m", "clients.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=os.environ | (env or {}) |
                          {"SPIKELOOP_DATA_DIR": str(data)})


def test_revoked_and_expired_tokens_are_refused_and_the_cli_manages_tokens(server):
    data = server.data_dir
    r = _cli("token", "create", "alice", "--scopes", "read,control", "--expires", "30d",
             data=data)
    assert r.returncode == 0, r.stderr
    alice = r.stdout.strip()
    assert alice.startswith("slp_") and alice.encode() not in (data / "spikeloop.db").read_bytes()
    assert (data / "spikeloop.db").stat().st_mode & 0o777 == 0o600
    listed = _cli("token", "list", data=data).stdout
    line = next(x for x in listed.splitlines() if x.startswith("alice "))
    assert "read,control" in line and "active" in line and "expires 20" in line
    assert ControlClient(server.url, alice).sessions() == []
    # the CLI reads with a named token too (SPIKELOOP_TOKEN)
    r = _cli("session", "list", "--api", server.url, data=data,
             env={"SPIKELOOP_TOKEN": alice})
    assert r.returncode == 0, r.stderr

    assert _cli("token", "revoke", "alice", data=data).returncode == 0
    with pytest.raises(ControlError) as e:
        ControlClient(server.url, alice).sessions()
    assert e.value.status == 401 and "revoked" in str(e.value)
    r = _cli("session", "list", "--api", server.url, data=data,
             env={"SPIKELOOP_TOKEN": alice})
    assert r.returncode == 1 and "401" in r.stderr and "revoked" in r.stderr
    assert "revoked" in next(x for x in _cli("token", "list", data=data).stdout.splitlines()
                             if x.startswith("alice "))
    assert _cli("token", "revoke", "alice", data=data).returncode != 0  # nothing left

    store = Store(data / "spikeloop.db")  # a token whose lifetime is over
    old = "slp_" + "o" * 43
    store.insert_token(hash_token(old), "old", ["read", "control", "stim"],
                       expires_at=time.time() - 1)
    store.close()
    with pytest.raises(ControlError) as e:
        ControlClient(server.url, old).sessions()
    assert e.value.status == 401 and "expired" in str(e.value)
    with pytest.raises(ControlError) as e:  # refused before a change reads its body
        ControlClient(server.url, old).create_session({})
    assert e.value.status == 401


def test_repeated_failed_authentications_are_answered_429_and_logged(tmp_path):
    log = tmp_path / "server.log"
    srv = start_server(tmp_path / "data", log=log)
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as h:
            bad = {"Authorization": "Bearer slp_guess"}
            codes = [h.get("/recordings", headers=bad).status_code for _ in range(10)]
            assert codes == [401] * 10
            r = h.get("/recordings", headers=bad)
            assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
            # a change from this client is refused before its token is even looked at
            assert h.post("/sessions", headers=bad, json={}).status_code == 429
            assert h.get("/healthz").status_code == 200  # health stays public
    finally:
        stop_server(srv)
    text = log.read_text()
    assert text.count("authentication failed from 127.0.0.1 on /recordings") == 10
    assert "slp_guess" not in text  # never the presented token


def test_audit_and_recording_name_the_token_of_every_control_and_stim_event(server):
    from service.recording.recorder import RecordType, read_log

    store = Store(server.data_dir / "spikeloop.db")
    alice = new_token(store, "alice", ["read", "control", "stim"])
    store.close()
    c = ControlClient(server.url, alice)
    with SimThread(units=48, seed=4) as sim:
        sid = c.create_session({
            "name": "audit", "bin_ms": 20.0, "source": {"endpoint": sim.endpoint,
                                                        "channels": 48},
            "decoder": {"type": "kalman", "calibration_s": 1.0},
            "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}}})["id"]
        c.start(sid)
        wait_for(lambda: c.session(sid)["live"]["state"] == "running", 30, "running")
        c.arm(sid)
        limits = c.limits(sid) | {"max_amplitude_ma": 1.5}
        c.set_limits(sid, limits)
        c.disarm(sid)
        final = c.stop(sid)
    audit = c._call("GET", f"/sessions/{sid}/audit", params={"limit": 100_000})
    by = {}
    for row in audit:
        if row.get("event") in ("start", "arm", "limits", "disarm", "stop"):
            by.setdefault(row["event"], []).append((row.get("by"), row.get("reason")))
    # every operator action names alice; the session disarms itself as it stops, and says so
    assert by == {"start": [("alice", None)], "arm": [("alice", None)],
                  "limits": [("alice", None)], "disarm": [("alice", None), ("session", "stop")],
                  "stop": [("alice", None)]}, by
    recorded = {}
    for rec in read_log(final["recording"], {RecordType.EVENT}):
        op = rec.value.get("op") or rec.value.get("lifecycle")
        if op in ("start", "arm", "limits", "disarm", "stop"):
            recorded.setdefault(op, []).append((rec.value.get("by"), rec.value.get("reason")))
    assert recorded == by


# ---------------------------------------------------------------------- TLS


@pytest.mark.unit
def test_serve_refuses_plain_http_and_anonymous_access_beyond_loopback():
    cert, key = Path("c.pem"), Path("k.pem")
    assert serve_refusal("127.0.0.1", False, True, None, None, False) is None
    assert serve_refusal("::1", True, False, None, None, False) is None
    assert "clear text" in serve_refusal("0.0.0.0", False, False, None, None, False)
    assert serve_refusal("0.0.0.0", False, False, None, None, True) is None  # --insecure
    assert serve_refusal("10.0.0.5", False, False, cert, key, False) is None
    assert "go together" in serve_refusal("127.0.0.1", False, False, cert, None, False)
    assert "without authentication" in serve_refusal("0.0.0.0", True, False, cert, key, False)
    assert "--public-read" in serve_refusal("0.0.0.0", False, True, cert, key, True)


def _self_signed(d: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made now, by openssl (its own CA)."""
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_end_to_end_with_a_self_signed_certificate_and_the_cli(tmp_path):
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = _self_signed(tmp_path)
    data = tmp_path / "data"
    r = subprocess.run([PY, "-m", "clients.cli", "serve", "--host", "0.0.0.0", "--port",
                        str(free_port()), "--data-dir", str(data)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--tls-cert" in r.stderr  # no plain http off loopback
    srv = start_server(data, extra=("--tls-cert", str(cert), "--tls-key", str(key)),
                       ca_file=cert)
    try:
        assert srv.url.startswith("https://")
        r = _cli("--ca-file", str(cert), "session", "list", "--api", srv.url, data=data)
        assert r.returncode == 0, r.stderr
        r = _cli("session", "create", "--api", srv.url, "--source", "tcp://127.0.0.1:1",
                 "--channels", "8", data=data, env={"SPIKELOOP_CA_FILE": str(cert)})
        assert r.returncode == 0, r.stderr
        sid = r.stdout.split()[0]
        assert ControlClient(srv.url, srv.token, ca_file=cert).session(sid)["state"] == "created"
        # without the CA the certificate is not trusted: one line, no traceback
        r = _cli("session", "list", "--api", srv.url, data=data)
        assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr
        assert "Traceback" not in r.stderr
        # plain http to the TLS port gets nothing
        with pytest.raises(httpx.HTTPError):
            httpx.get(srv.url.replace("https://", "http://") + "/healthz", timeout=10)
    finally:
        stop_server(srv)
