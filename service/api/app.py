"""The control plane: REST + WebSocket over the session manager.

Every route needs a token (``service.api.deps.access``, app-wide) except the few
in ``deps.PUBLIC_PATHS``: reads need the ``read`` scope, anything that changes a
session ``control``, and anything that can change stimulation (arming, limits)
``stim``.

``create_app`` builds the objects the routes use and puts them on ``app.state``
(``service.api.deps`` reads them from there); the routes are in ``service.api.routes``,
one router per group, and the request/response bodies in ``service.api.schemas``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from service import __version__
from service.api.auth import FailedAuthLimiter, authenticate, ensure_admin_token
from service.api.deps import access
from service.api.guard import RequestGuard
from service.api.live import Fanout
from service.api.models import ModelJobs
from service.api.routes import models as models_routes
from service.api.routes import ops, recordings, sessions, stimulation, stream
from service.api.settings import Settings
from service.api.ui import mount_ui
from service.cluster.redis_streams import redact
from service.session.control import SessionUnreachable
from service.session.manager import (
    ACTIVE,
    InvalidConfig,
    SessionError,
    SessionManager,
    SessionNotFound,
)
from service.session.store import Store
from service.wire import protocol as P

__all__ = ["Settings", "create_app"]


# ---------------------------------------------------------------------- metrics
log = logging.getLogger(__name__)

#: the safety guard's statuses (stim.guard.Status), one Prometheus series each
STIM_STATUSES = ("sent", "clamped", "refused", "safe", "hold")


class SessionCollector:
    """Prometheus collector that asks every running session for its metrics at scrape time."""

    def __init__(self, manager: SessionManager):
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        lat = HistogramMetricFamily("spikeloop_stage_latency_seconds",
                                    "Per-stage loop latency", labels=["session", "stage"])
        bins = CounterMetricFamily("spikeloop_bins", "Bins decoded", labels=["session"])
        rej = CounterMetricFamily("spikeloop_rejected_frames", "Frames rejected, by reason",
                                  labels=["session", "reason"])
        ctr = CounterMetricFamily("spikeloop_events", "Loop counters (gaps, drops, stim ...)",
                                  labels=["session", "counter"])
        stim = CounterMetricFamily(
            "spikeloop_stim_commands", "Stimulation decisions by the safety guard's status "
            "(alert on refused or safe while armed)", labels=["session", "status"])
        missed = CounterMetricFamily(
            "spikeloop_missed_bins", "Bins whose command was later than one bin, by cause: "
            "platform (CPU taken away, late wake) or software (the work overran)",
            labels=["session", "cause"])
        layout = GaugeMetricFamily(
            "spikeloop_realtime_layout", "Real-time layout items of the session process (1 "
            "in the state it is in; refused items: see the status for how to grant them)",
            labels=["session", "item", "state"])
        states = GaugeMetricFamily("spikeloop_sessions", "Sessions by state", labels=["state"])
        by_state: dict[str, int] = {}
        for row in self.manager.store.list_sessions():
            by_state[row["state"]] = by_state.get(row["state"], 0) + 1
            if row["state"] not in ACTIVE:
                continue
            try:
                m = self.manager.control(row["id"], {"cmd": "metrics"}, timeout_ms=300)["metrics"]
            except (SessionUnreachable, SessionError, RuntimeError):
                continue
            sid = row["id"]
            for stage, h in m["stages"].items():
                cum, buckets = 0, []
                for edge, c in zip([*h["buckets_us"], float("inf")], h["counts"], strict=True):
                    cum += c
                    buckets.append((str(edge / 1e6) if edge != float("inf") else "+Inf", cum))
                lat.add_metric([sid, stage], buckets, h["sum_us"] / 1e6)
            bins.add_metric([sid], m["counters"].get("bins", 0))
            for reason in P.REJECT_REASONS:
                rej.add_metric([sid, reason], m["rejected"].get(reason, 0))
            for name, v in m["counters"].items():
                ctr.add_metric([sid, name], v)
            for status in STIM_STATUSES:
                stim.add_metric([sid, status], m["counters"].get(f"stim_{status}", 0))
            for cause in ("platform", "software"):
                missed.add_metric([sid, cause], m["counters"].get(f"missed_bins_{cause}", 0))
            for item in (m.get("realtime") or {}).get("items", []):
                layout.add_metric([sid, item["item"], item["state"]], 1)
        for s, n in by_state.items():
            states.add_metric([s], n)
        yield from (lat, bins, rej, ctr, stim, missed, layout, states)


def mount_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the installed ``swagger-ui-bundle`` package, so the API
    page works on a rig with no internet (FastAPI's default loads it from a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title="spikeloop API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png")


class LiveCollector:
    """The live WebSocket streams: shared feeds, their followers, messages they lost."""

    def __init__(self, fanout: Fanout):
        self.fanout = fanout

    def collect(self) -> Iterator[Metric]:
        feeds = GaugeMetricFamily("spikeloop_live_feeds", "Session sockets followed for "
                                  "WebSocket streams (one subscriber each, however many "
                                  "followers)")
        feeds.add_metric([], len(self.fanout.feeds))
        followers = GaugeMetricFamily("spikeloop_live_followers", "WebSocket streams open")
        followers.add_metric([], self.fanout.followers())
        dropped = CounterMetricFamily("spikeloop_live_dropped_messages", "Messages lost by "
                                      "WebSocket followers that read too slowly (closed ones)")
        dropped.add_metric([], self.fanout.dropped)
        yield from (feeds, followers, dropped)


# ---------------------------------------------------------------------- errors
async def _not_found(request: Request, exc: SessionNotFound) -> JSONResponse:
    return JSONResponse({"detail": f"no session with id {exc.args[0]!r}; "
                                   "GET /sessions lists them"}, status_code=404)


async def _invalid(request: Request, exc: InvalidConfig) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def _conflict(request: Request, exc: SessionError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    """Redis between the control plane and its workers failed: a one-line reason,
    503 (unreachable) or 504 (timed out), never a 500 with a traceback."""
    import redis

    settings: Settings = request.app.state.settings
    timeout = isinstance(exc, redis.TimeoutError)
    what = "timed out" if timeout else "is unreachable"
    return JSONResponse(
        {"detail": f"Redis at {redact(settings.redis_url or '')} {what} "
                   f"({type(exc).__name__}: {exc}); the workers' sessions run on, "
                   "retry when Redis is back"}, status_code=504 if timeout else 503)


async def _unprocessable(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with each rejected value that holds a password shown redacted."""
    errors = [e | {"input": redact(e["input"])} if isinstance(e.get("input"), str) else e
              for e in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


async def _unreachable(request: Request, exc: SessionUnreachable) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=504)


