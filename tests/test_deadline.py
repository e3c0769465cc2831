"""Missed bins are put down to the software or the platform, through the real runner.

A real :class:`SessionRunner` (its ZeroMQ sockets on ipc://, its poll loop in a thread)
receives counts frames from a real PUB socket. Each fault is injected where it happens
in production: a decoder that burns CPU past the bin (software), a decoder whose thread
loses the CPU for longer than a bin (platform: the wall clock runs, the thread's CPU
clock does not), and frames that wait in the socket while the loop is away (a late wake).
No wall-clock threshold is asserted: only which counter moved.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from decoders.base import build_decoder
from service.session.config import SessionConfig
from service.session.runner import SessionRunner
from service.wire import protocol as P

CH = 8
# 5 ms bins: on a loaded 2-CPU machine an ordinary bin's own work can take ~1 ms of CPU;
# the faults injected below are several bins long, far from that
BIN_MS = 5
BIN_NS = BIN_MS * 1_000_000


def _runner(tmp: Path) -> tuple[SessionRunner, zmq.Socket]:
    # gc_freeze as in production: a collection pass in the loop thread is CPU the loop
    # itself uses (a *software* miss), which would blur what these tests inject
    cfg = SessionConfig(name="deadline", bin_ms=BIN_MS, gc_freeze=True, record=False,
                        source={"channels": CH, "endpoint": f"ipc://{tmp}/src"},
                        decoder={"type": "kalman"}, output={"endpoint": f"ipc://{tmp}/out"})
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(cfg.source.endpoint)
    r = SessionRunner("deadline", cfg, f"ipc://{tmp}/ctl", tmp)
    rng = np.random.default_rng(0)
    dec = build_decoder("kalman")
    dec.fit(rng.poisson(1.0, (400, CH)).astype(float), rng.normal(size=(400, 4)), bin_ms=BIN_MS,
            output_names=["x", "y", "vx", "vy"])
    r.core.begin(dec)
    return r, pub


def _frame(seq: int) -> list:
    counts = np.ones(CH, np.uint16)
    return P.encode_array(b"spikes", P.KIND_COUNTS, "", seq, seq * BIN_NS, counts, BIN_NS)


def _run(tmp: Path, step_delay, send, late_wake: bool = False) -> dict:
    """Start the loop, wait until it decodes, install the fault, send, return the counters.

    ``late_wake``: the next time the loop's poll returns with input, its thread sleeps
    first (it was not given the CPU), so frames sent meanwhile queue in the socket."""
    r, pub = _runner(tmp)
    th = threading.Thread(target=r.run, daemon=True)
    th.start()
    try:
        seq, deadline = 0, time.monotonic() + 20
        while r.core.counters["bins"] < 3:  # the SUB has joined and the loop decodes
            assert time.monotonic() < deadline, "the session never decoded a bin"
            pub.send_multipart(_frame(seq))
            seq += 1
            time.sleep(0.01)
        time.sleep(0.05)
        before = dict(r.core.counters)
        if step_delay is not None:
            step = r.core.decoder.step

            def slow_step(counts):
                step_delay()
                return step(counts)

            r.core.decoder.step = slow_step
        if late_wake:
            poll, pending = r.poller.poll, [True]

            def late_poll(timeout=None):
                events = poll(timeout)
                if events and pending:
                    pending.clear()
                    time.sleep(20 * BIN_NS / 1e9)
                return events

            r.poller.poll = late_poll
        first = seq
        seq = send(pub, seq)
        deadline = time.monotonic() + 20
        while r.core.counters["bins"] < before["bins"] + (seq - first):  # a bin per frame
            assert time.monotonic() < deadline, "frames did not all arrive"
            time.sleep(0.01)
        time.sleep(0.05)  # the last bin's command and accounting are done
        after = dict(r.core.counters)
        return {k: after.get(k, 0) - before.get(k, 0) for k in
                ("bins", "missed_bins", "missed_bins_platform", "missed_bins_software",
                 "late_wakes")} | {"status": r.status()["missed"]}
    finally:
        r.stop_requested = True
        th.join(10)
        pub.close(0)
        gc.enable()  # run() froze and disabled the collector of this (the test) process
        gc.unfreeze()
        assert not th.is_alive()


def _paced(n: int):
    def send(pub, seq):
        for _ in range(n):
            pub.send_multipart(_frame(seq))
            seq += 1
            time.sleep(0.05)  # far apart: no frame ever waits for the loop
        return seq
    return send


def _burn(ns: int):
    def delay():
        t = time.thread_time_ns()
        while time.thread_time_ns() - t < ns:
            pass
    return delay


def test_a_decoder_that_overruns_the_bin_is_a_software_miss(tmp_path):
    d = _run(tmp_path, _burn(3 * BIN_NS), _paced(5))
    assert d["bins"] == 5
    assert d["missed_bins"] == d["missed_bins_software"] == 5
    assert d["missed_bins_platform"] == 0 and d["late_wakes"] == 0
    assert d["status"]["software"] >= 5


def test_losing_the_cpu_mid_bin_is_a_platform_miss(tmp_path):
    # Sleeping stands in for preemption: wall time passes, the thread gets no CPU.
    d = _run(tmp_path, lambda: time.sleep(3 * BIN_NS / 1e9), _paced(5))
    assert d["bins"] == 5
    assert d["missed_bins"] == d["missed_bins_platform"] == 5
    assert d["missed_bins_software"] == 0


def test_frames_that_waited_for_a_late_wake_are_platform_misses(tmp_path):
    def paced(pub, seq):  # a frame every bin, as a source sends them
        for _ in range(4):
            pub.send_multipart(_frame(seq))
            seq += 1
            time.sleep(BIN_NS / 1e9)
        return seq

    d = _run(tmp_path, None, paced, late_wake=True)
    assert d["late_wakes"] == 1
    assert d["missed_bins_software"] == 0
    assert d["missed_bins"] == d["missed_bins_platform"] >= 1
    assert d["status"]["late_wakes"] >= 1


@pytest.mark.unit
def test_missed_bins_add_up(tmp_path):
    from collections import Counter

    from service.session.deadline import DeadlineAccounting

    c: Counter[str] = Counter()
    acc = DeadlineAccounting(BIN_NS, c)
    acc.start_wake(10 * BIN_NS)
    acc.start_frame(10 * BIN_NS)
    acc.bin_sent(0, BIN_NS // 2)  # on time
    acc.bin_sent(0, 2 * BIN_NS)  # late, little CPU used: platform
    acc.end_frame(0)
    acc.end_wake()
    assert c["missed_bins"] == c["missed_bins_platform"] == 1
    assert acc.summary()["software"] == 0
