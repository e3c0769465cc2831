"""Write ``protocol_v1.json``: the golden vectors of docs/protocol.md (§10).

The frames are built here from readable descriptions with msgpack and raw
little-endian arrays (not with ``service.wire.protocol``), and every expected
decision, bin and counter is written by hand from the rules of docs/protocol.md:
this file states what a session must do; ``tests/test_protocol_vectors.py``
checks that the session core does it.

    .venv/bin/python tests/vectors/make_vectors.py    # rewrites protocol_v1.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

OUT = Path(__file__).with_name("protocol_v1.json")
MS = 1_000_000


def header(kind: str, seq: int, t_ns: int, stream: str = "rig", **fields: Any) -> dict:
    return {"v": 1, "kind": kind, "stream": stream, "seq": seq, "t_ns": t_ns, **fields}


def events(seq: int, t: int, ids: list[int], times: list[int], ch: int = 4,
           **override: Any) -> list[Any]:
    """An events message with watermark ``t``; ``override`` replaces header fields."""
    h = header("spikes.events", seq, t, ch=ch, dtype="<u2", n=len(ids)) | override
    return [b"spikes", h, np.array(ids, "<u2").tobytes(), np.array(times, "<i8").tobytes()]


def counts(seq: int, t_ns: int, values: list[float], bin_ns: int, dtype: str = "<u2",
           payload_dtype: str | None = None) -> list[Any]:
    """A counts message; the payload is written as ``payload_dtype`` (default: ``dtype``)."""
    h = header("spikes.counts", seq, t_ns, ch=len(values), dtype=dtype, bin_ns=bin_ns)
    return [b"spikes", h, np.array(values, payload_dtype or dtype).tobytes()]


def behavior(seq: int, t_ns: int, values: list[float], names: list[str],
             **override: Any) -> list[Any]:
    h = header("behavior", seq, t_ns, ch=len(values), dtype="<f8", x={"names": names})
    return [b"behavior", h | override, np.array(values, "<f8").tobytes()]


def wire(frames: list[Any]) -> list[bytes]:
    return [msgpack.packb(f, use_bin_type=True) if isinstance(f, dict) else f for f in frames]


def _readable(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"bin": v.hex()}
    if isinstance(v, dict):
        return {str(k): _readable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_readable(x) for x in v]
    return v


def message(frames: list[Any], expect: str, note: str = "") -> dict[str, Any]:
    raw = wire(frames)
    h = frames[1] if len(frames) > 1 and isinstance(frames[1], dict) else None
    m: dict[str, Any] = {"expect": expect, "frames_hex": [f.hex() for f in raw]}
    if h is not None:
        m["header"] = _readable(h)
    if note:
        m["note"] = note
    return m


def case(name: str, doc: str, session: dict[str, Any], messages: list[dict[str, Any]],
         bins: list[dict[str, Any]] | None = None, bin_count: int | None = None,
         counters: dict[str, int] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "doc": doc,
                         "session": {"reorder_tolerance_ns": 0,
                                     "timestamp_tolerance_ns": 50 * MS} | session,
                         "messages": messages}
    if bins is not None:
        c["bins"] = bins
    if bin_count is not None:
        c["bin_count"] = bin_count
    c["counters"] = counters or {}
    return c


def b(index: int, start_ns: int, counts_: list[float], truth: list[float] | None = None):
    return {"index": index, "start_ns": start_ns, "counts": counts_, "truth": truth}


S4 = {"channels": 4, "bin_ns": MS}

CASES = [
    case("events_bins_and_watermarks",
         "§5.2-§5.3: bins on multiples of bin_ns; a bin is decoded once a watermark passes "
         "its end; an empty message advances the watermark; a spike for a decoded bin is late",
         S4, [
             message(events(0, 1 * MS, [0, 1, 1], [100_000, 200_000, 900_000]), "accepted",
                     "completes bin 0 [0, 1 ms)"),
             message(events(1, 3_500_000, [3, 2], [2_500_000, 3_200_000]), "accepted",
                     "completes bins 1 (empty) and 2; bin 3 waits: 3.5 ms < its end"),
             message(events(2, 4 * MS, [], []), "accepted",
                     "n = 0: a watermark only, completes bin 3 (the trailing watermark)"),
             message(events(3, 4_500_000, [0], [3_900_000]), "accepted",
                     "its spike belongs to bin 3, already decoded: late, dropped"),
         ],
         bins=[b(0, 0, [1, 2, 0, 0]), b(1, MS, [0, 0, 0, 0]), b(2, 2 * MS, [0, 0, 0, 1]),
               b(3, 3 * MS, [0, 0, 1, 0])],
         counters={"late_events": 1, "gaps": 0, "frames": 4, "events": 6}),
    case("grid_origin",
         "§5.2: the first bin is the one containing the first message's earliest spike; "
         "its start is a multiple of bin_ns on the source clock",
         S4, [
             message(events(0, 2_500_000, [1], [2_300_000]), "accepted"),
             message(events(1, 4 * MS, [2], [3_999_999]), "accepted"),
         ],
         bins=[b(0, 2 * MS, [0, 1, 0, 0]), b(1, 3 * MS, [0, 0, 1, 0])],
         counters={"gaps": 0}),
    case("dtype_spellings",
         "§2.3: '|u1' (numpy's spelling) and '<u2' are accepted, type names and big-endian "
         "are not; §4.2: refused messages do not advance seq, so the next one shows a gap",
         S4, [
             message(counts(0, 0, [1, 0, 2, 0], MS, dtype="|u1"), "accepted"),
             message(counts(1, MS, [0, 1, 0, 0], MS, dtype="<u2"), "accepted"),
             message(counts(2, 2 * MS, [0, 0, 0, 1], MS, dtype="uint16", payload_dtype="<u2"),
                     "rejected:bad_dtype", "a type name is not a dtype spelling"),
             message(counts(3, 2 * MS, [0, 0, 0, 1], MS, dtype=">u2"), "rejected:bad_dtype",
                     "big-endian"),
             message(counts(4, 2 * MS, [0.5, 0, 0, 0], MS, dtype="<f4"), "accepted",
                     "seq 4 after the last accepted seq 1: a gap of 2"),
         ],
         bins=[b(0, 0, [1, 0, 2, 0]), b(1, MS, [0, 1, 0, 0]), b(2, 2 * MS, [0.5, 0, 0, 0])],
         counters={"gaps": 1, "missing_frames": 2}),
    case("seq_families_and_behaviour",
         "§4.1: spikes and behaviour count separately; §3.3: a bin's behaviour is the "
         "latest behaviour frame with t_ns <= the bin's end",
         S4, [
             message(behavior(0, 1 * MS, [0.5, -1.0], ["vx", "vy"]), "accepted"),
             message(events(0, 1 * MS, [0], [500_000]), "accepted"),
             message(behavior(1, 2 * MS, [1.0, 2.0], ["vx", "vy"]), "accepted"),
             message(events(1, 2 * MS, [], []), "accepted"),
             message(behavior(2, 5 * MS, [3.0, 4.0], ["vx", "vy"]), "accepted",
                     "applies from 5 ms: bins ending before it get no behaviour"),
             message(events(2, 4 * MS, [], []), "accepted"),
             message(events(3, 5 * MS, [], []), "accepted"),
         ],
         bins=[b(0, 0, [1, 0, 0, 0], [0.5, -1.0]), b(1, MS, [0, 0, 0, 0], [1.0, 2.0]),
               b(2, 2 * MS, [0, 0, 0, 0], None), b(3, 3 * MS, [0, 0, 0, 0], None),
               b(4, 4 * MS, [0, 0, 0, 0], [3.0, 4.0])],
         counters={"gaps": 0, "behavior_frames": 3}),
    case("one_counter_for_all_kinds",
         "§4.1: a publisher counting spikes and behaviour with one counter shows a gap on "
         "every spikes message; a repeated seq is a duplicate",
         S4, [
             message(behavior(0, 1 * MS, [0.0], ["x"]), "accepted"),
             message(events(1, 1 * MS, [0], [0]), "accepted"),
             message(behavior(2, 2 * MS, [0.0], ["x"]), "accepted"),
             message(events(3, 2 * MS, [1], [1_500_000]), "accepted", "gap: seq 2 missing"),
             message(events(3, 2 * MS, [1], [1_500_000]), "rejected:duplicate"),
         ],
         bins=[b(0, 0, [1, 0, 0, 0], [0.0]), b(1, MS, [0, 1, 0, 0], [0.0])],
         counters={"gaps": 1, "missing_frames": 1}),
    case("counts_narrow_offgrid_wide",
         "§5.4: counts are never split: narrow ones are summed into the bin containing "
         "their start, off-grid ones join the bin containing t_ns, wider ones are refused",
         {"channels": 2, "bin_ns": 2 * MS}, [
             message(counts(0, 0, [1, 0], MS), "accepted", "first half of bin 0"),
             message(counts(1, MS, [0, 2], MS), "accepted", "second half: bin 0 done"),
             message(counts(2, 3 * MS, [4, 4], 2 * MS), "accepted",
                     "off the grid: wholly in bin 1 [2, 4 ms); its watermark 5 ms ends it"),
             message(counts(3, 5 * MS, [9, 9], 4 * MS), "rejected:bin_mismatch"),
             message(counts(3, 6 * MS, [1, 1], 2 * MS), "accepted",
                     "seq 3 again: the refused one did not count"),
         ],
         bins=[b(0, 0, [1, 2]), b(1, 2 * MS, [4, 4]), b(2, 4 * MS, [0, 0]),
               b(3, 6 * MS, [1, 1])],
         counters={"gaps": 0}),
    case("rejections",
         "§7: one message per reason, then a valid one; nothing refused reaches a bin",
         {"channels": 4, "bin_ns": MS, "stream": "rig"}, [
             message([b"spikes"], "rejected:missing_frames"),
             message([b"spikes", b"\xc1", b"", b""], "rejected:header_unparseable"),
             message(events(0, MS, [0], [0], v=2), "rejected:bad_version"),
             message(events(0, MS, [0], [0], kind="spikes.event"), "rejected:unknown_kind"),
             message(events(0, MS, [0], [0], kind=b"spikes.events"), "rejected:unknown_kind",
                     "kind sent as msgpack bin, not str (§2.2)"),
             message(events(0, MS, [0], [0], t_ns=1.0e6), "rejected:header_invalid",
                     "t_ns as a float (§2.2)"),
             message([b"spikes", {k: v for k, v in events(0, MS, [0], [0])[1].items()
                                  if k != "seq"}, np.zeros(1, "<u2").tobytes(),
                      np.zeros(1, "<i8").tobytes()], "rejected:header_invalid",
                     "no seq (§2.1)"),
             message(events(0, MS, [0, 1], [0, 0], n=3), "rejected:payload_size"),
             message(events(0, MS, [4], [0]), "rejected:channel_range"),
             message(events(0, MS, [0], [MS + 1]), "rejected:event_time"),
             message(counts(0, 0, [0, -1, 0, 0], MS, dtype="<i2"), "rejected:negative_counts"),
             message(behavior(0, MS, [float("nan")], ["x"]), "rejected:nan"),
             message(events(0, MS, [0], [0], ch=5), "rejected:channel_mismatch"),
             message(events(0, MS, [0], [0], stream="other"), "rejected:wrong_stream"),
             message([b"stim", header("stim.command", 0, MS, x={"status": "sent"})],
                     "rejected:unknown_kind", "a session output sent to a session"),
             message(events(0, MS, [0, 3], [0, 999_999]), "accepted"),
             message(events(1, 2 * MS, [], []), "accepted"),
         ],
         bins=[b(0, 0, [1, 0, 0, 1]), b(1, MS, [0, 0, 0, 0])],
         counters={"frames": 2}),
    case("timestamp_backwards",
         "§5.1: a spikes message more than the timestamp tolerance (50 ms) older than the "
         "newest is refused; within it, accepted",
         S4, [
             message(events(0, 100 * MS, [0], [99 * MS]), "accepted"),
             message(events(1, 40 * MS, [], []), "rejected:timestamp_backwards"),
             message(events(2, 60 * MS, [], []), "accepted", "40 ms back: within tolerance"),
         ],
         bin_count=1, counters={"gaps": 1, "missing_frames": 1}),
]


def main() -> None:
    OUT.write_text(json.dumps({"protocol": 1, "doc": "docs/protocol.md §10",
                               "cases": CASES}, indent=1, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    print(f"wrote {OUT} ({len(CASES)} cases)")


if __name__ == "__main__":
    main()
