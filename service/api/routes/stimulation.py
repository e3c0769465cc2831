"""Stimulation: arm and disarm a session's output, its audit log and its safety limits
(anything that can change stimulation needs the ``stim`` scope; the token's name is
written with each change in the audit log and the recording)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from service.api.deps import ManagerDep, StimUser
from service.api.schemas import ArmOut
from stim.limits import SafetyLimits

router = APIRouter(tags=["stimulation"])


@router.post("/sessions/{sid}/arm", response_model=ArmOut)
def arm(sid: str, manager: ManagerDep, who: StimUser):
    return {"armed": manager.control(sid, {"cmd": "arm", "by": who.name})["armed"]}


@router.post("/sessions/{sid}/disarm", response_model=ArmOut)
def disarm(sid: str, manager: ManagerDep, who: StimUser):
    return {"armed": manager.control(sid, {"cmd": "disarm", "by": who.name})["armed"]}


@router.get("/sessions/{sid}/audit")
def audit_log(sid: str, manager: ManagerDep, limit: int = Query(200, ge=1, le=100_000),
              status: str | None = Query(None, description="sent|clamped|refused|safe")
              ) -> list[dict[str, Any]]:
    """The session's audit log, newest last: every stim outcome (identical runs collapsed
    into a ``repeated`` line) and every control event (arm, disarm, limits, state)."""
    from stim.audit import read_audit

    manager.get(sid)  # 404 for an unknown session
    path = manager.audit_dir / f"{sid}.audit.jsonl"
    if not path.exists():
        return []
    if status:  # filtering needs the whole file; without it read only the tail
        return [r for r in read_audit(path) if r.get("status") == status][-limit:]
    return read_audit(path, last=limit)


@router.get("/sessions/{sid}/limits", response_model=SafetyLimits)
def get_limits(sid: str, manager: ManagerDep):
    row = manager.get(sid)
    if row["live"] and "limits" in row["live"]:
        return row["live"]["limits"]
    return row["config"]["stim"]["limits"]


@router.put("/sessions/{sid}/limits", response_model=SafetyLimits)
def put_limits(sid: str, limits: SafetyLimits, manager: ManagerDep, who: StimUser):
    return manager.set_limits(sid, limits, by=who.name)
