"""The golden vectors of docs/protocol.md §10, through the real session core.

``tests/vectors/protocol_v1.json`` gives messages byte for byte, the decision a session
must make for each (accepted, or rejected with its reason), the bins they must produce
and counters. The expectations were written by hand from the protocol page
(``tests/vectors/make_vectors.py``); here the one session core that every path drives
has to reproduce them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from service.loop.core import BinResult, CoreSink, SessionCore
from service.session.config import SessionConfig
from service.wire import protocol as P

pytestmark = pytest.mark.unit

VECTORS = json.loads((Path(__file__).parent / "vectors" / "protocol_v1.json")
                     .read_text(encoding="utf-8"))
CASES = VECTORS["cases"]


class Decisions(CoreSink):
    """What the core decided for each message, and the bins it produced."""

    def __init__(self) -> None:
        self.last = ""
        self.bins: list[dict[str, Any]] = []

    def accepted(self, frames: list[Any], msg: P.Message, recv_ns: int) -> None:
        self.last = "accepted"

    def rejected(self, frames: list[Any], reason: str, detail: str, recv_ns: int) -> None:
        self.last = f"rejected:{reason}"

    def bin(self, r: BinResult, recv_ns: int, in_seq: int) -> None:
        assert r.counts is not None
        self.bins.append({"index": r.index, "start_ns": r.start_ns,
                          "counts": r.counts.tolist(),
                          "truth": None if r.truth is None else np.asarray(r.truth).tolist()})


def _core(session: dict[str, Any], sink: CoreSink) -> SessionCore:
    cfg = SessionConfig(
        bin_ms=session["bin_ns"] / 1e6, record=False,
        source={"channels": session["channels"], "stream": session.get("stream"),
                "reorder_tolerance_ms": session["reorder_tolerance_ns"] / 1e6,
                "timestamp_tolerance_ms": session["timestamp_tolerance_ns"] / 1e6},
        stim={"policy": {}})
    assert cfg.bin_ns == session["bin_ns"]
    return SessionCore(cfg, sink)


def _from_readable(v: Any) -> Any:
    """Inverse of make_vectors._readable: ``{"bin": hex}`` stands for a msgpack bin value."""
    if isinstance(v, dict):
        if set(v) == {"bin"}:
            return bytes.fromhex(v["bin"])
        return {k: _from_readable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_from_readable(x) for x in v]
    return v


def test_the_vectors_cover_every_rejection_reason_the_doc_lists():
    seen = {m["expect"].split(":", 1)[1] for c in CASES for m in c["messages"]
            if m["expect"].startswith("rejected:")}
    assert seen == set(P.REJECT_REASONS)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_vector(case):
    sink = Decisions()
    core = _core(case["session"], sink)
    for i, m in enumerate(case["messages"]):
        frames = [bytes.fromhex(h) for h in m["frames_hex"]]
        if "header" in m:  # the readable header is the wire header: a reader can trust it
            assert msgpack.unpackb(frames[1], raw=False) == _from_readable(m["header"])
        sink.last = ""
        core.accept(frames, 0)
        assert sink.last == m["expect"], (i, m.get("note", ""), dict(core.rejected))
    if "bins" in case:
        assert sink.bins == case["bins"]
    if "bin_count" in case:
        assert len(sink.bins) == case["bin_count"]
    counters = dict(core.counters) | {"late_events": core.binner.late_events}
    for name, want in case["counters"].items():
        assert counters.get(name, 0) == want, (name, counters)
