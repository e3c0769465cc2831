"""Dependencies shared by the routers: the objects ``create_app`` puts on ``app.state``,
and the token checks (reads are open; changes need ``control``, stimulation ``stim``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException
from fastapi.params import Depends as DependsParam
from prometheus_client import CollectorRegistry
from starlette.requests import HTTPConnection

from service.api.auth import hash_token
from service.api.live import Fanout
from service.api.models import ModelJobs
from service.api.settings import Settings
from service.cluster.registry import Cluster
from service.session.manager import SessionManager
from service.session.store import Store
from stim.limits import SafetyLimits


# ---------------------------------------------------------------------- app.state
# HTTPConnection, not Request: the WebSocket route uses these too.
async def get_manager(conn: HTTPConnection) -> SessionManager:
    return conn.app.state.manager


async def get_models(conn: HTTPConnection) -> ModelJobs:
    return conn.app.state.models


async def get_store(conn: HTTPConnection) -> Store:
    return conn.app.state.store


async def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings


async def get_cluster(conn: HTTPConnection) -> Cluster | None:
    """The Redis worker registry, or None when sessions run on this host only."""
    return conn.app.state.cluster


async def get_token_path(conn: HTTPConnection) -> Path | None:
    """Where the admin token was written (None without auth)."""
    return conn.app.state.token_path


async def get_fanout(conn: HTTPConnection) -> Fanout:
    """The live feeds that the WebSocket streams share (one per session and socket)."""
    return conn.app.state.fanout


async def get_registry(conn: HTTPConnection) -> CollectorRegistry:
    """The Prometheus registry served at /metrics."""
    return conn.app.state.registry


ManagerDep = Annotated[SessionManager, Depends(get_manager)]
ModelsDep = Annotated[ModelJobs, Depends(get_models)]
StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ClusterDep = Annotated[Cluster | None, Depends(get_cluster)]
FanoutDep = Annotated[Fanout, Depends(get_fanout)]
TokenPathDep = Annotated[Path | None, Depends(get_token_path)]
RegistryDep = Annotated[CollectorRegistry, Depends(get_registry)]


# ---------------------------------------------------------------------- auth
def check_scope(conn: HTTPConnection, authorization: str | None, scope: str) -> None:
    """Raise 401/403 unless ``authorization`` carries a token with ``scope``."""
    state = conn.app.state
    if not state.settings.auth:
        return
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(
            401, f"this call needs a token with the '{scope}' scope: send "
                 f"'Authorization: Bearer <token>' (admin token: {state.token_path})",
            headers={"WWW-Authenticate": "Bearer"})
    scopes = state.store.token_scopes(hash_token(authorization[7:].strip()))
    if scopes is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    if scope not in scopes:
        raise HTTPException(403, f"token lacks the '{scope}' scope (has {scopes})")


def require(scope: str) -> DependsParam:
    """A route dependency: the request's token must have ``scope``."""
    def dep(conn: HTTPConnection,
            authorization: str | None = Header(None, description="Bearer <token>")) -> None:
        check_scope(conn, authorization, scope)
    return Depends(dep)


def stim_limits_need_stim(conn: HTTPConnection, limits: Any, authorization: str | None) -> None:
    """Safety limits other than the server's defaults are a stimulation decision: they
    need the ``stim`` scope wherever they come in (create, replay), as in PUT /limits."""
    if limits is None:
        return
    try:
        custom = SafetyLimits.model_validate(limits) != SafetyLimits()
    except ValueError:  # invalid limits are refused further on, with their reason
        custom = True
    if custom:
        try:
            check_scope(conn, authorization, "stim")
        except HTTPException as exc:
            raise HTTPException(exc.status_code, f"stim.limits other than the defaults: "
                                                 f"{exc.detail}") from None
