"""Append-only audit log of what the guard was asked and what it did.

One JSON line per outcome: time, status, request, command sent, reasons.
Control events (arm, disarm, limit changes) go in the same file with
``"event"`` set, so one file tells the whole story of a session.

Cost on the hot path is a comparison with the previous outcome and a deque
append of a tuple (about 1 us): no dict or JSON is built in the loop. A writer
thread serialises the lines, writes them and fsyncs every ``flush_interval_s``
(0.2 s), and at once (woken, not waited for) after safety-relevant lines
(``safe``/``refused`` outcomes, control events). A crash loses at most the
lines of the last interval. Identical consecutive outcomes (e.g. "refused:
disarmed" every bin: same status, equal command, same reasons) are written
once, then as one ``{"repeated": n}`` line (with the command, if one was sent)
when they change. ``hold`` outcomes with nothing sent are not logged unless
``log_holds=True``. Values are serialised safely (numpy scalars, iterables,
anything else as ``repr``): recording never raises. The caller appends to a
deque that the writer drains, so no line is lost to a race. What is queued
must not change afterwards: the guard hands out fresh command objects and
request copies, and the reasons are copied into a tuple here.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .commands import command_to_dict
from .guard import Outcome

URGENT = ("safe", "refused")


def _plain(v: Any) -> Any:
    """A JSON-safe value: numpy scalars become Python numbers, iterables lists.

    Never raises: anything else is written as its ``repr``. (An iterator is read
    here; the guard has already replaced iterators in what it returns by lists.)
    """
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        f = float(v)
        return f if math.isfinite(f) else repr(f)
    if getattr(v, "ndim", None) == 0 and callable(getattr(v, "item", None)):
        try:  # numpy 0-d array
            return _plain(v.item())
        except Exception:  # noqa: BLE001
            return repr(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset | range) or hasattr(v, "__iter__"):
        try:
            return [_plain(x) for x in v]
        except Exception:  # noqa: BLE001
            return repr(v)
    return repr(v)


def _command(cmd: Any) -> dict[str, Any] | None:
    if cmd is None:
        return None
    try:
        return {k: _plain(v) for k, v in command_to_dict(cmd).items()}
    except Exception:  # noqa: BLE001 - not a command object: still record something
        return {"repr": repr(cmd)}


def outcome_to_dict(out: Outcome) -> dict[str, Any]:
    return {
        "t_ns": _plain(out.t_ns),
        "status": str(out.status),
        "request": _command(out.request),
        "command": _command(out.command),
        "reasons": [str(r) for r in out.reasons],
    }


def _same_command(a: Any, b: Any) -> bool:
    """Whether two sent commands are the same (both None, or equal fields of one type)."""
    if a is None or b is None:
        return a is b
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - odd field values: not the same, write the line
        return False


def _line(item: str | tuple) -> str:
    """One queued item as its JSON line (in the writer thread; never raises)."""
    if isinstance(item, str):
        return item
    if len(item) == 4:  # a run of repeats
        t_ns, status, cmd, n = item
        row: dict[str, Any] = {"t_ns": _plain(t_ns), "status": str(status), "repeated": n}
        if cmd is not None:  # the same command sent again n times
            row["command"] = _command(cmd)
        return json.dumps(row, default=repr)
    t_ns, status, request, cmd, reasons = item
    return json.dumps(outcome_to_dict(Outcome(status, t_ns, request, cmd, list(reasons))),
                      default=repr)


class AuditLog:
    def __init__(self, path: str | Path, flush_interval_s: float = 0.2, fsync: bool = True,
                 log_holds: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived
        self.fsync = fsync
        self.log_holds = log_holds
        # appended by the caller, drained (and serialised) by the writer: a ready line, an
        # outcome (t_ns, status, request, command, reasons) or a run of repeats
        # (t_ns, status, command, n)
        self._buf: deque[str | tuple] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._last: tuple[str, Any, tuple[str, ...]] | None = None  # status, command, reasons
        self._last_t_ns = 0
        self._repeats = 0
        self.lines = 0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(flush_interval_s,),
                                        name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, out: Outcome) -> None:
        if out.status == "hold" and out.command is None and not self.log_holds:
            return
        status, cmd, reasons = out.status, out.command, tuple(out.reasons)
        if (self._last is not None and status == self._last[0] and reasons == self._last[2]
                and _same_command(cmd, self._last[1])):
            self._repeats += 1
            self._last_t_ns = out.t_ns
            return
        self._end_repeats()
        self._last, self._last_t_ns = (status, cmd, reasons), out.t_ns
        self._buf.append((out.t_ns, status, out.request, cmd, reasons))
        if status in URGENT:
            self._wake.set()

    def _end_repeats(self) -> None:
        if self._repeats:
            assert self._last is not None  # repeats follow a first line
            self._buf.append((self._last_t_ns, self._last[0], self._last[1], self._repeats))
            self._repeats = 0

    def event(self, event: str, t_ns: int, **info: Any) -> None:
        """A control-plane event (arm, disarm, set_limits ...), written promptly."""
        self._end_repeats()
        self._last = None
        self._buf.append(json.dumps({"t_ns": _plain(t_ns), "event": event,
                                     **{k: _plain(v) for k, v in info.items()}}, default=repr))
        self._wake.set()

    def _run(self, interval: float) -> None:
        while not self._closing:
            self._wake.wait(interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._lock:
            buf, lines = self._buf, []
            while buf:  # popleft is atomic against the caller's append: nothing is lost
                item = buf.popleft()
                lines.append(_line(item))
                if not isinstance(item, str):
                    # Serialising holds the GIL: let a waiting loop thread take it between
                    # lines, instead of after the interpreter's switch interval (5 ms).
                    time.sleep(0)
            if not lines or self._f.closed:
                return
            try:
                self._f.write("\n".join(lines) + "\n")
                self._f.flush()
                if self.fsync:
                    os.fsync(self._f.fileno())
                self.lines += len(lines)
            except OSError as exc:  # disk full: the session log says so; never raise here
                self.error = str(exc)

    def close(self) -> None:
        if self._f.closed:
            return
        self._end_repeats()
        self._closing = True
        self._wake.set()
        self._thread.join(5)
        self.flush()
        with self._lock:
            self._f.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_audit(path: str | Path, last: int | None = None) -> list[dict[str, Any]]:
    """All lines, or only the ``last`` ones (read from the end: logs grow large)."""
    if last is None:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        pos, data = f.tell(), b""
        while pos > 0 and data.count(b"\n") <= last:
            step = min(pos, 1 << 16)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    if pos > 0:
        lines = lines[1:]  # the first may be cut
    return [json.loads(ln) for ln in lines[-last:]]
