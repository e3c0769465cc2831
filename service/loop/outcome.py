"""The one serialised form of a guard outcome, as published, recorded and verified."""

from __future__ import annotations

from typing import Any

from stim.guard import Outcome


def outcome_record(out: Outcome) -> dict[str, Any]:
    """A guard outcome as recorded and compared by verify: status, command, request, reasons.

    Key order matters: verify compares recordings byte for byte.
    """
    return {"status": out.status, "command": command_fields(out.command),
            "request": command_fields(out.request), "reasons": list(out.reasons)}


def command_fields(cmd: Any) -> dict[str, Any] | None:
    """A command's fields as published and recorded (None for no command).

    A shallow ``dataclasses.asdict``: commands are flat, and this runs once per bin."""
    if cmd is None:
        return None
    return {k: getattr(cmd, k) for k in cmd.__dataclass_fields__}
