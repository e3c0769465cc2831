"""Append-only, crash-safe session log.

The session loop calls the record methods on its hot path, so they only pack a
few bytes into an in-memory list; a writer thread frames, checksums, writes
and fsyncs the list every ``flush_interval_s``. Nothing is ever dropped: when
the buffer outgrows ``max_buffer_bytes`` (disk slower than the loop) the
calling thread writes synchronously instead, and ``sync_writes`` counts it.

File layout (``docs/recording.md``): ``MAGIC`` then records
``[u32 length][u32 crc32][u8 type][payload]`` (little-endian; ``length`` is the
payload size, the CRC covers type and payload). Payloads are msgpack. A reader
stops at the first torn or corrupt record, so after a crash (SIGKILL, power
loss) everything up to the last completed flush reads back.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import platform
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Literal

import msgpack
import numpy as np

from service.loop.outcome import outcome_record

log = logging.getLogger(__name__)

MAGIC = b"SPKLOG\x00\x01"  # last byte = format version
SUFFIX = ".splog"
_HEAD = struct.Struct("<IIB")
MAX_RECORD = 1 << 30  # a longer length field can only be garbage


class RecordType(enum.IntEnum):
    CONFIG = 1
    MODEL = 2
    INPUT = 3
    REJECTED = 4
    BIN = 5
    EVENT = 6
    CLOSE = 7


# --------------------------------------------------------------------------- values


class _LazyBin:
    """A BIN record as queued by the loop: packed (same bytes) when it is written."""

    __slots__ = ("index", "start_ns", "dec", "outcome")

    def __init__(self, index: int, start_ns: int, dec: list | None, outcome: Any):
        self.index, self.start_ns, self.dec, self.outcome = index, start_ns, dec, outcome

    def __len__(self) -> int:  # for the buffer's size bound: the decoded bytes and ~200 more
        return 200 + (len(self.dec[1]) if self.dec is not None else 0)

    def pack(self) -> bytes:
        out = self.outcome
        return pack([self.index, self.start_ns, self.dec,
                     out if isinstance(out, dict) else outcome_record(out)])


@dataclass(slots=True)
class InputFrames:
    """A frame as received (raw multipart), with the wall-clock receive time."""

    recv_ns: int
    frames: list[bytes]


@dataclass(slots=True)
class RejectedFrames:
    recv_ns: int
    reason: str
    frames: list[bytes]


@dataclass(slots=True)
class BinRecord:
    """What the session published for one bin."""

    index: int
    start_ns: int
    decoded: np.ndarray | None
    outcome: dict[str, Any]


@dataclass(slots=True)
class Record:
    type: RecordType
    offset: int  # byte offset of the record header in the file
    value: Any  # dict (CONFIG/EVENT/CLOSE), (meta, state) (MODEL), or a dataclass above


def _default(obj: Any) -> Any:
    """msgpack fallback for the numpy scalars and paths that sneak into configs."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    raise TypeError(f"cannot record {type(obj).__name__}")


def pack(value: Any) -> bytes:
    """The one msgpack encoding used for records (and for comparing outcomes in verify)."""
    return msgpack.packb(value, use_bin_type=True, default=_default)


