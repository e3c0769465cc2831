"""Dependencies shared by the routers: the objects ``create_app`` puts on ``app.state``,
and the token checks (reads need ``read``, changes ``control``, stimulation ``stim``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException
from fastapi.params import Depends as DependsParam
from prometheus_client import CollectorRegistry
from starlette.requests import HTTPConnection

from service.api.auth import ANONYMOUS, FailedAuthLimiter, Identity, Scope, authenticate, refusal
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
#: Routes served without a token: the health check, the dashboard's page (it asks for a
#: token before it reads anything) and the API docs page. Its static files are mounts
#: (``/ui/static``, ``/docs/static``), outside the routes. Everything else needs a token:
#: reads the ``read`` scope (``access``, on every route), changes the scope their route
#: names (``require``).
PUBLIC_PATHS = frozenset({"/healthz", "/", "/ui", "/ui/", "/docs"})

#: the WebSocket subprotocol a browser offers with ``bearer.<token>`` (a browser cannot set
#: an Authorization header on a WebSocket); the server answers with this one
WS_PROTOCOL = "spikeloop"
WS_BEARER = "bearer."


def bearer(conn: HTTPConnection) -> str | None:
    """The token of a request: ``Authorization: Bearer <token>``, or on a WebSocket the
    offered subprotocol ``bearer.<token>``."""
    auth = conn.headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return auth[7:].strip()
    if conn.scope["type"] == "websocket":
        for proto in conn.scope.get("subprotocols", []):
            if proto.startswith(WS_BEARER) and len(proto) > len(WS_BEARER):
                return proto[len(WS_BEARER):]
    return None


def identify(conn: HTTPConnection, scope: Scope) -> Identity:
    """Who the request acts as; 401 (no valid token), 403 (lacks ``scope``) or 429 (this
    client failed to authenticate too often)."""
    state = conn.app.state
    if not state.settings.auth:
        return ANONYMOUS
    client = conn.client.host if conn.client else "unknown"
    limiter: FailedAuthLimiter = state.auth_limiter
    wait = limiter.retry_after(client)
    if wait > 0:
        raise HTTPException(429, f"{limiter.max_failures} failed authentications from "
                                 f"{client} in {limiter.window_s:.0f} s: retry in "
                                 f"{math.ceil(wait)} s with a valid token",
                            headers={"Retry-After": str(math.ceil(wait))})
    token = bearer(conn)
    if token is None:
        raise HTTPException(
            401, f"this call needs a token with the '{scope}' scope: send "
                 f"'Authorization: Bearer <token>' (admin token: {state.token_path}; "
                 "others: spikeloop token create NAME --scopes ...)",
            headers={"WWW-Authenticate": "Bearer"})
    who = authenticate(state.store, token)
    if who is None:
        why = refusal(state.store, token)
        limiter.failed(client, conn.url.path, why)
        raise HTTPException(401, f"{why}: ask for a new one (spikeloop token create)",
                            headers={"WWW-Authenticate": "Bearer"})
    if scope not in who.scopes:
        raise HTTPException(403, f"token {who.name!r} lacks the '{scope}' scope "
                                 f"(has {sorted(who.scopes)})")
    return who


async def access(conn: HTTPConnection) -> None:
    """On every route (``create_app`` sets it app-wide), so a new route is protected unless
    its path is in :data:`PUBLIC_PATHS`: a read (GET, WebSocket) needs the ``read`` scope
    (none with ``serve --public-read``, loopback only); a change needs the scope its route
    names with :func:`require`."""
    route = conn.scope.get("route")
    if getattr(route, "path", None) in PUBLIC_PATHS:
        return
    if conn.scope["type"] == "http" and conn.scope["method"] not in ("GET", "HEAD"):
        return
    if conn.app.state.settings.public_read and bearer(conn) is None:
        return
    identify(conn, Scope.READ)


def require(scope: str) -> DependsParam:
    """A route dependency: the request's token must have ``scope``; gives its identity."""
    needed = Scope(scope)

    def dep(conn: HTTPConnection,
            authorization: str | None = Header(None, description="Bearer <token>")
            ) -> Identity:
        return identify(conn, needed)
    return Depends(dep)


#: the identity of the token a change was made with (its name goes to the audit log)
StimUser = Annotated[Identity, require("stim")]
ControlUser = Annotated[Identity, require("control")]


def stim_limits_need_stim(conn: HTTPConnection, limits: Any) -> None:
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
            identify(conn, Scope.STIM)
        except HTTPException as exc:
            raise HTTPException(exc.status_code, f"stim.limits other than the defaults: "
                                                 f"{exc.detail}") from None
