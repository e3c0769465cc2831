"""docs/protocol.md §6 and §8.2 on a live session (real server, real sockets on 127.0.0.1).

* Messages on a topic the session does not read are counted per topic in the status
  (they used to be filtered by the SUB socket and counted nowhere); a topic that only
  starts like the spikes topic is not the spikes topic.
* Every stim message carries ``in_force``: the last non-null ``cmd`` the session
  published, so a subscriber that joins late still knows what the stimulator is doing.
"""

from __future__ import annotations

import numpy as np

from clients.stream import StreamClient
from service.wire import protocol as P
from tests.helpers import SimThread, start_running, wait_for


def _stray(step: int):
    if step % 50:
        return []
    good = [bytes(f) for f in P.encode_events(b"spikes", "sim", 0, 0, 32, np.array([1]),
                                              np.array([0]))]
    return [[b"lfp", b"raw samples"], [b"spikesX", *good[1:]]]


def test_unmatched_topics_are_counted_and_stim_messages_say_what_is_in_force(server):
    c = server.client()
    with SimThread(units=32, seed=5, inject=_stray) as sim:
        sid, live = start_running(c, sim.endpoint, 32, "topics", 1.0, 60)
        sc = StreamClient(live["output_endpoint"], topics=(b"stim",))
        msgs = []
        try:
            while len(msgs) < 100:
                u = sc.recv(timeout_ms=10_000)
                assert u is not None, "no stim message within 10 s"
                msgs.append(u.fields)
        finally:
            sc.close()
        live = wait_for(lambda: (lambda x: x if x["unmatched_topics"].get("lfp", 0) >= 2 and
                                 x["unmatched_topics"].get("spikesX", 0) >= 2 else None)(
            c.session(sid)["live"]), 30, "stray topics counted")
        c.stop(sid)
    assert live["rejected"] == {}, live["rejected"]  # ignored, not refused
    last = None
    for m in msgs:  # disarmed: safe/hold; in_force = the last command actually sent
        assert set(m) >= {"status", "cmd", "in_force", "reasons", "bin", "in_seq", "armed"}
        if m["cmd"] is not None:
            last = m["cmd"]
        assert m["in_force"] is not None and (last is None or m["in_force"] == last)
        if m["cmd"] is None:  # nothing new: the stimulator keeps what in_force says
            assert m["status"] in ("hold", "refused")
            assert m["in_force"]["amplitude_ma"] == 0.0  # disarmed: off
    # running and disarmed, the policy's requests are refused: nothing new is sent
    assert any(m["cmd"] is None and m["status"] == "refused" for m in msgs), msgs[-3:]