def software_versions() -> dict[str, str]:
    """Versions that decide whether a replay can be bit-identical."""
    from importlib import metadata

    out = {"python": platform.python_version(), "numpy": np.__version__,
           "platform": platform.platform()}
    for dist in ("spikeloop", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _frame_bytes(f: Any) -> bytes | memoryview:
    # zmq.Frame keeps its data in .buffer; msgpack copies the view when packing.
    return getattr(f, "buffer", f)


# --------------------------------------------------------------------------- writer


class Recorder:
    """Buffered, checksummed, fsynced session log at ``path`` (must not exist yet).

    ``on_durable(n)`` is called (under the I/O lock: it must be quick) whenever the
    file's first ``n`` bytes -- always whole records -- have been written and fsynced,
    so a copy made from the file (``service.cluster.recording_mirror``) never gets ahead of it.
    """

    def __init__(self, path: str | Path, flush_interval_s: float = 0.2, fsync: bool = True,
                 max_buffer_bytes: int = 64 << 20,
                 on_durable: Callable[[int], None] | None = None):
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        self.fsync = fsync
        self.max_buffer_bytes = max_buffer_bytes
        self.error: str | None = None
        self.records = 0
        self.bytes_written = 0
        self.durable_bytes = 0  # written and fsynced (or just written, without fsync)
        self.sync_writes = 0  # times the loop thread wrote because the buffer was full
        self.lost_records = 0  # records offered after a write error (counted, not written)
        self.bins = 0
        self.first_bin_ns: int | None = None
        self.last_bin_ns: int | None = None
        self._buf: list[tuple[int, bytes | _LazyBin]] = []
        self._buf_bytes = 0
        self._buf_lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._on_durable = on_durable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "xb", buffering=0)  # noqa: SIM115 - owned until close()
        self._write_all(MAGIC)
        self._made_durable(self.fsync)
        self._thread = threading.Thread(target=self._run, name=f"recorder:{self.path.name}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ hot path
    def _put(self, rtype: RecordType, payload: bytes | _LazyBin) -> None:
        if self.error is not None or self._closed:
            self.lost_records += 1
            return
        with self._buf_lock:
            self._buf.append((rtype, payload))
            self._buf_bytes += len(payload) + _HEAD.size
            full = self._buf_bytes > self.max_buffer_bytes
        if full:  # never drop: the loop pays for the write itself
            self.sync_writes += 1
            self.flush(fsync=False)

    def config(self, cfg: dict[str, Any], session_id: str = "") -> None:
        """Session config (``SessionConfig.model_dump(mode="json")``), once at start.

        The one recorded shape: ``{"session_id", "config", "software", "wall_time_ns"}``;
        :func:`service.session.config.recorded_config` reads it back.
        """
        self._put(RecordType.CONFIG, pack({"session_id": session_id, "config": cfg,
                                           "software": software_versions(),
                                           "wall_time_ns": time.time_ns()}))

    def model(self, meta: dict[str, Any], state: dict[str, np.ndarray]) -> None:
        """The decoder as installed, so verify rebuilds exactly the same one."""
        arrays = {}
        for k, v in state.items():
            a = np.asarray(v)
            # Keep Fortran layout (e.g. a transposed fit result): BLAS may sum in a
            # different order for another layout, and replay must match to the bit.
            order: Literal["C", "F"] = "F" if a.flags.f_contiguous and not \
                a.flags.c_contiguous else "C"
            arrays[k] = [a.dtype.str, list(a.shape), a.tobytes(order=order), order]
        self._put(RecordType.MODEL, pack({"meta": meta, "state": arrays}))

    def input(self, frames: list[Any], recv_ns: int) -> None:
        """One accepted frame, raw, in the order it was fed to the pipeline."""
        self._put(RecordType.INPUT, pack([recv_ns, [_frame_bytes(f) for f in frames]]))

    def rejected(self, frames: list[Any], reason: str, recv_ns: int) -> None:
        """A refused frame, kept for audit only (replay skips it)."""
        self._put(RecordType.REJECTED,
                  pack([recv_ns, reason, [_frame_bytes(f) for f in frames]]))

    def bin(self, index: int, start_ns: int, decoded: np.ndarray | None, outcome: Any) -> None:
        """What was published for one bin (``outcome``: guard Outcome or its record).

        The decoded vector is copied now (the loop reuses its array); the record is built
        and packed by the writer (a guard Outcome is not changed after the bin), so the
        loop builds no dict for it.
        """
        if decoded is None:
            dec = None
        else:
            d = np.ascontiguousarray(decoded)
            dec = [d.dtype.str, d.tobytes()]
        self._put(RecordType.BIN, _LazyBin(index, start_ns, dec, outcome))
        self.bins += 1
        if self.first_bin_ns is None:
            self.first_bin_ns = start_ns
        self.last_bin_ns = start_ns

    def event(self, ev: dict[str, Any]) -> None:
        """A control or state change; ``bin`` = the bin before which it took effect."""
        self._put(RecordType.EVENT, pack(ev))

    # ------------------------------------------------------------------ writing
    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view.nbytes:
            n = self._f.write(view)
            if n is None or n <= 0:
                raise OSError("short write")
            view = view[n:]
        self.bytes_written += len(data)

    def flush(self, fsync: bool | None = None) -> None:
        """Write everything buffered now (and fsync). Safe from any thread."""
        with self._io_lock:
            with self._buf_lock:
                batch, self._buf, self._buf_bytes = self._buf, [], 0
            if not batch and self.durable_bytes == self.bytes_written:
                return
            if self.error is not None:
                self.lost_records += len(batch)
                return
            parts = []
            for rtype, item in batch:
                if isinstance(item, _LazyBin):
                    payload = item.pack()
                    time.sleep(0)  # packing holds the GIL: let a waiting loop thread have it
                else:
                    payload = item
                parts.append(_HEAD.pack(len(payload),
                                        zlib.crc32(payload, zlib.crc32(bytes((rtype,)))), rtype))
                parts.append(payload)
            try:
                if parts:
                    self._write_all(b"".join(parts))
                # Also syncs what an earlier flush(fsync=False) (the loop's own) left unsynced.
                self._made_durable(self.fsync if fsync is None else fsync)
            except OSError as exc:  # ENOSPC, EFBIG, EIO: stop writing, keep what is there
                self.error = f"recording write failed: {exc.strerror or exc}"
                self.lost_records += len(batch)
                return
            self.records += len(batch)

    def _made_durable(self, fsync: bool) -> None:
        """fsync if asked, then tell ``on_durable`` how much of the file is safe to copy."""
        if fsync:
            os.fsync(self._f.fileno())
        elif self.fsync:
            return  # written, not yet synced: the next writer-thread flush syncs and reports
        self.durable_bytes = self.bytes_written
        if self._on_durable is not None:
            try:
                self._on_durable(self.durable_bytes)
            except Exception as exc:  # the copy's problem, never the recording's
                log.warning(f"on_durable failed: {exc!r}")

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def stats(self) -> dict[str, Any]:
        return {"records": self.records, "bytes": self.bytes_written, "bins": self.bins,
                "first_bin_ns": self.first_bin_ns, "last_bin_ns": self.last_bin_ns,
                "sync_writes": self.sync_writes, "lost_records": self.lost_records,
                "error": self.error}

    def close(self) -> dict[str, Any]:
        """Write the CLOSE record and a ``.json`` summary beside the log; idempotent."""
        if self._closed:
            return self.stats()
        self._put(RecordType.CLOSE, pack({"wall_time_ns": time.time_ns()} | self.stats()))
        self._closed = True
        self._wake.set()
        self._thread.join()
        self.flush(fsync=True)
        self._f.close()
        stats = self.stats()
        try:
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(stats | {"clean": self.error is None}))
            tmp.replace(self.path.with_suffix(".json"))
        except OSError:
            pass  # the summary is a cache; listing falls back to scanning the log
        return stats

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- reader


