"""Health, the worker registry, Prometheus metrics and the service's public key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import __version__
from service.api.deps import ClusterDep, ManagerDep, RegistryDep, SettingsDep
from service.cluster.redis_streams import redact

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"ok": True, "version": __version__}


@router.get("/workers")
def workers(manager: ManagerDep, settings: SettingsDep, cluster: ClusterDep) -> dict[str, Any]:
    """Workers registered in Redis (scale-out), and the recent failovers."""
    if cluster is None:
        return {"redis": None, "workers": [], "failovers": []}
    return {"redis": redact(settings.redis_url or ""),
            "workers": [w.as_dict() for w in cluster.workers()],
            "failovers": list(manager.failovers)}


@router.get("/metrics", response_class=Response)
def metrics(registry: RegistryDep) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/keys/public")
def service_public_key(manager: ManagerDep) -> dict[str, str]:
    """The CurveZMQ public key sessions use: allow it at a secured source, and give it to
    stimulators that connect to a secured output."""
    from service.wire.curve import ensure_cert, public_key

    _, secret = ensure_cert(manager.keys_dir, "session")
    return {"public_key": public_key(secret)}
