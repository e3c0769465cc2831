"""Sessions: create, list, start, stop, delete; their metrics and latency; online
adaptation and model swaps in a running session."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import ControlUser, ManagerDep, require, stim_limits_need_stim
from service.api.schemas import AdaptIn, ModelIn, SessionOut
from service.session.config import SessionConfig

router = APIRouter(tags=["sessions"])


@router.get("/sessions", response_model=list[SessionOut])
def list_sessions(manager: ManagerDep):
    return manager.list()


@router.post("/sessions", response_model=SessionOut, status_code=201,
             dependencies=[require("control")])
def create_session(config: SessionConfig, request: Request, manager: ManagerDep):
    stim_limits_need_stim(request, config.stim.limits)
    return manager.create(config)


@router.get("/sessions/{sid}", response_model=SessionOut)
def get_session(sid: str, manager: ManagerDep):
    return manager.get(sid)


@router.post("/sessions/{sid}/start", response_model=SessionOut)
def start_session(sid: str, manager: ManagerDep, who: ControlUser):
    """Start the session; the token's name is recorded and audited with the start."""
    return manager.start(sid, by=who.name)


@router.post("/sessions/{sid}/stop", response_model=SessionOut)
def stop_session(sid: str, manager: ManagerDep, who: ControlUser):
    """Stop the session (stimulation driven safe first); the token's name is recorded."""
    return manager.stop(sid, by=who.name)


@router.delete("/sessions/{sid}", status_code=204)
def delete_session(sid: str, manager: ManagerDep, who: ControlUser) -> Response:
    manager.delete(sid, by=who.name)
    return Response(status_code=204)


@router.get("/sessions/{sid}/metrics")
def session_metrics(sid: str, manager: ManagerDep) -> dict[str, Any]:
    return manager.control(sid, {"cmd": "metrics"})["metrics"]


@router.get("/sessions/{sid}/latency")
def session_latency(sid: str, manager: ManagerDep) -> dict[str, Any]:
    """Raw end-to-end samples (frame received -> stim sent, ns) of the last bins."""
    _, extra = manager.control(sid, {"cmd": "latency"}, timeout_ms=5000, with_extra=True)
    return {"e2e_ns": np.frombuffer(extra[0], np.int64).tolist()}


@router.post("/sessions/{sid}/adapt")
def set_adapt(sid: str, body: AdaptIn, manager: ManagerDep, who: ControlUser) -> dict[str, Any]:
    """Online recalibration on or off, from the next bin (the decoder adapts towards
    the behaviour topic; ``adapting`` says whether the installed decoder does)."""
    reply = manager.control(sid, {"cmd": "adapt", "enabled": body.enabled, "by": who.name})
    return {"adapt": reply["adapt"], "adapting": reply["adapting"]}


@router.post("/sessions/{sid}/model", dependencies=[require("control")])
def swap_model(sid: str, body: ModelIn, manager: ManagerDep) -> dict[str, Any]:
    """Install a stored model in a running session from the next bin (recorded, so
    verify reproduces the swap). Refused with the reason when the model does not fit
    the session's channels or its policy."""
    return {"decoder": manager.control(sid, {"cmd": "model", "name": body.name})["decoder"]}