def _decode(rtype: RecordType, payload: bytes) -> Any:
    v = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if rtype == RecordType.INPUT:
        return InputFrames(v[0], v[1])
    if rtype == RecordType.REJECTED:
        return RejectedFrames(v[0], v[1], v[2])
    if rtype == RecordType.BIN:
        dec = None if v[2] is None else np.frombuffer(v[2][1], dtype=v[2][0])
        return BinRecord(v[0], v[1], dec, v[3])
    if rtype == RecordType.MODEL:
        state = {k: np.frombuffer(a[2], dtype=a[0]).reshape(a[1], order=a[3]).copy(order="K")
                 for k, a in v["state"].items()}
        return v["meta"], state
    return v


def whole_records(buf: bytes | memoryview) -> int:
    """Length of the longest prefix of ``buf`` (which starts at a record) made of whole
    records; 0 if even the first record is cut. Framing only: CRCs are not checked."""
    pos = 0
    while pos + _HEAD.size <= len(buf):
        (length,) = struct.unpack_from("<I", buf, pos)
        end = pos + _HEAD.size + length
        if end > len(buf):
            break
        pos = end
    return pos


def record_size(head: bytes | memoryview) -> int:
    """Size of the record whose header starts ``head``."""
    return _HEAD.size + struct.unpack_from("<I", head)[0]


