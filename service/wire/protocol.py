"""Wire protocol v1: the one place frames are encoded and decoded.

A message is a ZeroMQ multipart ``[topic, header, payload...]``:

* ``topic``   - bytes used for SUB filtering (``b"spikes"``, ``b"behavior"``, ...).
* ``header``  - a msgpack map (see :class:`Header`), small and self-describing.
* ``payload`` - zero or more raw little-endian arrays, read with ``numpy.frombuffer``
  (no copy). The header says how many elements and of which dtype.

Every way a frame can be wrong has its own reason string (``REJECT_REASONS``),
so a session can count rejections by reason and keep going. ``docs/protocol.md``
is the language-neutral description of the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

VERSION = 1

KIND_EVENTS = "spikes.events"
KIND_COUNTS = "spikes.counts"
KIND_DECODED = "decoded"
KIND_STIM = "stim.command"
KIND_HEARTBEAT = "heartbeat"
KIND_BEHAVIOR = "behavior"
KINDS = (KIND_EVENTS, KIND_COUNTS, KIND_DECODED, KIND_STIM, KIND_HEARTBEAT, KIND_BEHAVIOR)

#: payload dtypes a peer may use, per kind (all little-endian).
COUNT_DTYPES = ("<u1", "<u2", "<u4", "<i2", "<i4", "<f4", "<f8")
ID_DTYPES = ("<u2", "<u4")
FLOAT_DTYPES = ("<f4", "<f8")
#: numpy writes one-byte types without a byte order (``np.dtype("u1").str == "|u1"``):
#: a peer may send either spelling, and the decoder reads them as the same type.
DTYPE_ALIASES = {"|u1": "<u1"}

REJECT_REASONS = (
    "missing_frames",
    "header_unparseable",
    "header_invalid",
    "bad_version",
    "unknown_kind",
    "bad_dtype",
    "payload_size",
    "channel_range",
    "negative_counts",
    "nan",
    "duplicate",
    "timestamp_backwards",
    "wrong_stream",
    "channel_mismatch",
    "bin_mismatch",
    "event_time",
)

MAX_CHANNELS = 65536
MAX_BIN_NS = 60 * 1_000_000_000  # a counts frame wider than a minute is not a bin
MAX_TIME_NS = 1 << 62  # ~146 years of source clock; keeps all time arithmetic in int64


class ProtocolError(ValueError):
    """A frame that cannot be accepted. ``reason`` is one of ``REJECT_REASONS``."""

    def __init__(self, reason: str, detail: str):
        assert reason in REJECT_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Header:
    """The msgpack header. Short keys on the wire, readable names here."""

    kind: str
    stream: str
    seq: int
    t_ns: int
    channels: int = 0
    dtype: str = ""
    bin_ns: int = 0
    n: int = 0
    version: int = VERSION
    epoch: int = 0  # changes when the publisher restarts (0: not sent)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        d = {
            "v": self.version,
            "kind": self.kind,
            "stream": self.stream,
            "seq": self.seq,
            "t_ns": self.t_ns,
            "ch": self.channels,
            "dtype": self.dtype,
            "bin_ns": self.bin_ns,
            "n": self.n,
        }
        if self.epoch:
            d["ep"] = self.epoch
        if self.extra:
            d["x"] = self.extra
        return d


@dataclass(slots=True)
class Message:
    """A decoded frame. Arrays are read-only views on the received buffers."""

    topic: bytes
    header: Header
    ids: np.ndarray | None = None  # spikes.events: channel/unit ids
    times: np.ndarray | None = None  # spikes.events: int64 ns on the source clock
    values: np.ndarray | None = None  # counts / decoded / behavior

    def events(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, times) of a spikes.events frame."""
        if self.ids is None or self.times is None:
            raise ProtocolError("unknown_kind", f"{self.header.kind} frame has no events")
        return self.ids, self.times

    def array(self) -> np.ndarray:
        """The values of a counts, decoded or behaviour frame."""
        if self.values is None:
            raise ProtocolError("unknown_kind", f"{self.header.kind} frame has no values")
        return self.values


# --------------------------------------------------------------------------- encode


def _pack(header: Header) -> bytes:
    return msgpack.packb(header.to_wire(), use_bin_type=True)


