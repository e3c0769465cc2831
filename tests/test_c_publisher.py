"""A publisher in a second language (C, libzmq + msgpack-c) decodes in a live session.

``clients/c/spike_publisher.c`` was written from docs/protocol.md alone. Built here with
the system compiler against Debian's libzmq3-dev and libmsgpack-dev (scripts/test.sh
installs them), it feeds a session of a real server: the session must calibrate on its
behaviour and decode with zero rejected frames and no sequence gap, its outputs named
by the behaviour's names, and ``check-source`` must find no violation in it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from clients.stream import StreamClient
from tests.helpers import PY, REPO, free_port, start_running, stop_process

SOURCE = REPO / "clients" / "c" / "spike_publisher.c"
CHANNELS = 32


def build(out_dir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    missing = [h for h in ("zmq.h", "msgpack.h") if not Path("/usr/include", h).exists()]
    if cc is None or missing:
        pytest.skip(f"C toolchain or headers missing ({cc=}, {missing=}): scripts/test.sh "
                    "installs Debian's libzmq3-dev and libmsgpack-dev")
    exe = out_dir / "spike_publisher"
    r = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(SOURCE),
                        "-lzmq", "-lmsgpackc", "-lm"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return exe


def test_c_publisher_decodes_in_a_live_session_with_zero_rejected_frames(server, tmp_path):
    exe = build(tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = subprocess.Popen([str(exe), endpoint, str(CHANNELS), "120", "crig"],
                           start_new_session=True)
    c = server.client()
    sid = None
    try:
        check = subprocess.run(
            [PY, "-m", "clients.cli", "check-source", endpoint, "--seconds", "3",
             "--channels", str(CHANNELS), "--bin-ms", "20", "--json"],
            cwd=REPO, capture_output=True, text=True, timeout=120)
        report = json.loads(check.stdout)
        assert check.returncode == 0 and report["violations"] == [], check.stdout
        assert report["messages"]["spikes"] > 100

        sid, live = start_running(c, endpoint, CHANNELS, "c-publisher", 10.0, 90,
                                  stream="crig")
        sc = StreamClient(live["output_endpoint"], topics=(b"decoded",))
        pred, true = [], []
        try:
            while len(pred) < 600:  # 12 s of 20 ms bins
                u = sc.recv(timeout_ms=10_000)
                assert u is not None, "no decoded message within 10 s"
                assert u.fields is None and u.truth is not None
                pred.append(u.decoded)
                true.append(u.truth)
        finally:
            sc.close()
        live = c.session(sid)["live"]
        assert live["rejected"] == {}, live["rejected"]
        assert live["gaps"] == 0 and live["counters"].get("missing_frames", 0) == 0
        assert live["outputs"] == ["vx", "vy"]
        assert live["unmatched_topics"] == {}
        p, t = np.asarray(pred), np.asarray(true)
        r2 = 1 - ((t - p) ** 2).sum(0) / ((t - t.mean(0)) ** 2).sum(0)
        print(f"C publisher: decoded R² vx {r2[0]:.3f} vy {r2[1]:.3f} over {len(p)} bins")
        assert (r2 > 0.3).all(), r2  # it decodes: the tuning is there to be found
    finally:
        if sid is not None:
            c.stop(sid)
        stop_process(pub)
