"""Security: CurveZMQ on ingest and output, loopback-only serving without auth, token CLI."""

from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np

from clients.publisher import SpikePublisher
from clients.stimulator import StimulatorLink
from clients.stream import StreamClient
from service.wire.curve import ensure_cert, public_key
from tests.helpers import PY, REPO, free_port, wait_for


def _publish_for(pub: SpikePublisher, seconds: float) -> None:
    rng = np.random.default_rng(0)
    t = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t += 5_000_000
        pub.send_behavior(rng.normal(size=4), t, ["x", "y", "vx", "vy"])
        pub.send_events(rng.integers(0, 96, 10), np.sort(rng.integers(t - 5_000_000, t, 10)), t)
        time.sleep(0.005)


def test_auth_curve_ingest_admits_only_the_allowed_session_and_output_is_encrypted(
        server, tmp_path):
    c = server.client()
    service_key = c._call("GET", "/keys/public")["public_key"]
    src_pub, src_sec = ensure_cert(tmp_path / "src", "rig1")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(server.data_dir / "keys" / "session.key", allowed / "session.key")
    assert public_key(allowed / "session.key") == service_key
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = SpikePublisher(ep, 96, curve_secret_file=str(src_sec), curve_allowed_dir=str(allowed))
    try:
        cfg = {"bin_ms": 10, "source": {"endpoint": ep, "channels": 96},
               "decoder": {"calibration_s": 0.5},
               "security": {"source_public_key": public_key(src_pub), "output_curve": True}}
        ok = c.start(c.create_session(cfg)["id"])
        # A session that does not know the source key cannot even connect to it.
        plain = c.start(c.create_session(cfg | {"security": {}})["id"])
        assert ok["live"]["public_key"] == service_key
        secure = StreamClient(ok["output_endpoint"], (b"heartbeat",), service_key)
        eavesdropper = StreamClient(ok["output_endpoint"], (b"heartbeat",))
        _publish_for(pub, 3.0)
        assert c.session(ok["id"])["live"]["bins"] > 100
        assert c.session(plain["id"])["live"]["bins"] == 0
        assert secure.recv(2000) is not None
        assert eavesdropper.recv(500) is None
        secure.close()
        eavesdropper.close()
        link = StimulatorLink(ok["output_endpoint"], server_public_key=service_key)
        wait_for(lambda: (link.poll(50), link.last_heard_ns)[1], 10, "encrypted heartbeats")
        link.close()
        c.stop(ok["id"])
        c.stop(plain["id"])
    finally:
        pub.close()


def test_auth_serving_beyond_loopback_without_auth_is_refused(tmp_path):
    r = subprocess.run([PY, "-m", "clients.cli", "serve", "--host", "0.0.0.0", "--no-auth",
                        "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "without authentication" in r.stderr


def test_auth_token_cli_creates_scoped_tokens(tmp_path):
    from service.api.auth import hash_token
    from service.session.store import Store

    r = subprocess.run([PY, "-m", "clients.cli", "token", "create", "viewer", "--scopes", "read",
                        "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    store = Store(tmp_path / "spikeloop.db")
    assert store.get_token(hash_token(token))["scopes"] == ["read"]
    raw = (tmp_path / "spikeloop.db").read_bytes()
    assert token.encode() not in raw  # stored hashed only
    store.close()
    bad = subprocess.run([PY, "-m", "clients.cli", "token", "create", "x", "--scopes", "root",
                          "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "unknown scopes" in bad.stderr
