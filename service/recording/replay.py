"""Any recording as a wire-protocol source: on a ZeroMQ socket, or straight into a pipeline.

:func:`open_recording` accepts a session log (``.splog``, the frames exactly as
received), an NWB file (Units spike times) or a shared dataset (binned counts
with behaviour; ``dataset:NAME`` or the file itself). Frames are paced on the
source clock: real time (``speed=1``), N times faster, or as fast as possible
(``speed=None``). :func:`run_in_process` feeds a session core directly, without
sockets, for tests, training and benchmarks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from service.loop.core import SessionCore
from service.recording.recorder import SUFFIX, RecordType, read_log
from service.session.config import recorded_config
from service.wire.net import prepare_bind
from service.wire.protocol import KIND_BEHAVIOR, KIND_COUNTS, encode_array, encode_events
from sources.readers import DATASET_FILES, Chunk, DatasetReader, NwbUnitsReader

Frames = list[bytes | memoryview]
Progress = Callable[[int, int], None]  # (source ns done, source ns total)


@dataclass
class Recording:
    """A replayable recording: ``frames()`` yields ``(t_ns, frames)`` in source order."""

    kind: str  # "log", "nwb" or "dataset"
    path: str
    channels: int
    start_ns: int
    end_ns: int
    info: dict[str, Any] = field(default_factory=dict)
    _frames: Callable[[], Iterator[tuple[int, Frames]]] | None = None

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def frames(self) -> Iterator[tuple[int, Frames]]:
        assert self._frames is not None, "a Recording is made by open_recording()"
        return self._frames()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "channels": self.channels,
                "duration_s": self.duration_s} | self.info


# --------------------------------------------------------------------------- sources


def _counts_array(values: np.ndarray) -> np.ndarray:
    """Smallest exact wire dtype for a row of counts."""
    if np.all(values == np.round(values)) and values.min(initial=0) >= 0:
        if values.max(initial=0) < 65536:
            return values.astype("<u2")
        return values.astype("<u4")
    return values.astype("<f8")


def chunk_frames(chunks: Iterator[Chunk], channels: int, stream: str,
                 behavior_names: list[str] | None = None) -> Iterator[tuple[int, Frames]]:
    """Encode reader chunks as wire frames (own sequence numbers per stream)."""
    seq = {"spikes": 0, "behavior": 0}
    names = {"names": behavior_names} if behavior_names else None
    for c in chunks:
        if c.kind == "events":
            assert c.ids is not None and c.times is not None
            f = encode_events(b"spikes", stream, seq["spikes"], c.t_ns, channels, c.ids, c.times)
            seq["spikes"] += 1
        elif c.kind == "counts":
            assert c.values is not None
            f = encode_array(b"spikes", KIND_COUNTS, stream, seq["spikes"], c.t_ns,
                             _counts_array(c.values), bin_ns=c.bin_ns)
            seq["spikes"] += 1
        elif c.kind == "behavior":
            f = encode_array(b"behavior", KIND_BEHAVIOR, f"{stream}.behavior", seq["behavior"],
                             c.t_ns, np.asarray(c.values, "<f8"), extra=names)
            seq["behavior"] += 1
        else:
            raise ValueError(f"unknown chunk kind {c.kind!r}")
        yield c.t_ns, f


def _log_recording(path: Path) -> Recording:
    cfg: dict[str, Any] = {}
    first = last = None
    reader = read_log(path, {RecordType.CONFIG, RecordType.INPUT})
    for rec in reader:  # one pass for the header times: cheap next to replaying
        if rec.type == RecordType.CONFIG:
            cfg = rec.value
            continue
        t = _header_t(rec.value.frames)
        first = t if first is None else first
        last = t
    channels = recorded_config(cfg).source.channels if cfg else 0

    def frames() -> Iterator[tuple[int, Frames]]:
        for rec in read_log(path, {RecordType.INPUT}):
            yield _header_t(rec.value.frames), rec.value.frames

    return Recording("log", str(path), channels, first or 0, last or 0,
                     {"clean": reader.clean, "discarded_bytes": reader.discarded_bytes}, frames)


def _header_t(frames: list[bytes]) -> int:
    try:
        return int(msgpack.unpackb(frames[1], raw=False)["t_ns"])
    except Exception:  # an unparseable header replays as-is, without moving the clock
        return -1


def open_recording(spec: str | Path, chunk_ms: float = 10.0, bin_ms: float | None = None,
                   stream: str = "replay", behavior: str | None = None,
                   interval: tuple[float, float] | None = None,
                   within: str | None = None) -> Recording:
    """A session log, an NWB file, or ``dataset:NAME`` (or a shared dataset file).

    For an NWB file, ``behavior`` names a behaviour series to send as behaviour frames,
    one per bin of ``bin_ms`` (needed then), so that a session can calibrate on it;
    ``interval`` (s, s) and ``within`` (an intervals table, e.g. ``trials``) limit
    the bins that carry behaviour.
    """
    s = str(spec)
    if s.startswith("dataset:"):
        return _dataset_recording(s.split(":", 1)[1], bin_ms, stream)
    path = Path(s)
    if path.name in DATASET_FILES:
        return _dataset_recording(DATASET_FILES[path.name], bin_ms, stream)
    if not path.exists():
        raise FileNotFoundError(f"no recording at {path}")
    if path.suffix == SUFFIX:
        return _log_recording(path)
    if path.suffix == ".nwb":
        return _nwb_recording(path, chunk_ms, bin_ms, stream, behavior, interval, within)
    raise ValueError(f"{path}: unknown recording type (expected {SUFFIX}, .nwb, a shared "
                     f"dataset file {sorted(DATASET_FILES)} or dataset:NAME)")


def _nwb_recording(path: Path, chunk_ms: float, bin_ms: float | None, stream: str,
                   behavior: str | None, interval: tuple[float, float] | None,
                   within: str | None) -> Recording:
    from sources.nwb import inventory, load_behavior, load_intervals

    inv = inventory(path)
    if inv.missing:
        raise ValueError(inv.missing)
    beh = None
    if behavior is not None:
        if bin_ms is None:
            raise ValueError(f"{path}: give the session's bin width (--bin-ms) to send "
                             "behaviour: one behaviour frame goes with every bin")
        beh = load_behavior(path, behavior)
        chunk_ms = bin_ms
    table = load_intervals(path, within) if within else None
    r = NwbUnitsReader(path, chunk_ms=chunk_ms, behavior=beh, interval=interval, within=table)
    info = r.describe() | {"nwb": inv.metadata}
    return Recording("nwb", str(path), r.channels, r.start_ns, r.end_ns, info,
                     lambda: chunk_frames(r.chunks(), r.channels, stream,
                                          r.behavior_names or None))


def session_metadata(rec: Recording) -> dict[str, Any]:
    """``SessionConfig.metadata`` for a session fed by ``rec``: an NWB file's subject,
    experimenter and description carried on, and the file named as the origin."""
    meta = rec.info.get("nwb")
    return nwb_session_metadata(meta, rec.path) if meta else {}


def nwb_session_metadata(meta: dict[str, Any], path: str) -> dict[str, Any]:
    """``SessionConfig.metadata`` from an NWB file's metadata (``sources.nwb.inventory``)."""
    out: dict[str, Any] = {
        "session_description": meta.get("session_description"),
        "experimenter": meta.get("experimenter", []),
        "origin": {"path": path, "identifier": meta.get("identifier"),
                   "session_start_time": meta.get("session_start_time"),
                   "session_id": meta.get("session_id")},
    }
    for key in ("institution", "lab"):
        if meta.get(key):
            out[key] = meta[key]
    subject = dict(meta.get("subject") or {})
    if subject.get("subject_id"):
        if subject.get("sex") not in ("M", "F", "U", "O"):
            subject["sex"] = "U"
        out["subject"] = subject
    return out