def encode_events(
    topic: bytes,
    stream: str,
    seq: int,
    t_ns: int,
    channels: int,
    ids: np.ndarray,
    times: np.ndarray,
    extra: dict[str, Any] | None = None,
    epoch: int = 0,
) -> list[bytes | memoryview]:
    """Spike events: ids (uint16/uint32) and times (int64 ns, all <= ``t_ns``).

    ``t_ns`` is the source clock when the message was sent: a promise that no
    later message carries an event older than ``t_ns`` minus the reorder tolerance.
    """
    ids = np.ascontiguousarray(ids, dtype="<u4" if channels > 65535 else "<u2")
    times = np.ascontiguousarray(times, dtype="<i8")
    if ids.shape != times.shape:
        raise ValueError(f"ids and times differ in length ({ids.size} vs {times.size})")
    h = Header(KIND_EVENTS, stream, seq, t_ns, channels, ids.dtype.str, n=int(ids.size),
               epoch=epoch, extra=extra or {})
    return [topic, _pack(h), ids.data, times.data]


def encode_array(
    topic: bytes,
    kind: str,
    stream: str,
    seq: int,
    t_ns: int,
    values: np.ndarray,
    bin_ns: int = 0,
    extra: dict[str, Any] | None = None,
    epoch: int = 0,
) -> list[bytes | memoryview]:
    """One array payload: spike counts for one bin, a decoded vector, behaviour."""
    values = np.ascontiguousarray(values)
    if values.dtype.byteorder == ">":
        values = values.astype(values.dtype.newbyteorder("<"))
    dtype = values.dtype.str.replace("|", "<")  # one-byte types: numpy says '|u1'
    h = Header(kind, stream, seq, t_ns, int(values.size), dtype, bin_ns=bin_ns,
               n=int(values.size), epoch=epoch, extra=extra or {})
    return [topic, _pack(h), values.data]


def encode_control(
    topic: bytes, kind: str, stream: str, seq: int, t_ns: int, extra: dict[str, Any]
) -> list[bytes]:
    """Header-only messages: ``stim.command`` and ``heartbeat`` carry their fields in ``x``."""
    h = Header(kind, stream, seq, t_ns, extra=extra)
    return [topic, _pack(h)]


# --------------------------------------------------------------------------- decode


def _as_bytes(frame: Any) -> memoryview:
    # zmq.Frame exposes .buffer; bytes/memoryview pass straight through.
    buf = getattr(frame, "buffer", frame)
    return memoryview(buf)


def _header(raw: memoryview) -> Header:
    try:
        d = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError("header_unparseable", f"header is not msgpack ({exc})") from None
    if not isinstance(d, dict):
        raise ProtocolError("header_unparseable", "header must be a msgpack map")
    if d.get("v") != VERSION:
        raise ProtocolError("bad_version", f"protocol version {d.get('v')!r}, expected {VERSION}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise ProtocolError("unknown_kind", f"kind {kind!r} is not one of {', '.join(KINDS)}")
    try:
        h = Header(
            kind=kind,
            stream=str(d.get("stream", "")),
            seq=_int(d, "seq"),
            t_ns=_int(d, "t_ns"),
            channels=_int(d, "ch", 0),
            dtype=DTYPE_ALIASES.get(dt := str(d.get("dtype", "")), dt),
            bin_ns=_int(d, "bin_ns", 0),
            n=_int(d, "n", 0),
            epoch=_int(d, "ep", 0),
            extra=d.get("x") or {},
        )
    except (TypeError, ValueError) as exc:
        raise ProtocolError("header_invalid", str(exc)) from None
    if not isinstance(h.extra, dict):
        raise ProtocolError("header_invalid", "'x' must be a map")
    if h.seq < 0 or h.n < 0 or h.bin_ns < 0:
        raise ProtocolError("header_invalid", "seq, n and bin_ns must be >= 0")
    if not 0 <= h.t_ns < MAX_TIME_NS or h.seq >= MAX_TIME_NS:
        raise ProtocolError("header_invalid", f"t_ns and seq must be in 0..2^62, got "
                                              f"t_ns={h.t_ns} seq={h.seq}")
    if not 0 <= h.channels <= MAX_CHANNELS:
        raise ProtocolError("header_invalid", f"ch={h.channels} outside 0..{MAX_CHANNELS}")
    return h


def _int(d: dict, key: str, default: int | None = None) -> int:
    v = d.get(key, default)
    if v is None:
        raise ValueError(f"header field {key!r} is missing")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"header field {key!r} must be an integer, got {type(v).__name__}")
    return v


