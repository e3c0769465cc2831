"""Disk-space checks and the recordings directory.

A session that cannot record must not start (:func:`check_free`); a disk that
fills mid-session is handled by the recorder (``Recorder.error``). Listing
reads the small ``.json`` summary the recorder writes at close, and falls
back to scanning the log (crashed or still-running sessions).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.recording.recorder import SUFFIX, RecordType, read_log
from service.session.config import recorded_session_id


class InsufficientDisk(RuntimeError):
    pass


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_free(path: str | Path, min_bytes: int) -> int:
    """Raise :class:`InsufficientDisk` (naming the numbers) if ``path`` has too little space."""
    free = free_bytes(path)
    if free < min_bytes:
        raise InsufficientDisk(
            f"only {free / 1e6:.0f} MB free under {path}; need {min_bytes / 1e6:.0f} MB to "
            "record a session: free space or point --data-dir elsewhere")
    return free


@dataclass
class RecordingInfo:
    name: str
    kind: str  # "log" or "nwb"
    size_bytes: int
    modified: str  # ISO 8601, UTC
    session: str | None = None
    session_id: str | None = None
    channels: int | None = None
    bin_ms: float | None = None
    decoder: str | None = None
    bins: int | None = None
    duration_s: float | None = None
    clean: bool | None = None  # False: crashed, torn, or still being written
    error: str | None = None  # a write error the recorder hit (e.g. disk full)
    nwb: str | None = None  # name of the NWB export next to the log, if any
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recording_info(path: str | Path) -> RecordingInfo:
    """What a recording is, cheaply: summary file first, log scan otherwise."""
    path = Path(path)
    st = path.stat()
    info = RecordingInfo(path.name, "nwb" if path.suffix == ".nwb" else "log", st.st_size,
                         datetime.fromtimestamp(st.st_mtime, UTC).isoformat())
    if info.kind == "nwb":
        return info
    for rec in read_log(path, {RecordType.CONFIG}, check_skipped=False):
        outer = rec.value.get("config", {})
        cfg = outer.get("config", outer) if "bin_ms" not in outer else outer
        info.session = cfg.get("name")
        info.session_id = recorded_session_id(rec.value)
        info.bin_ms = cfg.get("bin_ms")
        info.channels = (cfg.get("source") or {}).get("channels")
        info.decoder = (cfg.get("decoder") or {}).get("type")
        break
    summary = _summary(path)
    if summary is None:
        summary = _scan(path)
    info.bins = summary.get("bins")
    info.clean = summary.get("clean")
    info.error = summary.get("error")
    first, last = summary.get("first_bin_ns"), summary.get("last_bin_ns")
    if first is not None and last is not None and info.bin_ms:
        info.duration_s = (last - first) / 1e9 + info.bin_ms / 1e3
    nwb = path.with_suffix(".nwb")
    info.nwb = nwb.name if nwb.exists() else None
    return info


def _summary(path: Path) -> dict[str, Any] | None:
    side = path.with_suffix(".json")
    if not side.exists() or side.stat().st_mtime < path.stat().st_mtime - 1:
        return None
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return None


def _scan(path: Path) -> dict[str, Any]:
    reader = read_log(path, {RecordType.BIN}, check_skipped=False)
    bins, first, last = 0, None, None
    for rec in reader:
        bins += 1
        first = rec.value.start_ns if first is None else first
        last = rec.value.start_ns
    return {"bins": bins, "first_bin_ns": first, "last_bin_ns": last, "clean": reader.clean,
            "discarded_bytes": reader.discarded_bytes}


def list_recordings(directory: str | Path) -> list[RecordingInfo]:
    """Session logs and NWB files in ``directory``, newest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    paths = [p for p in d.iterdir()
             if p.is_file() and p.suffix in (SUFFIX, ".nwb") and ".partial" not in p.name]
    out = []
    for p in paths:
        try:
            out.append(recording_info(p))
        except (OSError, ValueError):
            continue  # vanished or not ours: listing must not fail
    return sorted(out, key=lambda i: i.modified, reverse=True)


def resolve_recording(directory: str | Path, name: str) -> Path:
    """The file ``name`` inside ``directory``; refuses anything that escapes it (downloads)."""
    root = Path(directory).resolve()
    path = (root / name).resolve()
    if path.parent != root or path.suffix not in (SUFFIX, ".nwb", ".json"):
        raise ValueError(f"{name!r} is not a recording in {root}")
    if not path.is_file():
        raise FileNotFoundError(f"no recording named {name!r}")
    return path