def _dataset_recording(name: str, bin_ms: float | None, stream: str) -> Recording:
    r = DatasetReader(name, bin_ms=bin_ms)
    names = r.dataset.output_names
    return Recording("dataset", f"dataset:{name}", r.channels, r.start_ns, r.end_ns,
                     r.describe(), lambda: chunk_frames(r.chunks(), r.channels, stream, names))


# --------------------------------------------------------------------------- pacing


class Pacer:
    """Sleeps so that source time advances ``speed`` times faster than the wall clock."""

    def __init__(self, speed: float | None):
        if speed is not None and speed <= 0:
            raise ValueError("speed must be > 0, or None for as fast as possible")
        self.speed = speed
        self._t0_src: int | None = None
        self._t0_wall = 0.0

    def wait(self, t_ns: int) -> None:
        if self.speed is None or t_ns < 0:
            return
        if self._t0_src is None:
            self._t0_src, self._t0_wall = t_ns, time.perf_counter()
            return
        due = self._t0_wall + (t_ns - self._t0_src) / 1e9 / self.speed
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def text_progress(label: str = "replay", stream: Any = sys.stderr) -> Progress:
    """A one-line progress bar for the CLI (no dependency)."""
    last = [-1]

    def show(done: int, total: int) -> None:
        pct = int(100 * done / total) if total > 0 else 100
        if pct != last[0]:
            last[0] = pct
            bar = "#" * (pct // 4)
            stream.write(f"\r{label} [{bar:<25}] {pct:3d}%")
            if pct >= 100:
                stream.write("\n")
            stream.flush()

    return show


# --------------------------------------------------------------------------- sinks


@dataclass
class ReplayStats:
    frames: int = 0
    bins: int = 0
    source_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def speedup(self) -> float:
        return self.source_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "bins": self.bins, "source_seconds": self.source_seconds,
                "wall_seconds": self.wall_seconds, "speedup": self.speedup}


