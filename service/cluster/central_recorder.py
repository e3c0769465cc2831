"""The central recorder: every mirrored session log written again, in one place.

``spikeloop recorder --redis URL --out DIR [--group G --consumer C]`` follows the
recording streams that sessions mirror (``service.cluster.recording_mirror``) and writes each
recording to ``DIR/<name>`` byte for byte as the worker wrote it, then exports NWB
beside it when the recording ends. The protocol (docs/recording.md, "Central copy"):

* **Discovery.** ``Keys.recordings`` is read through consumer group G; a ``start``
  entry names a session whose recording stream to follow.
* **Ownership.** One consumer follows a session's stream at a time: the one holding
  ``Keys.recording_owner(sid)`` (a key with a ``lease_s`` TTL, renewed every lease/3).
  The start entry that made it the owner stays pending in its name until the recording
  is finished, kept fresh by the renewals (XCLAIM); if the owner dies, the entry goes
  idle and another consumer XAUTOCLAIMs it after ``lease_s`` and takes over once the
  key has expired. Each file is also held under an exclusive ``lockf`` while open, so
  recorders sharing DIR cannot interleave writes even if a stalled one outlives its
  lease. Recorders in one group must share DIR (a shared filesystem): a take-over
  continues the file where the previous owner left it.
* **Writing.** Entries are read with XREADGROUP (after a take-over or a restart, the
  pending ones first, claimed with XAUTOCLAIM), written at their ``off``, fsynced, and
  only then XACKed. The file itself is the progress record: bytes it already has are
  compared, not written again, so a redelivery neither duplicates nor loses anything.
* **Trimming.** After each XACK, the stream is trimmed (XTRIM MINID) to the oldest entry
  some group still needs -- its oldest pending entry, or its last delivered one -- so
  Redis holds only what no central copy has yet, plus the newest entry (its ``off`` and
  length say how far the stream got). Nothing else trims a recording stream.
* **End.** The mirror's end entry closes the file; NWB is exported; then the end and
  start entries are acknowledged and the lock released. A recording superseded by a new
  one on the same session (the worker died, the session was restarted) is closed as is.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.cluster.recording_mirror import redis_client
from service.cluster.redis_streams import Keys, redact
from service.recording.recorder import MAGIC

log = logging.getLogger(__name__)

LEASE_S = 10.0
BLOCK_MS = 500
BATCH = 32  # entries per stream per read; an entry is at most about 1 MiB
PROGRESS_S = 5.0
RETRY_S = 1.0
_NAME = re.compile(r"^[\w\-][\w.\-]*\.splog$")  # a plain file name: nothing to escape DIR

# Take the owner key if it is free or already ours (a restart under the same consumer
# name) and push its expiry out. 1 = ours, 0 = another consumer holds it.
_LOCK = """
local v = redis.call('get', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


@dataclass
class _File:
    """One central copy. Its length is how far it got: there is no other progress record."""

    name: str
    path: Path
    fd: int
    size: int
    written: int = 0
    duplicates: int = 0  # bytes received again and found identical
    stopped: str = ""  # why nothing more is written (a gap or a conflict): the copy is a prefix
    dirty: bool = False
    end: dict[str, int] | None = None
    end_id: bytes | None = None
    superseded: bool = False
    started: float = field(default_factory=time.monotonic)
    reported: tuple[float, int] = (0.0, 0)


@dataclass
class _Stream:
    """A session's recording stream while this consumer owns it."""

    sid: str
    key: str
    index_ids: list[bytes] = field(default_factory=list)  # start entries, acked at the end
    files: dict[str, _File] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    acks: list[bytes] = field(default_factory=list)
    lost: bool = False  # the owner key went to another consumer


class CentralRecorder:
    """One consumer of group ``group``; ``run()`` until ``stop()``."""

    def __init__(self, url: str, out: str | Path, group: str = "central",
                 consumer: str | None = None, lease_s: float = LEASE_S, nwb: bool = True,
                 log: Callable[[str], None] | None = None):
        self.url = url
        self.out = Path(out)
        self.group = group
        self.consumer = consumer or socket.gethostname()
        self.lease_ms = int(lease_s * 1000)
        self.nwb = nwb
        self.log = log or (lambda m: logging.getLogger(__name__).info(m))
        self.owned: dict[str, _Stream] = {}
        self.totals = {"written": 0, "duplicates": 0, "finished": 0}
        self._r: Any = None
        self._scripts: dict[str, Any] = {}
        self._owned_lock = threading.Lock()
        self._next_claim = 0.0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        """Follow, write, acknowledge. A Redis or disk error drops what is in flight --
        it was not acknowledged, so it comes back -- and starts over after ``RETRY_S``."""
        from redis import RedisError

        self.out.mkdir(parents=True, exist_ok=True)
        renew = threading.Thread(target=self._renew_loop, name="leases", daemon=True)
        renew.start()
        self.log(f"group {self.group!r} on {redact(self.url)}, writing to {self.out}")
        failing = False
        while not self._stop.is_set():
            try:
                if self._r is None:
                    self._connect()
                self._poll()
                if failing:
                    self.log("Redis is back: resuming from the pending entries")
                    failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    self.log(f"error: {exc}; nothing in flight was acknowledged, retrying "
                             f"every {RETRY_S:g} s")
                failing = True
                self._reset(release=False)
                self._stop.wait(RETRY_S)
        self._reset(release=True)
        renew.join(5)
        self.log(f"stopped: {self.totals}")

    def _connect(self) -> None:
        r = redis_client(self.url, BLOCK_MS / 1000 + 5)
        self._scripts = {"lock": r.register_script(_LOCK), "unlock": r.register_script(_UNLOCK)}
        _ensure_group(r, Keys.recordings, self.group)
        self._r = r
        # After a restart or a reconnect: the recordings this consumer was following.
        for eid, fields in self._own_pending(Keys.recordings):
            self._on_index(eid, fields, claimed=True)

    def _poll(self) -> None:
        r = self._r
        if time.monotonic() >= self._next_claim:
            self._claim_orphans()
            self._next_claim = time.monotonic() + self.lease_ms / 2000
        streams = {Keys.recordings: ">"} | {s.key: ">" for s in self.owned.values()}
        reply = r.xreadgroup(self.group, self.consumer, streams, count=BATCH, block=BLOCK_MS)
        for key, entries in _stream_items(reply):
            if key == Keys.recordings:
                for eid, fields in entries:
                    self._on_index(eid, fields, claimed=False)
            else:
                s = next((s for s in self.owned.values() if s.key == key), None)
                if s is not None:
                    self._on_entries(s, entries)
        self._commit()

    def _reset(self, release: bool) -> None:
        """Forget everything in memory (files, ownership); unacknowledged entries stay
        pending in Redis, which is what the next start resumes from."""
        with self._owned_lock:
            streams, self.owned = list(self.owned.values()), {}
        for s in streams:
            for f in s.files.values():
                os.close(f.fd)
            if release and self._r is not None:
                try:
                    self._scripts["unlock"](keys=[Keys.recording_owner(s.sid)],
                                            args=[self.consumer], client=self._r)
                except Exception as exc:  # it expires after the lease anyway
                    self.log(f"session {s.sid}: could not release the owner key: {exc}")
        if self._r is not None:
            self._r.close()
            self._r = None

    # ------------------------------------------------------------------ index
    def _on_index(self, eid: bytes, fields: dict | None, claimed: bool) -> None:
        r = self._r
        f = _text(fields)
        if f.get("event") != "start" or not f.get("sid"):
            if f.get("event") == "end":
                self.log(f"{f.get('name')}: ended on {f.get('host')} ({f.get('records')} "
                         f"records, {f.get('bytes')} bytes)")
            r.xack(Keys.recordings, self.group, eid)
            return
        sid = f["sid"]
        s = self.owned.get(sid) or self._take(sid, f)
        if s is not None:
            if eid not in s.index_ids:
                s.index_ids.append(eid)
        elif not claimed:
            # A repeated announcement while another consumer owns the session: that
            # consumer keeps its own start entry pending, which is what a take-over needs.
            r.xack(Keys.recordings, self.group, eid)
        # else: claimed from a consumer that went quiet, whose key has not expired yet;
        # it stays pending here and is looked at again at the next claim round.

    def _claim_orphans(self) -> None:
        """Start entries idle for a lease: their consumer died (renewals keep live ones fresh)."""
        start: Any = "0-0"
        while True:
            nxt, entries = _autoclaim(self._r, Keys.recordings, self.group, self.consumer,
                                      self.lease_ms, start)
            for eid, fields in entries:
                self._on_index(eid, fields, claimed=True)
            if _is_zero(nxt):
                return
            start = nxt

    def _take(self, sid: str, announce: dict[str, str]) -> _Stream | None:
        r = self._r
        if not self._scripts["lock"](keys=[Keys.recording_owner(sid)],
                                     args=[self.consumer, self.lease_ms], client=r):
            return None
        s = _Stream(sid, Keys.recording(sid))
        _ensure_group(r, s.key, self.group)
        with self._owned_lock:
            self.owned[sid] = s
        self.log(f"session {sid}: following {s.key} ({announce.get('name')} from "
                 f"{announce.get('host')})")
        # Entries delivered but never acknowledged (to a consumer that died, or to this
        # one before a restart) come first, in stream order.
        start: Any = "0-0"
        while True:
            nxt, entries = _autoclaim(r, s.key, self.group, self.consumer, 0, start)
            self._on_entries(s, entries)
            if _is_zero(nxt):
                return s
            start = nxt

    # ------------------------------------------------------------------ recording streams
    def _on_entries(self, s: _Stream, entries: list) -> None:
        for eid, fields in entries:
            name = _text({b"name": (fields or {}).get(b"name", b"")})["name"]
            if not fields or not _NAME.match(name) or name in s.finished:
                if fields and not _NAME.match(name):
                    self.log(f"{s.key}: entry {eid!r} has no valid file name ({name!r}): skipped")
                s.acks.append(eid)
                continue
            f = s.files.get(name) or self._open(s, name)
            if f is None:
                return
            if b"abandoned" in fields:  # the control plane lost the worker: close as is
                self.log(f"{name}: abandoned ({fields[b'abandoned'].decode(errors='replace')})")
                f.superseded = True
                s.acks.append(eid)
                continue
            if b"end" in fields:
                if f.end_id is not None:
                    s.acks.append(f.end_id)
                f.end = {k: int(fields[k.encode()]) for k in ("bytes", "records", "clean")}
                f.end_id = eid  # acknowledged once the file is closed and exported
                continue
            self._write(f, int(fields[b"off"]), fields[b"data"])
            s.acks.append(eid)

    def _open(self, s: _Stream, name: str) -> _File | None:
        path = self.out / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self.log(f"{path} is locked by another process: another recorder writes it "
                     f"(its lease on session {s.sid} lapsed); leaving the session to it")
            s.lost = True
            return None
        size = os.fstat(fd).st_size
        if size == 0:
            _fsync_dir(self.out)  # the new name survives a crash too
        for other in s.files.values():  # the worker started over: the old one gets no end
            if other.end is None:
                other.superseded = True
        f = _File(name, path, fd, size)
        s.files[name] = f
        self.log(f"{name}: writing {path}" + (f", resuming at byte {size}" if size else ""))
        return f

    def _write(self, f: _File, off: int, data: bytes) -> None:
        """Put ``data`` at ``off``: what the file already has must match; the rest is
        appended. A gap or a mismatch stops the copy where it is (a valid prefix)."""
        if f.stopped:
            return
        end = off + len(data)
        if off > f.size:
            f.stopped = (f"the stream has no bytes {f.size}..{off} (they left Redis before "
                         f"this copy had them)")
        elif os.pread(f.fd, min(end, f.size) - off, off) != data[:max(0, f.size - off)]:
            f.stopped = (f"bytes {off}..{min(end, f.size)} differ from the stream (another "
                         "recording of this name?)")
        if f.stopped:
            self.log(f"{f.name}: {f.stopped}; the copy stops at byte {f.size}. Move it aside "
                     "and restart the recorder to copy again what Redis still holds.")
            return
        new = data[f.size - off:] if off < f.size else data
        f.duplicates += len(data) - len(new)
        self.totals["duplicates"] += len(data) - len(new)
        if new:
            _pwrite_all(f.fd, new, max(off, f.size))
            f.size = end
            f.written += len(new)
            self.totals["written"] += len(new)
            f.dirty = True

    def _commit(self) -> None:
        """fsync, then acknowledge and trim, then close what ended."""
        r = self._r
        for s in list(self.owned.values()):
            if s.lost:
                self._drop(s, "another consumer holds its owner key")
                continue
            for f in s.files.values():
                if f.dirty:
                    os.fsync(f.fd)
                    f.dirty = False
                self._progress(f)
            if s.acks:
                r.xack(s.key, self.group, *s.acks)
                s.acks.clear()
                _trim(r, s.key)
            for f in [f for f in s.files.values() if f.end is not None or f.superseded]:
                self._finish(s, f)
            if s.finished and not s.files:
                self._release(s)

    def _finish(self, s: _Stream, f: _File) -> None:
        os.close(f.fd)
        del s.files[f.name]
        s.finished.add(f.name)
        self.totals["finished"] += 1
        secs = time.monotonic() - f.started
        if f.end is not None and f.size == f.end["bytes"] and not f.stopped:
            state = "complete"
        elif f.end is not None:
            state = f"INCOMPLETE: {f.size} of {f.end['bytes']} bytes ({f.stopped or 'missing'})"
        else:
            state = "closed without an end (the worker stopped; a new recording took over)"
        self.log(f"{f.name}: {state}; {f.size} bytes, {f.written} written here in {secs:.1f} s, "
                 f"{f.duplicates} duplicate bytes skipped")
        if self.nwb and f.size > len(MAGIC):
            from service.recording.nwb_export import export_nwb

            try:
                t0 = time.monotonic()
                nwb = export_nwb(f.path, f.path.with_suffix(".nwb"))
                self.log(f"{f.name}: exported {nwb.name} in {time.monotonic() - t0:.1f} s")
            except Exception as exc:  # the log stays the primary record
                self.log(f"{f.name}: NWB export failed: {type(exc).__name__}: {exc}")
        if f.end_id is not None:
            self._r.xack(s.key, self.group, f.end_id)
            _trim(self._r, s.key)

    def _release(self, s: _Stream) -> None:
        r = self._r
        if s.index_ids:
            r.xack(Keys.recordings, self.group, *s.index_ids)
            _trim(r, Keys.recordings)
        self._scripts["unlock"](keys=[Keys.recording_owner(s.sid)], args=[self.consumer],
                                client=r)
        with self._owned_lock:
            self.owned.pop(s.sid, None)
        self.log(f"session {s.sid}: done, released")

    def _drop(self, s: _Stream, why: str) -> None:
        for f in s.files.values():
            os.close(f.fd)
        with self._owned_lock:
            self.owned.pop(s.sid, None)
        self.log(f"session {s.sid}: no longer followed here: {why}")

    def _progress(self, f: _File) -> None:
        t, size = f.reported
        now = time.monotonic()
        if now - t >= PROGRESS_S and f.size != size:
            rate = (f.size - size) / (now - t) / 1e3 if t else 0.0
            self.log(f"{f.name}: {f.size} bytes" + (f" (+{rate:.0f} kB/s)" if t else ""))
            f.reported = (now, f.size)

    def _own_pending(self, key: str):
        """Entries delivered to this consumer and not yet acknowledged, oldest first."""
        last: Any = "0"
        while True:
            reply = self._r.xreadgroup(self.group, self.consumer, {key: last}, count=100)
            entries = [e for _, es in _stream_items(reply) for e in es]
            if not entries:
                return
            yield from entries
            last = entries[-1][0]

    # ------------------------------------------------------------------ leases
    def _renew_loop(self) -> None:
        """Every lease/3: keep each owner key, and keep its start entries from going idle."""
        while not self._stop.wait(self.lease_ms / 3000):
            r = self._r
            if r is None:
                continue
            with self._owned_lock:
                streams = list(self.owned.values())
            for s in streams:
                try:
                    if not self._scripts["lock"](keys=[Keys.recording_owner(s.sid)],
                                                 args=[self.consumer, self.lease_ms], client=r):
                        s.lost = True
                    elif s.index_ids:
                        r.xclaim(Keys.recordings, self.group, self.consumer, 0,
                                 list(s.index_ids), justid=True)
                except Exception:  # noqa: BLE001 - this thread must outlive any outage
                    pass  # the main loop sees the outage and starts over


# ====================================================================== helpers
def _ensure_group(r: Any, key: str, group: str) -> None:
    """Create ``group`` on ``key`` at the stream's start (so nothing already there is missed)."""
    from redis import ResponseError

    try:
        r.xgroup_create(key, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _autoclaim(r: Any, key: str, group: str, consumer: str, min_idle_ms: int,
               start: Any) -> tuple[Any, list]:
    reply = r.xautoclaim(key, group, consumer, min_idle_ms, start, count=BATCH)
    return reply[0], [e for e in reply[1] if e is not None]


def _is_zero(stream_id: Any) -> bool:
    return stream_id in (b"0-0", "0-0")


def _id_key(stream_id: Any) -> tuple[int, int]:
    ms, _, seq = (stream_id.decode() if isinstance(stream_id, bytes) else stream_id).partition("-")
    return int(ms), int(seq or 0)


def _trim(r: Any, key: str) -> None:
    """XTRIM MINID to the oldest entry any group still needs: its oldest pending entry,
    else its last delivered one (kept: the newest entry says how far the stream got)."""
    floor = None
    for g in r.xinfo_groups(key):
        need = r.xpending(key, g["name"])["min"] if g["pending"] else g["last-delivered-id"]
        if need is not None and (floor is None or _id_key(need) < _id_key(floor)):
            floor = need
    if floor is not None and not _is_zero(floor):
        r.xtrim(key, minid=floor, approximate=False)


def _stream_items(reply: Any) -> list[tuple[str, list]]:
    """XREADGROUP's reply as (key, entries), in RESP2 (list) or RESP3 (dict) form."""
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else reply
    out = []
    for key, entries in items:
        if isinstance(entries, list) and len(entries) == 1 and isinstance(entries[0], list):
            entries = entries[0]  # RESP3 nests the entries one level deeper
        out.append((key.decode() if isinstance(key, bytes) else key, entries))
    return out


def _text(fields: dict | None) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k):
            (v.decode(errors="replace") if isinstance(v, bytes) else str(v))
            for k, v in (fields or {}).items()}


def _pwrite_all(fd: int, data: bytes, off: int) -> None:
    view = memoryview(data)
    while view.nbytes:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(url: str, out: Path, group: str, consumer: str | None, lease_s: float,
         nwb: bool) -> None:
    """``spikeloop recorder``: run until SIGTERM/SIGINT, then release what it owns."""
    import signal

    rec = CentralRecorder(url, out, group, consumer, lease_s, nwb)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: rec.stop())
    rec.run()
