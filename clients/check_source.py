"""``spikeloop check-source``: listen to a publisher and check it against docs/protocol.md.

The socket side of :class:`service.wire.conformance.SourceCheck`: a SUB socket on every
topic of the publisher, each message fed to the checker for ``seconds`` of wall time.
"""

from __future__ import annotations

import time

import zmq

from service.wire.conformance import SourceCheck


def listen(endpoint: str, seconds: float, check: SourceCheck,
           context: zmq.Context | None = None) -> SourceCheck:
    """Feed ``check`` every message ``endpoint`` publishes in the next ``seconds``."""
    sock = (context or zmq.Context.instance()).socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1_000_000)  # a checker that drops would report false gaps
    sock.setsockopt(zmq.SUBSCRIBE, b"")  # every topic: one the session ignores is a finding
    sock.connect(endpoint)
    try:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(max(1, int(left * 1000))):
                continue
            while True:
                try:
                    check.feed(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
    finally:
        sock.close(0)
    check.finish()
    return check


def format_report(endpoint: str, seconds: float, check: SourceCheck) -> list[str]:
    """The report as lines for a terminal: one per kind of violation, with its section."""
    m = check.messages
    lines = [f"{endpoint}: {seconds:g} s, {m['spikes']} spikes messages ({check.events} "
             f"events), {m['behavior']} behaviour, {m['rejected']} refused, "
             f"{m['unmatched_topic']} on other topics, {check.restarts} source restart(s)"]
    if check.ok:
        lines.append("OK: no violation of docs/protocol.md")
        return lines
    for v in check.violations.values():
        lines.append(f"VIOLATION {v.section}: {v.rule} ({v.count}x), e.g. {v.example}")
    lines.append(f"{len(check.violations)} kind(s) of violation: see docs/protocol.md at "
                 "the sections named")
    return lines
