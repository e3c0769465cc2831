"""Session scheduling: SCHED_FIFO and pinning are applied, or their refusal is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO

SCRIPT = """
import os, json, threading, time
import zmq
from service.session.config import SessionConfig
from service.session.realtime import apply_layout
layout = apply_layout(SessionConfig(cpu=0, rt_priority=10))
print(json.dumps(layout.to_dict()))
fifo = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
print(fifo, sorted(os.sched_getaffinity(0)))
pub = zmq.Context.instance().socket(zmq.PUB)  # starts libzmq's I/O thread
pub.bind("inproc://x")
helper = threading.Thread(target=time.sleep, args=(1.0,))  # e.g. a writer thread
helper.start()
time.sleep(0.2)
policies = {}
for tid in os.listdir("/proc/self/task"):
    name = open(f"/proc/self/task/{tid}/comm").read().strip()
    policies[name if tid != str(helper.native_id) else "helper"] = os.sched_getscheduler(int(tid))
print(json.dumps(policies))
helper.join()
"""


def _items(layout: dict) -> dict[str, dict]:
    return {i["item"]: i for i in layout["items"]}


def test_layout_applies_fifo_and_pinning_or_reports_the_refusal():
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out, state, threads = r.stdout.strip().splitlines()
    items = _items(json.loads(out))
    policies = json.loads(threads)
    assert items["cpu"]["state"] == "applied" and sorted(os.sched_getaffinity(0))
    sched = items["scheduling"]
    if sched["state"] == "applied":
        assert sched["detail"] == "SCHED_FIFO 10" and state == "True [0]"
        assert items["zmq_io_thread"]["state"] == "applied"
        assert policies["ZMQbg/IO/0"] == os.SCHED_FIFO  # the I/O thread carries every hop
        assert policies["helper"] == os.SCHED_OTHER  # never holds the loop off its core
    else:  # no CAP_SYS_NICE here: said plainly, with how to grant it; the process runs on
        assert sched["state"] == "refused" and "CAP_SYS_NICE" in sched["grant"]
        assert state == "False [0]"


OPT_OUT = """
import os, json
from service.session.config import SessionConfig
from service.session.realtime import apply_layout
layout = apply_layout(SessionConfig(realtime=False))
print(json.dumps(layout.to_dict()))
print(os.sched_getscheduler(0) == os.SCHED_OTHER)
"""


def test_realtime_false_is_an_ordinary_process():
    r = subprocess.run([sys.executable, "-c", OPT_OUT], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out, other = r.stdout.strip().splitlines()
    items = _items(json.loads(out))
    assert other == "True"
    assert {i["state"] for i in items.values()} == {"off"}
    assert items["scheduling"]["detail"] == "SCHED_OTHER (realtime: false)"


QOS = """
import os, struct
from service.session.realtime import hold_cpu_dma_latency
fd, item = hold_cpu_dma_latency(0)
print(item.state.value, item.detail, item.grant)
if fd is not None:  # the kernel reports the strictest request held by anyone
    with open("/dev/cpu_dma_latency", "rb") as f:
        print(struct.unpack("i", f.read(4))[0])
"""


def test_cpu_dma_latency_is_held_or_its_refusal_reported():
    r = subprocess.run([sys.executable, "-c", QOS], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    if lines[0].startswith("refused"):
        assert "cpu_dma_latency" in lines[0] and "root" in lines[0]
    else:
        assert lines == ["applied cpu_dma_latency 0 us ", "0"]


@pytest.mark.unit
def test_sessions_are_spread_over_the_cores_first_away_from_cpu0():
    from service.session.realtime import pick_cpu

    assert pick_cpu([0], []) is None  # one core: nothing to pin to
    assert pick_cpu([0, 1], []) == 1
    assert pick_cpu([0, 1], [1]) == 0
    assert pick_cpu([0, 1], [1, 0]) == 1
    assert pick_cpu([0, 1, 2, 3], [3, 2, None]) == 1


def _bench_common():
    sys.path.insert(0, str(REPO / "bench"))
    import common

    return common


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe runs SCHED_FIFO: needs root")
def test_platform_probe_runs_one_process_per_cpu_and_stops_clean():
    probe = _bench_common().PlatformProbe(priority=1).start()
    time.sleep(1.0)
    stalls = probe.stop()
    assert len(stalls) == len(os.sched_getaffinity(0))
    assert all(s.ndim == 2 and s.shape[1] == 2 and (s[:, 1] > 200_000).all() for s in stalls)
    assert all(proc.poll() is not None for proc, _ in probe._procs)


def test_a_missed_bin_is_put_down_to_a_stall_only_if_they_overlap():
    overlaps_stall = _bench_common().overlaps_stall
    stalls = [np.array([[10_000_000, 2_000_000]], np.int64), np.zeros((0, 2), np.int64)]
    start = np.array([9_500_000, 13_000_000])
    end = np.array([10_500_000, 14_000_000])
    assert overlaps_stall(start, end, stalls, 500_000).tolist() == [True, False]
    assert overlaps_stall(start, end, stalls, 3_000_000).tolist() == [False, False]


def test_status_and_metrics_show_the_layout_and_missed_bins_by_cause(server):
    """A session created with no real-time setting gets what the host permits, and says so
    in its status and /metrics; its missed bins are split by cause."""
    import re

    from service.session.realtime import ItemState, probe_host
    from tests.helpers import SimThread, wait_for

    permitted = {i.name: i.state is ItemState.APPLIED for i in probe_host()}
    c = server.client()
    with SimThread(units=48, seed=3) as sim:
        sid = c.create_session({"name": "rt", "bin_ms": 5,
                                "source": {"endpoint": sim.endpoint, "channels": 48},
                                "decoder": {"type": "kalman", "calibration_s": 1.0}})["id"]
        c.start(sid)
        wait_for(lambda: c.session(sid)["live"]["state"] == "running", 60, "running")
        live = c.session(sid)["live"]
        items = {i["item"]: i for i in live["realtime"]["items"]}
        assert set(items) == {"cpu", "scheduling", "cpu_dma_latency", "zmq_io_thread"}
        for name in ("scheduling", "cpu_dma_latency"):  # asked for by default
            assert items[name]["state"] in ("applied", "refused")
        for item in items.values():
            assert item["state"] != "refused" or item["grant"], item  # how to grant it
        if permitted["scheduling"]:
            assert items["scheduling"]["detail"] == "SCHED_FIFO 50"
            assert "SCHED_FIFO 50" in live["scheduling"]
        if permitted["cpu"]:  # a core of its own, away from CPU 0 for the first session
            assert items["cpu"]["detail"] == f"cpu {max(os.sched_getaffinity(0))}"
        missed = live["missed"]
        assert missed["missed_bins"] == missed["platform"] + missed["software"]
        # a scrape asks each session with a 300 ms timeout: on a busy machine, ask again
        def scrape() -> str | None:
            text = c.prometheus()
            return text if f'session="{sid}"' in text else None

        text = wait_for(scrape, 30, "the session in /metrics")
        for cause in ("platform", "software"):
            assert re.search(rf'^spikeloop_missed_bins_total\{{cause="{cause}",session="{sid}"\}}'
                             r" \S+$", text, re.M), cause
        state = items["scheduling"]["state"]  # (the exposition sorts the labels)
        assert re.search(rf'^spikeloop_realtime_layout\{{item="scheduling",session="{sid}",'
                         rf'state="{state}"\}} 1\.0$', text, re.M)
        c.stop(sid)
