"""The control plane: REST + WebSocket over the session manager.

Reads are open on the loopback interface; anything that changes a session
needs a token with the ``control`` scope, and anything that can change
stimulation (arming, limits) needs ``stim``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from starlette.websockets import WebSocketDisconnect

from service import __version__
from service.api.auth import ensure_admin_token, hash_token
from service.api.guard import RequestGuard
from service.api.models import ModelJobs
from service.api.schemas import AdaptIn, ArmOut, ModelIn, ReplayIn, SessionOut, TrainIn
from service.api.settings import Settings
from service.api.ui import mount_ui, wait_closed
from service.cluster.redis_streams import redact
from service.recording import storage
from service.session.config import SessionConfig
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
from stim.limits import SafetyLimits

__all__ = ["Settings", "create_app"]


# ---------------------------------------------------------------------- metrics
log = logging.getLogger(__name__)

#: the safety guard's statuses (stim.guard.Status), one Prometheus series each
STIM_STATUSES = ("sent", "clamped", "refused", "safe", "hold")


class SessionCollector:
    """Prometheus collector that asks every running session for its metrics at scrape time."""

    def __init__(self, manager: SessionManager):
        self.manager = manager

    def collect(self):
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
        for s, n in by_state.items():
            states.add_metric([s], n)
        yield from (lat, bins, rej, ctr, stim, states)


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

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.reattach = await asyncio.to_thread(manager.reattach)
        watch = asyncio.create_task(_watch_workers()) if cluster is not None else None
        sync = asyncio.create_task(_reconcile())
        yield
        sync.cancel()
        if watch is not None:
            watch.cancel()
        if settings.stop_sessions_on_shutdown:
            await asyncio.to_thread(manager.stop_all)
        await asyncio.to_thread(models.stop_all)
        store.close()

    async def _reconcile() -> None:
        """Keep the store in step with the session processes (GETs only read)."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(manager.reconcile)
            except Exception as exc:  # keep reconciling; say what failed
                log.warning("reconcile failed: %s", exc)

    async def _watch_workers() -> None:
        """Fail over lost workers' sessions, twice per heartbeat timeout."""
        while True:
            await asyncio.sleep(min(0.5, settings.worker_timeout_s / 4))
            try:
                await asyncio.to_thread(manager.check_workers)
            except Exception as exc:  # Redis down: keep watching, say so
                log.warning("worker check failed: %s", exc)

    app = FastAPI(
        title="spikeloop",
        version=__version__,
        description="Closed-loop BCI control plane: sessions, decoders, stimulation safety.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # served below from the installed package, not a CDN
    )
    mount_docs(app)

    def token_known(token: str) -> bool:
        return store.token_scopes(hash_token(token)) is not None

    app.add_middleware(RequestGuard, token_known=token_known if settings.auth else None,
                       max_body=settings.max_body_bytes, max_websockets=settings.max_websockets)
    app.state.manager = manager
    app.state.settings = settings
    app.state.token_path = token_path

    # ------------------------------------------------------------------ auth
    def check_scope(authorization: str | None, scope: str) -> None:
        """Raise 401/403 unless ``authorization`` carries a token with ``scope``."""
        if not settings.auth:
            return
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(
                401, f"this call needs a token with the '{scope}' scope: send "
                     f"'Authorization: Bearer <token>' (admin token: {token_path})",
                headers={"WWW-Authenticate": "Bearer"})
        scopes = store.token_scopes(hash_token(authorization[7:].strip()))
        if scopes is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        if scope not in scopes:
            raise HTTPException(403, f"token lacks the '{scope}' scope (has {scopes})")

    def require(scope: str):
        def dep(authorization: str | None = Header(None, description="Bearer <token>")) -> None:
            check_scope(authorization, scope)
        return Depends(dep)

    def stim_limits_need_stim(limits: Any, authorization: str | None) -> None:
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
                check_scope(authorization, "stim")
            except HTTPException as exc:
                raise HTTPException(exc.status_code, f"stim.limits other than the defaults: "
                                                     f"{exc.detail}") from None

    # ------------------------------------------------------------------ errors
    @app.exception_handler(SessionNotFound)
    async def _not_found(request: Request, exc: SessionNotFound):
        return JSONResponse({"detail": f"no session with id {exc.args[0]!r}; "
                                       "GET /sessions lists them"}, status_code=404)

    @app.exception_handler(InvalidConfig)
    async def _invalid(request: Request, exc: InvalidConfig):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(SessionError)
    async def _conflict(request: Request, exc: SessionError):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    if settings.redis_url:
        import redis

        @app.exception_handler(redis.RedisError)
        async def _redis_down(request: Request, exc: redis.RedisError):
            """Redis between the control plane and its workers failed: a one-line reason,
            503 (unreachable) or 504 (timed out), never a 500 with a traceback."""
            timeout = isinstance(exc, redis.TimeoutError)
            what = "timed out" if timeout else "is unreachable"
            return JSONResponse(
                {"detail": f"Redis at {redact(settings.redis_url or '')} {what} "
                           f"({type(exc).__name__}: {exc}); the workers' sessions run on, "
                           "retry when Redis is back"}, status_code=504 if timeout else 503)

    @app.exception_handler(SessionUnreachable)
    async def _unreachable(request: Request, exc: SessionUnreachable):
        return JSONResponse({"detail": str(exc)}, status_code=504)

    # ------------------------------------------------------------------ health
    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/workers", tags=["ops"])
    def workers() -> dict[str, Any]:
        """Workers registered in Redis (scale-out), and the recent failovers."""
        if cluster is None:
            return {"redis": None, "workers": [], "failovers": []}
        return {"redis": redact(settings.redis_url or ""),
                "workers": [w.as_dict() for w in cluster.workers()],
                "failovers": list(manager.failovers)}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/keys/public", tags=["ops"])
    def service_public_key() -> dict[str, str]:
        """The CurveZMQ public key sessions use: allow it at a secured source, and give it to
        stimulators that connect to a secured output."""
        from service.wire.curve import ensure_cert, public_key

        _, secret = ensure_cert(manager.keys_dir, "session")
        return {"public_key": public_key(secret)}

    # ------------------------------------------------------------------ sessions
    @app.get("/sessions", response_model=list[SessionOut], tags=["sessions"])
    def list_sessions():
        return manager.list()

    @app.post("/sessions", response_model=SessionOut, status_code=201, tags=["sessions"],
              dependencies=[require("control")])
    def create_session(config: SessionConfig, authorization: str | None = Header(None)):
        stim_limits_need_stim(config.stim.limits, authorization)
        return manager.create(config)

    @app.get("/sessions/{sid}", response_model=SessionOut, tags=["sessions"])
    def get_session(sid: str):
        return manager.get(sid)

    @app.post("/sessions/{sid}/start", response_model=SessionOut, tags=["sessions"],
              dependencies=[require("control")])
    def start_session(sid: str):
        return manager.start(sid)

    @app.post("/sessions/{sid}/stop", response_model=SessionOut, tags=["sessions"],
              dependencies=[require("control")])
    def stop_session(sid: str):
        return manager.stop(sid)

    @app.delete("/sessions/{sid}", status_code=204, tags=["sessions"],
                dependencies=[require("control")])
    def delete_session(sid: str) -> Response:
        manager.delete(sid)
        return Response(status_code=204)

    @app.get("/sessions/{sid}/metrics", tags=["sessions"])
    def session_metrics(sid: str) -> dict[str, Any]:
        return manager.control(sid, {"cmd": "metrics"})["metrics"]

    @app.get("/sessions/{sid}/latency", tags=["sessions"])
    def session_latency(sid: str) -> dict[str, Any]:
        """Raw end-to-end samples (frame received -> stim sent, ns) of the last bins."""
        _, extra = manager.control(sid, {"cmd": "latency"}, timeout_ms=5000, with_extra=True)
        return {"e2e_ns": np.frombuffer(extra[0], np.int64).tolist()}

    @app.post("/sessions/{sid}/adapt", tags=["sessions"], dependencies=[require("control")])
    def set_adapt(sid: str, body: AdaptIn) -> dict[str, Any]:
        """Online recalibration on or off, from the next bin (the decoder adapts towards
        the behaviour topic; ``adapting`` says whether the installed decoder does)."""
        reply = manager.control(sid, {"cmd": "adapt", "enabled": body.enabled})
        return {"adapt": reply["adapt"], "adapting": reply["adapting"]}

    @app.post("/sessions/{sid}/model", tags=["sessions"], dependencies=[require("control")])
    def swap_model(sid: str, body: ModelIn) -> dict[str, Any]:
        """Install a stored model in a running session from the next bin (recorded, so
        verify reproduces the swap). Refused with the reason when the model does not fit
        the session's channels or its policy."""
        return {"decoder": manager.control(sid, {"cmd": "model", "name": body.name})["decoder"]}

    # ------------------------------------------------------------------ stimulation
    @app.post("/sessions/{sid}/arm", response_model=ArmOut, tags=["stimulation"],
              dependencies=[require("stim")])
    def arm(sid: str):
        return {"armed": manager.control(sid, {"cmd": "arm"})["armed"]}

    @app.post("/sessions/{sid}/disarm", response_model=ArmOut, tags=["stimulation"],
              dependencies=[require("stim")])
    def disarm(sid: str):
        return {"armed": manager.control(sid, {"cmd": "disarm"})["armed"]}

    @app.get("/sessions/{sid}/audit", tags=["stimulation"])
    def audit_log(sid: str, limit: int = Query(200, ge=1, le=100_000),
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

    @app.get("/sessions/{sid}/limits", response_model=SafetyLimits, tags=["stimulation"])
    def get_limits(sid: str):
        row = manager.get(sid)
        if row["live"] and "limits" in row["live"]:
            return row["live"]["limits"]
        return row["config"]["stim"]["limits"]

    @app.put("/sessions/{sid}/limits", response_model=SafetyLimits, tags=["stimulation"],
             dependencies=[require("stim")])
    def put_limits(sid: str, limits: SafetyLimits):
        return manager.set_limits(sid, limits)

    # ------------------------------------------------------------------ models
    @app.get("/models", tags=["models"])
    def list_models() -> list[dict[str, Any]]:
        """Stored decoders (by name, usable as a session's ``decoder.model``) and jobs."""
        return models.list()

    @app.get("/models/{name}", tags=["models"])
    def get_model(name: str) -> dict[str, Any]:
        try:
            return models.get(name)
        except (KeyError, ValueError):
            raise HTTPException(404, f"no model {name!r}; GET /models lists them") from None

    @app.post("/models", status_code=202, tags=["models"], dependencies=[require("control")])
    def train_model(body: TrainIn) -> dict[str, Any]:
        """Train a decoder in a separate process; poll GET /models/{name} for progress."""
        try:
            return models.train(body.name, body.source, body.kind, body.epochs, body.seed,
                                body.replace)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        except RuntimeError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.delete("/models/{name}/job", tags=["models"], dependencies=[require("control")])
    def cancel_training(name: str) -> dict[str, Any]:
        """Cancel a running training job."""
        try:
            return models.cancel(name)
        except KeyError as exc:
            raise HTTPException(404, f"{exc.args[0]}; GET /models lists the jobs") from None

    @app.delete("/models/{name}", status_code=204, tags=["models"],
                dependencies=[require("control")])
    def delete_model(name: str) -> Response:
        try:
            models.delete(name)
        except (KeyError, ValueError):
            raise HTTPException(404, f"no model {name!r}; GET /models lists them") from None
        return Response(status_code=204)

    # ------------------------------------------------------------------ recordings
    @app.get("/recordings", tags=["recordings"])
    def list_recordings() -> list[dict[str, Any]]:
        """Session logs and NWB exports, newest first, with size, duration and session."""
        return [r.to_dict() for r in storage.list_recordings(manager.recordings_dir)]

    @app.get("/recordings/{name}", tags=["recordings"], response_class=FileResponse)
    def download_recording(name: str):
        path = _recording(name)
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")

    @app.post("/recordings/{name}/replay", response_model=SessionOut, status_code=201,
              tags=["recordings"], dependencies=[require("control")])
    def replay_recording(name: str, body: ReplayIn, authorization: str | None = Header(None)):
        """Start a new session fed by this recording (its own config unless overridden)."""
        stim_limits_need_stim(((body.session or {}).get("stim") or {}).get("limits"),
                              authorization)
        return manager.replay(_recording(name), body.speed, body.session)

    def _recording(name: str) -> Path:
        try:
            return storage.resolve_recording(manager.recordings_dir, name)
        except (FileNotFoundError, ValueError) as exc:
            raise HTTPException(404, f"{exc}; GET /recordings lists them") from None

    # ------------------------------------------------------------------ stream
    @app.websocket("/sessions/{sid}/stream")
    async def stream(ws: WebSocket, sid: str, every: int = Query(1, ge=1, le=10_000)):
        """Decoded outputs (every ``every``-th bin), stim commands and heartbeats as JSON."""
        try:
            row = manager.get(sid)
        except SessionNotFound:
            await ws.close(code=4404, reason=f"no session {sid}")
            return
        if row["state"] not in ACTIVE or not row["output_endpoint"]:
            await ws.close(code=4409, reason=f"session is {row['state']}")
            return
        await ws.accept()
        ctx = zmq.asyncio.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 10_000)
        for topic in (b"decoded", b"stim", b"heartbeat"):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(row["output_endpoint"])
        closed = asyncio.create_task(wait_closed(ws))
        counts = {P.KIND_DECODED: 0, P.KIND_STIM: 0}
        try:
            # Poll with a timeout: a session that stops sends nothing more, and a browser
            # that leaves is only noticed by `closed`; neither may hang the handler.
            while not closed.done():
                if not await sub.poll(500):
                    st = await asyncio.to_thread(manager.store.get_session, sid)
                    if st is None or st["state"] not in ACTIVE:
                        await ws.close(code=1000, reason="session ended")
                        break
                    continue
                msg = P.decode(await sub.recv_multipart())
                h = msg.header
                # Decimate decoded bins and routine stim messages; never heartbeats, and
                # never a safety event (clamped, refused, safe): the operator must see them.
                if h.kind in counts and (h.kind == P.KIND_DECODED or
                                         h.extra.get("status") in ("sent", "hold")):
                    counts[h.kind] += 1
                    if counts[h.kind] % every:
                        continue
                if h.kind == P.KIND_DECODED:
                    await ws.send_json({"kind": h.kind, "bin": h.seq, "t_ns": h.t_ns,
                                        "decoded": np.asarray(msg.values).tolist(),
                                        "names": h.extra.get("names"),
                                        "truth": h.extra.get("truth")})
                else:
                    await ws.send_json({"kind": h.kind, "t_ns": h.t_ns, **h.extra})
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            pass
        finally:
            closed.cancel()
            sub.close(0)

    mount_ui(app, manager)  # operator dashboard at /ui/ (static page + raster WebSocket)
    return app
