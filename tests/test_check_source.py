"""``spikeloop check-source``: the conformance check of a publisher against docs/protocol.md.

Unit tests feed the checker frames directly; the command itself listens (a real
subprocess, real sockets on 127.0.0.1) to the project's simulated source, which must
pass, and to a publisher written with the mistakes strangers make, which must fail
with each mistake named with its section.
"""

from __future__ import annotations

import json
import subprocess
import threading

import msgpack
import numpy as np
import pytest
import zmq

from service.wire import protocol as P
from service.wire.conformance import SourceCheck
from tests.helpers import PY, REPO, SimThread, free_port

MS = 1_000_000


def _events(seq, t, ids=(), times=(), ch=4, stream="rig", topic=b"spikes", **hdr):
    f = [bytes(x) for x in P.encode_events(topic, stream, seq, t, ch, np.array(ids, int),
                                           np.array(times, np.int64))]
    if hdr:
        f[1] = msgpack.packb(msgpack.unpackb(f[1]) | hdr)
    return f


def _behavior(seq, t, values, names, stream="rig", topic=b"behavior"):
    extra = {"names": names} if names is not None else None
    return [bytes(x) for x in P.encode_array(topic, P.KIND_BEHAVIOR, stream, seq, t,
                                             np.array(values, float), extra=extra)]


def _rules(check: SourceCheck) -> dict[str, str]:
    return {v.rule: v.section for v in check.violations.values()}


@pytest.mark.unit
def test_a_conforming_stream_has_no_violation():
    c = SourceCheck(channels=4, bin_ns=MS)
    for k in range(1, 50):
        c.feed(_behavior(k - 1, k * MS, [0.1 * k, 0.0], ["vx", "vy"]))
        c.feed(_events(k - 1, k * MS, [k % 4], [k * MS - 10]))
    c.feed(_events(49, 60 * MS))  # an empty watermark message
    c.finish()
    assert c.ok and not c.violations and c.messages["spikes"] == 50 and c.events == 49


@pytest.mark.unit
def test_each_mistake_is_named_with_its_section():
    c = SourceCheck(channels=4, bin_ns=MS)
    c.feed(_behavior(0, MS, [0.0], None))                     # no names
    c.feed(_events(1, MS, [0], [0]))                          # one counter for all kinds ...
    c.feed(_behavior(2, 2 * MS, [0.0, 1.0], ["a", "b"]))      # names now: the first frame had none
    c.feed(_events(3, 2 * MS, [1], [MS]))                     # ... a gap on every spikes frame
    c.feed(_events(4, 3 * MS, [1], [MS // 2]))                # older than the last watermark
    c.feed(_events(5, 4 * MS, [0], [0], topic=b"spike"))      # wrong topic
    c.feed(_events(6, 4 * MS, stream=7))                      # stream not a str
    c.feed(_events(7, 4 * MS, t_ns=4.0e6))                    # a float time: refused
    c.feed(_events(8, 5 * MS, ch=5))                          # not the session's channels
    c.finish()
    rules = _rules(c)
    assert rules["behaviour without x.names"] == "§3.3 behavior"
    assert rules["seq gap in the spikes family"] == "§4.2 Gaps and duplicates"
    assert "behaviour share" in c.violations["seq gap in the spikes family"].example
    assert rules["spike older than an earlier watermark"] == "§5.3 Watermarks"
    assert rules["topic b'spike'"] == "§6 Topics and streams"
    assert rules["stream not a msgpack str"] == "§2.2 How values are encoded"
    assert rules["header_invalid"] == "§2.1 Keys"
    assert rules["channel_mismatch"] == "§3.1 spikes.events"
    assert not c.ok


@pytest.mark.unit
def test_missing_required_keys_and_silence_are_violations():
    c = SourceCheck()
    f = _events(0, MS, [0], [0])
    h = msgpack.unpackb(f[1])
    del h["stream"]
    c.feed([f[0], msgpack.packb(h), *f[2:]])  # a session reads it as stream "" and accepts
    assert "spikes.events without stream" in _rules(c)
    silent = SourceCheck()
    silent.finish()
    assert not silent.ok and "no spikes messages" in _rules(silent)


def _check_source(endpoint: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "clients.cli", "check-source", endpoint, *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_simulated_source_passes_check_source():
    with SimThread(units=32, seed=3) as sim:
        r = _check_source(sim.endpoint, "--seconds", "3", "--channels", "32", "--bin-ms", "20",
                          "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["violations"] == []
    assert report["messages"]["spikes"] > 100 and report["messages"]["behavior"] > 100


def test_a_broken_publisher_fails_check_source_with_sections():
    """One counter for spikes and behaviour, no behaviour names, a stray topic."""
    port = free_port()
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    def publish():
        seq, t = 0, 0
        while not stop.is_set():
            t += MS
            sock.send_multipart(_behavior(seq, t, [0.0, 1.0], None))
            sock.send_multipart(_events(seq + 1, t, [0], [t - 1]))
            sock.send_multipart([b"lfp", b"raw"])
            seq += 2
            stop.wait(0.001)

    th = threading.Thread(target=publish, daemon=True)
    th.start()
    try:
        r = _check_source(f"tcp://127.0.0.1:{port}", "--seconds", "2")
    finally:
        stop.set()
        th.join(10)
        sock.close(0)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "VIOLATION §4.2 Gaps and duplicates: seq gap in the spikes family" in out
    assert "VIOLATION §3.3 behavior: behaviour without x.names" in out
    assert "VIOLATION §6 Topics and streams: topic b'lfp'" in out
