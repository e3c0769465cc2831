"""Conformance of a publisher to docs/protocol.md, message by message, without sockets.

:class:`SourceCheck` takes the messages a publisher sends (``feed``) and collects every
way they break the protocol page, each with the section (§) it breaks. It is stricter
than a session: a session accepts, counts or tolerates some of these (a missing stream
id, a small step back in time, a sequence gap, a frame on another topic), but a
conforming publisher produces none of them. ``spikeloop check-source`` drives it from
a SUB socket; tests feed it frames directly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack

from service.wire import protocol as P

#: the section of docs/protocol.md that each rejection reason breaks
REASON_SECTION = {
    "missing_frames": "§3 Input kinds",
    "header_unparseable": "§2.2 How values are encoded",
    "header_invalid": "§2.1 Keys",
    "bad_version": "§2.1 Keys",
    "unknown_kind": "§3 Input kinds",
    "bad_dtype": "§2.3 Dtype spellings",
    "payload_size": "§2.2 How values are encoded",
    "channel_range": "§3.1 spikes.events",
    "event_time": "§5.3 Watermarks",
    "negative_counts": "§3.2 spikes.counts",
    "nan": "§3.2-§3.3 payload values",
    "duplicate": "§4.2 Gaps and duplicates",
    "timestamp_backwards": "§5.1 The source clock",
    "wrong_stream": "§6 Topics and streams",
    "channel_mismatch": "§3.1 spikes.events",
    "bin_mismatch": "§5.4 Counts messages on the grid",
}
assert set(REASON_SECTION) == set(P.REJECT_REASONS)

#: header keys a message of each input kind must carry (§2.1)
REQUIRED = {
    P.KIND_EVENTS: ("v", "kind", "stream", "seq", "t_ns", "ch", "dtype", "n"),
    P.KIND_COUNTS: ("v", "kind", "stream", "seq", "t_ns", "ch", "dtype", "bin_ns"),
    P.KIND_BEHAVIOR: ("v", "kind", "stream", "seq", "t_ns", "ch", "dtype"),
}
_INT_KEYS = ("v", "seq", "t_ns", "ch", "n", "bin_ns", "ep")
_STR_KEYS = ("kind", "stream", "dtype")


@dataclass(slots=True)
class Violation:
    section: str
    rule: str  # a short name: one line of the report per rule
    count: int = 0
    example: str = ""


@dataclass
class _Stream:
    spikes: P.SequenceTracker
    channels: int | None = None
    watermark: int | None = None
    behavior_seq: int | None = None
    names: list[str] | None = None


@dataclass
class SourceCheck:
    """Collects violations of docs/protocol.md in the messages given to :meth:`feed`.

    ``channels`` and ``bin_ns`` (optional) are the session's: frames that such a session
    would refuse are violations too. ``reorder_tolerance_ns`` is the session's.
    """

    spikes_topic: bytes = b"spikes"
    behavior_topic: bytes = b"behavior"
    channels: int | None = None
    bin_ns: int | None = None
    reorder_tolerance_ns: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    violations: dict[str, Violation] = field(default_factory=dict)
    events: int = 0
    restarts: int = 0
    _streams: dict[str, _Stream] = field(default_factory=dict)  # spikes family, by stream
    _behaviors: dict[str, _Stream] = field(default_factory=dict)  # behaviour, by stream

    # ------------------------------------------------------------------ report
    def violate(self, section: str, rule: str, example: str) -> None:
        v = self.violations.get(rule)
        if v is None:
            v = self.violations[rule] = Violation(section, rule, 0, example)
        v.count += 1

    @property
    def ok(self) -> bool:
        return not self.violations and self.messages["spikes"] > 0

    def finish(self) -> None:
        """After the last message: a publisher that sent no spikes is not one."""
        if self.messages["spikes"] == 0:
            self.violate("§1 Message layout", "no spikes messages",
                         f"no spikes.events or spikes.counts message on topic "
                         f"{self.spikes_topic!r} in the listening time "
                         f"({sum(self.messages.values())} message(s) of any kind)")

    def report(self) -> dict[str, Any]:
        return {"ok": self.ok, "messages": dict(self.messages), "events": self.events,
                "restarts": self.restarts,
                "violations": [{"section": v.section, "rule": v.rule, "count": v.count,
                                "example": v.example} for v in self.violations.values()]}

    # ------------------------------------------------------------------ input
    def feed(self, frames: list[Any]) -> None:
        """One multipart message as received (bytes-like frames)."""
        frames = [bytes(getattr(f, "buffer", f)) for f in frames]
        topic = frames[0] if frames else b""
        if topic not in (self.spikes_topic, self.behavior_topic):
            self.messages["unmatched_topic"] += 1
            self.violate("§6 Topics and streams", f"topic {topic!r}",
                         f"a message on topic {topic!r}: a session reads only "
                         f"{self.spikes_topic!r} and {self.behavior_topic!r} (exact match) "
                         "and ignores it")
            return
        raw = self._raw_header(frames)
        try:
            msg = P.decode(frames)
        except P.ProtocolError as exc:
            self.messages["rejected"] += 1
            self.violate(REASON_SECTION[exc.reason], exc.reason, exc.detail)
            return
        h = msg.header
        if raw is not None:
            self._check_keys(h.kind, raw)
        if h.kind in (P.KIND_EVENTS, P.KIND_COUNTS):
            self.messages["spikes"] += 1
            if topic != self.spikes_topic:
                self.violate("§6 Topics and streams", "spikes kind on the behaviour topic",
                             f"{h.kind} seq {h.seq} on topic {topic!r}")
            self._spikes(msg)
        elif h.kind == P.KIND_BEHAVIOR:
            self.messages["behavior"] += 1
            if topic != self.behavior_topic:
                self.violate("§6 Topics and streams", "behavior on the spikes topic",
                             f"behavior seq {h.seq} on topic {topic!r}")
            self._behavior(msg)
        else:
            self.messages["rejected"] += 1
            self.violate("§3 Input kinds", "output kind from a source",
                         f"{h.kind} is a session output; a source sends spikes.events, "
                         "spikes.counts and behavior")

    @staticmethod
    def _raw_header(frames: list[bytes]) -> dict | None:
        if len(frames) < 2:
            return None
        try:
            d = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 - decode() reports it with its reason
            return None
        return d if isinstance(d, dict) else None

    def _check_keys(self, kind: str, raw: dict) -> None:
        missing = [k for k in REQUIRED.get(kind, ()) if k not in raw]
        if missing:
            self.violate("§2.1 Keys", f"{kind} without {', '.join(missing)}",
                         f"{kind} header keys {sorted(map(str, raw))}; required: "
                         f"{', '.join(REQUIRED[kind])}")
        for k in _STR_KEYS:
            if k in raw and not isinstance(raw[k], str):
                self.violate("§2.2 How values are encoded", f"{k} not a msgpack str",
                             f"{k} = {raw[k]!r} ({type(raw[k]).__name__})")
        for k in _INT_KEYS:
            if k in raw and (isinstance(raw[k], bool) or not isinstance(raw[k], int)):
                self.violate("§2.2 How values are encoded", f"{k} not an integer",
                             f"{k} = {raw[k]!r} ({type(raw[k]).__name__})")

    def _stream(self, name: str) -> _Stream:
        s = self._streams.get(name)
        if s is None:
            # no step back at all: a session tolerates some, a publisher makes none
            s = self._streams[name] = _Stream(P.SequenceTracker(tolerance_ns=0))
        return s

    def _spikes(self, msg: P.Message) -> None:
        h = msg.header
        s = self._stream(h.stream)
        if s.spikes.is_restart(h):
            self.restarts += 1
            s.spikes.reset(h.epoch)
            s.watermark = None
        try:
            missed = s.spikes.check(h)
        except P.ProtocolError as exc:
            if exc.reason == "duplicate":
                self.violate(REASON_SECTION["duplicate"], "duplicate seq", exc.detail)
            else:
                self.violate("§5.1 The source clock", "t_ns went back", exc.detail)
            return
        if missed:
            hint = (" (does the behaviour share the spikes' counter? §4.1)"
                    if self.messages["behavior"] else "")
            self.violate("§4.2 Gaps and duplicates", "seq gap in the spikes family",
                         f"stream {h.stream!r}: seq {h.seq} after {h.seq - missed - 1}{hint}")
        if s.channels is not None and h.channels != s.channels:
            self.violate("§3.1 spikes.events", "ch changed",
                         f"stream {h.stream!r}: ch {h.channels} after {s.channels}")
        s.channels = h.channels
        if self.channels is not None and h.channels != self.channels:
            self.violate(REASON_SECTION["channel_mismatch"], "channel_mismatch",
                         f"ch {h.channels}, the session has {self.channels}")
        earliest: int | None
        if h.kind == P.KIND_COUNTS:
            watermark = h.t_ns + h.bin_ns
            if self.bin_ns is not None and h.bin_ns > self.bin_ns:
                self.violate(REASON_SECTION["bin_mismatch"], "bin_mismatch",
                             f"counts of {h.bin_ns} ns, the session bin is {self.bin_ns} ns")
            earliest = h.t_ns
        else:
            self.events += h.n
            watermark = h.t_ns
            earliest = int(msg.times.min()) if h.n and msg.times is not None else None
        if s.watermark is not None and earliest is not None and \
                earliest < s.watermark - self.reorder_tolerance_ns:
            self.violate("§5.3 Watermarks", "spike older than an earlier watermark",
                         f"stream {h.stream!r} seq {h.seq}: spike at {earliest} ns after a "
                         f"watermark of {s.watermark} ns: a session drops it as late")
        s.watermark = watermark if s.watermark is None else max(s.watermark, watermark)

    def _behavior(self, msg: P.Message) -> None:
        h = msg.header
        base = h.stream[:-len(".behavior")] if h.stream.endswith(".behavior") else h.stream
        spikes_streams = set(self._streams)
        if spikes_streams and base not in spikes_streams:
            self.violate("§6 Topics and streams", "behaviour stream id",
                         f"behaviour stream {h.stream!r}; spikes streams "
                         f"{sorted(spikes_streams)}: use the spikes stream id or "
                         "'<id>.behavior'")
        s = self._behaviors.get(h.stream)
        if s is None:
            s = self._behaviors[h.stream] = _Stream(P.SequenceTracker())
        if s.behavior_seq is not None and h.seq != s.behavior_seq + 1 and h.seq != 0:
            self.violate("§4.1 Seq families", "seq gap in the behaviour family",
                         f"stream {h.stream!r}: behaviour seq {h.seq} after {s.behavior_seq}")
        s.behavior_seq = h.seq
        names = h.extra.get("names")
        if names is None:
            self.violate("§3.3 behavior", "behaviour without x.names",
                         f"behaviour seq {h.seq} has no x.names: outputs get no names")
            return
        if not isinstance(names, list) or len(names) != h.channels or \
                not all(isinstance(n, str) for n in names):
            self.violate("§3.3 behavior", "x.names not ch strings",
                         f"x.names = {names!r} for ch = {h.channels}")
            return
        if s.names is not None and names != s.names:
            self.violate("§3.3 behavior", "x.names changed",
                         f"x.names {names} after {s.names}: the first frame fixes them")
        s.names = s.names or names
