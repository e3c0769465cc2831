"""Recordings: list and download session logs and NWB exports, replay one as a session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from service.api.deps import ManagerDep, require, stim_limits_need_stim
from service.api.schemas import ReplayIn, SessionOut
from service.recording import storage
from service.session.manager import SessionManager

router = APIRouter(tags=["recordings"])


@router.get("/recordings")
def list_recordings(manager: ManagerDep) -> list[dict[str, Any]]:
    """Session logs and NWB exports, newest first, with size, duration and session."""
    return [r.to_dict() for r in storage.list_recordings(manager.recordings_dir)]


@router.get("/recordings/{name}", response_class=FileResponse)
def download_recording(name: str, manager: ManagerDep):
    path = _recording(manager, name)
    return FileResponse(path, filename=path.name, media_type="application/octet-stream")


@router.post("/recordings/{name}/replay", response_model=SessionOut, status_code=201,
             dependencies=[require("control")])
def replay_recording(name: str, body: ReplayIn, request: Request, manager: ManagerDep):
    """Start a new session fed by this recording (its own config unless overridden)."""
    stim_limits_need_stim(request, ((body.session or {}).get("stim") or {}).get("limits"))
    path = _recording(manager, name)
    try:
        return manager.replay(path, body.speed, body.session, body.behavior)
    except ValueError as exc:  # the file lacks what was asked (no units, no such series)
        raise HTTPException(422, str(exc)) from None


def _recording(manager: SessionManager, name: str) -> Path:
    try:
        return storage.resolve_recording(manager.recordings_dir, name)
    except (FileNotFoundError, ValueError) as exc:
        raise HTTPException(404, f"{exc}; GET /recordings lists them") from None