# ---------------------------------------------------------------------- lifespan
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    manager: SessionManager = app.state.manager
    settings: Settings = app.state.settings
    app.state.reattach = await asyncio.to_thread(manager.reattach)
    watch = (asyncio.create_task(_watch_workers(manager, settings.worker_timeout_s))
             if app.state.cluster is not None else None)
    sync = asyncio.create_task(_reconcile(manager))
    yield
    sync.cancel()
    if watch is not None:
        watch.cancel()
    if settings.stop_sessions_on_shutdown:
        await asyncio.to_thread(manager.stop_all)
    await asyncio.to_thread(app.state.models.stop_all)
    app.state.store.close()


async def _reconcile(manager: SessionManager) -> None:
    """Keep the store in step with the session processes (GETs only read)."""
    while True:
        await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(manager.reconcile)
        except Exception as exc:  # keep reconciling; say what failed
            log.warning("reconcile failed: %s", exc)


async def _watch_workers(manager: SessionManager, worker_timeout_s: float) -> None:
    """Fail over lost workers' sessions, twice per heartbeat timeout."""
    while True:
        await asyncio.sleep(min(0.5, worker_timeout_s / 4))
        try:
            await asyncio.to_thread(manager.check_workers)
        except Exception as exc:  # Redis down: keep watching, say so
            log.warning("worker check failed: %s", exc)


# ---------------------------------------------------------------------- app
def create_app(settings: Settings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.data_dir / "spikeloop.db")
    cluster = None
    if settings.redis_url:
        from service.cluster.registry import Cluster

        cluster = Cluster(settings.redis_url, settings.worker_timeout_s)
    manager = SessionManager(settings.data_dir, store, cluster=cluster,
                             public_outputs=settings.public_outputs,
                             max_sessions=settings.max_sessions)
    models = ModelJobs(manager.models_dir, manager.run_dir, settings.data_dir,
                       manager.recordings_dir)
    token_path = ensure_admin_token(store, settings.data_dir) if settings.auth else None
    registry = CollectorRegistry()
    registry.register(SessionCollector(manager))
    fanout = Fanout()
    registry.register(LiveCollector(fanout))

    app = FastAPI(
        title="spikeloop",
        version=__version__,
        description="Closed-loop BCI control plane: sessions, decoders, stimulation safety.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # served below from the installed package, not a CDN
        dependencies=[Depends(access)],  # every route needs a token unless it is public
    )
    mount_docs(app)

    def token_known(token: str) -> bool:
        return authenticate(store, token) is not None

    limiter = FailedAuthLimiter(settings.auth_max_failures)
    app.add_middleware(RequestGuard, token_known=token_known if settings.auth else None,
                       limiter=limiter, max_body=settings.max_body_bytes,
                       max_websockets=settings.max_websockets)
    app.state.auth_limiter = limiter
    app.state.manager = manager
    app.state.models = models
    app.state.store = store
    app.state.settings = settings
    app.state.cluster = cluster
    app.state.token_path = token_path
    app.state.registry = registry
    app.state.fanout = fanout

    # app.exception_handler(...)(f), as the decorator does: add_exception_handler's
    # annotation would take only handlers of any Exception
    app.exception_handler(SessionNotFound)(_not_found)
    app.exception_handler(InvalidConfig)(_invalid)
    app.exception_handler(RequestValidationError)(_unprocessable)
    app.exception_handler(SessionError)(_conflict)
    if settings.redis_url:
        import redis

        app.exception_handler(redis.RedisError)(_redis_down)
    app.exception_handler(SessionUnreachable)(_unreachable)

    for router in (ops.router, sessions.router, stimulation.router, models_routes.router,
                   recordings.router, stream.router):
        app.include_router(router)

    mount_ui(app, manager)  # operator dashboard at /ui/ (static page + raster WebSocket)
    return app
