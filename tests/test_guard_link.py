"""StimulatorLink with limits: what the stimulator applies passes the physical monitor."""

from __future__ import annotations

import time

import zmq

from clients.stimulator import StimulatorLink
from service.wire import protocol as P
from stim.commands import DBSCommand, command_to_dict
from stim.limits import SafetyLimits


def _until(fn, timeout_s: float = 10.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if fn():
            return True
    raise AssertionError("timed out")


def test_link_applies_only_what_the_monitor_admits():
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    applied: list[dict] = []
    link = StimulatorLink(f"tcp://127.0.0.1:{port}", on_command=applied.append,
                          limits=SafetyLimits(), modality="dbs")
    try:
        def send(amp: float, seq: int) -> None:
            cmd = command_to_dict(DBSCommand(amplitude_ma=amp, contacts=[1]))
            pub.send_multipart(P.encode_control(b"stim", P.KIND_STIM, "s", seq, 0,
                                                {"status": "sent", "cmd": cmd}))

        _until(lambda: (send(0.0, 1), link.poll(20), applied)[2])
        send(3.0, 2)  # a jump no ramp allows: one step is at most slew x ramp_step_ms
        _until(lambda: (link.poll(20), len(applied) >= 2)[1])
        assert applied[-1]["amplitude_ma"] <= 10.0 * 0.020 + 1e-9
        assert applied[-1]["modality"] == "dbs" and applied[-1]["contacts"] == [1]
        assert link.interventions >= 1 and link.monitor.by_limit["slew"] >= 1
        assert link.current["amplitude_ma"] == 3.0  # what the session asked
        assert link.applied == applied[-1]  # what the stimulator was told
    finally:
        link.close()
        pub.close(0)