def _progress_steps(rec: Recording, progress: Progress | None):
    total = max(rec.end_ns - rec.start_ns, 1)
    step = total // 200 or 1
    nxt = [rec.start_ns]

    def tick(t_ns: int) -> None:
        if progress is not None and t_ns >= nxt[0]:
            progress(min(t_ns - rec.start_ns, total), total)
            nxt[0] = t_ns + step

    def done() -> None:
        if progress is not None:
            progress(total, total)

    return tick, done


def publish(rec: Recording, endpoint: str, speed: float | None = 1.0,
            progress: Progress | None = None, wait_subscriber_s: float = 5.0,
            stop: Callable[[], bool] | None = None, linger_s: float = 1.0) -> ReplayStats:
    """Bind a publisher at ``endpoint`` and send the recording on the wire protocol.

    An XPUB socket waits until a subscriber is there, so the first frames are
    not lost to the slow-joiner effect, and its queue is unbounded (no drops:
    the frames are all on disk anyway). ``stop()`` returning True ends early.
    """
    import zmq

    ctx: zmq.Context = zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, int(linger_s * 1000))
    prepare_bind(endpoint)
    sock.bind(endpoint)
    try:
        if wait_subscriber_s > 0 and not sock.poll(int(wait_subscriber_s * 1000), zmq.POLLIN):
            raise TimeoutError(f"no subscriber on {endpoint} within {wait_subscriber_s} s")
        stats = ReplayStats()
        pacer = Pacer(speed)
        tick, done = _progress_steps(rec, progress)
        t0 = time.perf_counter()
        for t_ns, frames in rec.frames():
            if stop is not None and stop():
                break
            pacer.wait(t_ns)
            sock.send_multipart(frames, copy=False)
            stats.frames += 1
            tick(t_ns)
        stats.wall_seconds = time.perf_counter() - t0
        stats.source_seconds = rec.duration_s
        done()
        return stats
    finally:
        sock.close()


def run_in_process(rec: Recording, core: SessionCore,
                   progress: Progress | None = None) -> ReplayStats:
    """Feed a recording straight into a session core (and its sink), as fast as possible."""
    stats = ReplayStats()
    tick, done = _progress_steps(rec, progress)
    bins0 = core.counters["bins"]
    t0 = time.perf_counter()
    for t_ns, frames in rec.frames():
        core.accept(frames, 0)
        stats.frames += 1
        tick(t_ns)
    stats.bins = core.counters["bins"] - bins0
    stats.wall_seconds = time.perf_counter() - t0
    stats.source_seconds = rec.duration_s
    done()
    return stats


__all__ = ["Recording", "ReplayStats", "chunk_frames", "open_recording",
           "publish", "run_in_process", "session_metadata", "text_progress", "Pacer"]
