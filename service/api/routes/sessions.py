"""Sessions: create, list, start, stop, delete; their metrics and latency; online
adaptation and model swaps in a running session."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from service.api.deps import ManagerDep, require, stim_limits_need_stim
from service.api.schemas import AdaptIn, ModelIn, SessionOut
from service.session.config import SessionConfig

router = APIRouter(tags=["sessions"])


@router.get("/sessions", response_model=list[SessionOut])
def list_sessions(manager: ManagerDep):
    return manager.list()


@router.post("/sessions", response_model=SessionOut, status_code=201,
             dependencies=[require("control")])
def create_session(config: SessionConfig, request: Request, manager: ManagerDep,
                   authorization: str | None = Header(None)):
    stim_limits_need_stim(request, config.stim.limits, authorization)
    return manager.create(config)


@router.get("/sessions/{sid}", response_model=SessionOut)
def get_session(sid: str, manager: ManagerDep):
    return manager.get(sid)


@router.post("/sessions/{sid}/start", response_model=SessionOut,
             dependencies=[require("control")])
def start_session(sid: str, manager: ManagerDep):
    return manager.start(sid)


@router.post("/sessions/{sid}/stop", response_model=SessionOut,
             dependencies=[require("control")])
def stop_session(sid: str, manager: ManagerDep):
    return manager.stop(sid)


@router.delete("/sessions/{sid}", status_code=204, dependencies=[require("control")])
def delete_session(sid: str, manager: ManagerDep) -> Response:
    manager.delete(sid)
    return Response(status_code=204)


@router.get("/sessions/{sid}/metrics")
def session_metrics(sid: str, manager: ManagerDep) -> dict[str, Any]:
    return manager.control(sid, {"cmd": "metrics"})["metrics"]


@router.get("/sessions/{sid}/latency")
def session_latency(sid: str, manager: ManagerDep) -> dict[str, Any]:
    """Raw end-to-end samples (frame received -> stim sent, ns) of the last bins."""
    _, extra = manager.control(sid, {"cmd": "latency"}, timeout_ms=5000, with_extra=True)
    return {"e2e_ns": np.frombuffer(extra[0], np.int64).tolist()}


@router.post("/sessions/{sid}/adapt", dependencies=[require("control")])
def set_adapt(sid: str, body: AdaptIn, manager: ManagerDep) -> dict[str, Any]:
    """Online recalibration on or off, from the next bin (the decoder adapts towards
    the behaviour topic; ``adapting`` says whether the installed decoder does)."""
    reply = manager.control(sid, {"cmd": "adapt", "enabled": body.enabled})
    return {"adapt": reply["adapt"], "adapting": reply["adapting"]}


@router.post("/sessions/{sid}/model", dependencies=[require("control")])
def swap_model(sid: str, body: ModelIn, manager: ManagerDep) -> dict[str, Any]:
    """Install a stored model in a running session from the next bin (recorded, so
    verify reproduces the swap). Refused with the reason when the model does not fit
    the session's channels or its policy."""
    return {"decoder": manager.control(sid, {"cmd": "model", "name": body.name})["decoder"]}
