"""Append-only audit log of what the guard was asked and what it did.

One JSON line per outcome: time, status, request, command sent, reasons.
Control events (arm, disarm, limit changes) go in the same file with
``"event"`` set, so one file tells the whole story of a session.

Cost on the hot path is one ``json.dumps`` and a list append. Lines are
written when ``flush_every`` have accumulated, on :meth:`flush`, and at once
for safety-relevant lines (``safe`` and ``refused`` outcomes, control events).
fsync policy: every write is followed by ``os.fsync`` when ``fsync=True``
(the default), so a line that was written survives a crash of the machine;
the buffered hot-path lines (``sent``/``clamped``) are at risk for at most
``flush_every`` outcomes. ``hold`` outcomes (nothing new sent) are not logged
unless ``log_holds=True``: at 1 kHz they would be most of the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .commands import command_to_dict
from .guard import Outcome

URGENT = ("safe", "refused")


def outcome_to_dict(out: Outcome) -> dict[str, Any]:
    return {
        "t_ns": int(out.t_ns),
        "status": out.status,
        "request": None if out.request is None else command_to_dict(out.request),
        "command": None if out.command is None else command_to_dict(out.command),
        "reasons": list(out.reasons),
    }


class AuditLog:
    def __init__(self, path: str | Path, flush_every: int = 256, fsync: bool = True,
                 log_holds: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived
        self.flush_every = max(1, int(flush_every))
        self.fsync = fsync
        self.log_holds = log_holds
        self._buf: list[str] = []
        self.lines = 0

    def record(self, out: Outcome) -> None:
        if out.status == "hold" and not self.log_holds:
            return
        self._buf.append(json.dumps(outcome_to_dict(out), default=float))
        if out.status in URGENT or len(self._buf) >= self.flush_every:
            self.flush()

    def event(self, event: str, t_ns: int, **info: Any) -> None:
        """A control-plane event (arm, disarm, set_limits ...), written at once."""
        self._buf.append(json.dumps({"t_ns": int(t_ns), "event": event, **info}, default=str))
        self.flush()

    def flush(self) -> None:
        if not self._buf or self._f.closed:
            return
        self._f.write("\n".join(self._buf) + "\n")
        self.lines += len(self._buf)
        self._buf.clear()
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