def _array(raw: memoryview, dtype: str, n: int, what: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if raw.nbytes != n * dt.itemsize:
        raise ProtocolError(
            "payload_size",
            f"{what}: {raw.nbytes} bytes, header says {n} x {dtype} = {n * dt.itemsize}",
        )
    return np.frombuffer(raw, dtype=dt)


def decode(frames: list[Any]) -> Message:
    """Parse and validate one multipart message, or raise :class:`ProtocolError`."""
    if len(frames) < 2:
        raise ProtocolError("missing_frames", f"{len(frames)} frame(s), need topic and header")
    topic = bytes(_as_bytes(frames[0]))
    h = _header(_as_bytes(frames[1]))
    msg = Message(topic, h)
    if h.kind == KIND_EVENTS:
        if len(frames) != 4:
            raise ProtocolError("missing_frames", f"events need 4 frames, got {len(frames)}")
        if h.dtype not in ID_DTYPES:
            raise ProtocolError("bad_dtype", f"event ids dtype {h.dtype!r} not in {ID_DTYPES}")
        if h.channels < 1:
            raise ProtocolError("header_invalid", "events need ch >= 1")
        ids = _array(_as_bytes(frames[2]), h.dtype, h.n, "ids")
        times = _array(_as_bytes(frames[3]), "<i8", h.n, "times")
        if h.n:
            if int(ids.max()) >= h.channels:
                raise ProtocolError(
                    "channel_range", f"channel id {int(ids.max())} >= channel count {h.channels}"
                )
            lo, hi = int(times.min()), int(times.max())
            if lo < 0 or hi > h.t_ns:
                raise ProtocolError("event_time", f"spike times {lo}..{hi} ns must lie in "
                                                  f"0..t_ns={h.t_ns} (t_ns is the watermark)")
        msg.ids, msg.times = ids, times
    elif h.kind in (KIND_COUNTS, KIND_DECODED, KIND_BEHAVIOR):
        if len(frames) != 3:
            raise ProtocolError("missing_frames", f"{h.kind} needs 3 frames, got {len(frames)}")
        allowed = COUNT_DTYPES if h.kind == KIND_COUNTS else FLOAT_DTYPES
        if h.dtype not in allowed:
            raise ProtocolError("bad_dtype", f"{h.kind} dtype {h.dtype!r} not in {allowed}")
        values = _array(_as_bytes(frames[2]), h.dtype, h.channels, "values")
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ProtocolError("nan", f"{h.kind} payload contains NaN or infinity")
        if h.kind == KIND_COUNTS:
            if not 0 < h.bin_ns <= MAX_BIN_NS:
                raise ProtocolError("header_invalid",
                                    f"counts need 0 < bin_ns <= {MAX_BIN_NS}, got {h.bin_ns}")
            if values.dtype.kind in "if" and values.size and values.min() < 0:
                raise ProtocolError("negative_counts", "spike counts must be >= 0")
        msg.values = values
    else:  # stim.command, heartbeat: header only
        if len(frames) != 2:
            raise ProtocolError("missing_frames", f"{h.kind} takes 2 frames, got {len(frames)}")
    return msg


# --------------------------------------------------------------------------- sequence


class SequenceTracker:
    """Per-stream sequence and timestamp checks.

    Gaps are counted (the message is still accepted), duplicates and replays of
    old sequence numbers are rejected, and a timestamp more than ``tolerance_ns``
    older than the newest one seen is rejected as going backwards.
    """

    __slots__ = ("tolerance_ns", "last_seq", "last_t_ns", "gaps", "missing", "epoch")

    def __init__(self, tolerance_ns: int = 50_000_000):
        self.tolerance_ns = tolerance_ns
        self.last_seq: int | None = None
        self.last_t_ns: int | None = None
        self.epoch = 0
        self.gaps = 0  # number of gap events
        self.missing = 0  # number of sequence numbers never seen

    def is_restart(self, h: Header) -> bool:
        """A new publisher instance: another epoch, or (without epochs) seq back to 0.

        Its first frames may be lost to ZeroMQ's slow joiner, so the epoch is the
        reliable sign; seq 0 is the fallback for publishers that send no epoch.
        """
        if self.last_seq is None:
            self.epoch = h.epoch
            return False
        return h.epoch != self.epoch or (h.seq == 0 and not h.epoch)

    def check(self, h: Header) -> int:
        """Raise ProtocolError for a duplicate/backwards frame; return messages missed."""
        missed = 0
        if self.last_seq is not None:
            if h.seq <= self.last_seq:
                raise ProtocolError("duplicate", f"seq {h.seq} already seen (last {self.last_seq})")
            missed = h.seq - self.last_seq - 1
        if self.last_t_ns is not None and h.t_ns < self.last_t_ns - self.tolerance_ns:
            raise ProtocolError(
                "timestamp_backwards",
                f"t_ns {h.t_ns} is {(self.last_t_ns - h.t_ns) / 1e6:.3f} ms before the last "
                f"frame (tolerance {self.tolerance_ns / 1e6:.3f} ms)",
            )
        if missed:
            self.gaps += 1
            self.missing += missed
        self.last_seq = h.seq
        if self.last_t_ns is None or h.t_ns > self.last_t_ns:
            self.last_t_ns = h.t_ns
        return missed

    def reset(self, epoch: int = 0) -> None:
        self.last_seq = None
        self.last_t_ns = None
        self.epoch = epoch