class LogReader:
    """Iterate the records of a log; afterwards ``discarded_bytes`` and ``clean`` tell
    whether it ended with a torn/corrupt tail or a CLOSE record.

    ``types`` limits which records are decoded; the others are checksummed and
    skipped, or with ``check_skipped=False`` only seeked over (a quick scan).
    """

    def __init__(self, path: str | Path, types: set[RecordType] | None = None,
                 check_skipped: bool = True):
        self.path = Path(path)
        self.types = types
        self.check_skipped = check_skipped
        self.discarded_bytes = 0
        self.valid_bytes = 0
        self.clean = False
        self.tail_error = ""

    def __iter__(self) -> Iterator[Record]:
        size = self.path.stat().st_size
        with open(self.path, "rb", buffering=1 << 20) as f:
            magic = f.read(len(MAGIC))
            if magic != MAGIC:
                if len(magic) < len(MAGIC) and MAGIC.startswith(magic):
                    self.discarded_bytes, self.tail_error = len(magic), "torn magic"
                    return
                raise ValueError(f"{self.path}: not a spikeloop recording (bad magic)")
            pos = len(MAGIC)
            while pos < size:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    self.tail_error = "torn record header"
                    break
                length, crc, rtype = _HEAD.unpack(head)
                if length > MAX_RECORD or pos + _HEAD.size + length > size:
                    self.tail_error = "torn record"
                    break
                wanted = self.types is None or rtype in self.types
                if not wanted and not self.check_skipped:
                    f.seek(length, os.SEEK_CUR)
                    pos += _HEAD.size + length
                    self.clean = self.clean or rtype == RecordType.CLOSE
                    continue
                payload = f.read(length)
                if len(payload) < length or zlib.crc32(payload, zlib.crc32(head[8:])) != crc:
                    self.tail_error = f"checksum mismatch at byte {pos}"
                    break
                try:
                    rt = RecordType(rtype)
                except ValueError:
                    self.tail_error = f"unknown record type {rtype} at byte {pos}"
                    break
                if rt == RecordType.CLOSE:
                    self.clean = True
                if wanted:
                    yield Record(rt, pos, _decode(rt, payload))
                pos += _HEAD.size + length
        self.valid_bytes = pos
        self.discarded_bytes = size - pos


def read_log(path: str | Path, types: set[RecordType] | None = None,
             check_skipped: bool = True) -> LogReader:
    """Records of the log at ``path``, stopping cleanly at a torn or corrupt tail."""
    return LogReader(path, types, check_skipped)


def main(argv: list[str] | None = None) -> None:
    """``python -m service.recording.recorder LOG``: count records by type (debugging aid)."""
    from collections import Counter

    path = (argv or sys.argv[1:])[0]
    reader = read_log(path)
    counts = Counter(r.type.name for r in reader)
    sys.stdout.write(json.dumps({"records": dict(counts), "clean": reader.clean,
                                 "discarded_bytes": reader.discarded_bytes,
                                 "tail_error": reader.tail_error}, indent=2) + "\n")


if __name__ == "__main__":
    main()
