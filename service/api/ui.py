"""The operator dashboard: static page plus a spike-raster WebSocket.

The page (``service/api/dashboard/``, plain HTML/JS/canvas, no build step) uses the
existing REST endpoints and ``/sessions/{id}/stream``. Spikes are not on the
session's output stream, and the session process is the real-time hot path, so
the raster comes from here instead: the API process subscribes to the
session's *source* endpoint, collects spikes and sends a bounded summary to the
browser a few times a second. The session process does no extra work; the
source's PUB socket sends one more copy of each frame.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, WebSocket
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.websockets import WebSocketDisconnect

from service.api.deps import FanoutDep
from service.api.live import (
    FeedKey,
    StreamEnded,
    open_session_stream,
    session_active,
    wait_closed,
)
from service.session.config import SessionConfig
from service.session.manager import SessionManager
from service.wire import protocol as P

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"


class RasterBatch:
    """Spikes seen since the last send, capped so one update stays small.

    Beyond ``max_events`` an evenly strided subset is kept and ``total`` says how
    many there were: the browser shows the rate honestly and draws fewer dots.
    Pre-binned ``spikes.counts`` frames give one dot per active channel at the bin start.
    """

    def __init__(self, max_events: int):
        self.max_events = max_events
        self.ids: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.total = 0
        self.watermark_ns: int | None = None
        self.channels = 0

    def add(self, msg: P.Message) -> None:
        h = msg.header
        if h.kind == P.KIND_EVENTS:
            ids, times = msg.events()
        elif h.kind == P.KIND_COUNTS:
            ids = np.flatnonzero(msg.array())
            times = np.full(ids.size, h.t_ns, np.int64)
        else:
            return
        self.channels = h.channels
        wm = h.t_ns + (h.bin_ns if h.kind == P.KIND_COUNTS else 0)
        self.watermark_ns = wm if self.watermark_ns is None else max(self.watermark_ns, wm)
        if ids.size:
            self.ids.append(np.asarray(ids, np.int64))
            self.times.append(np.asarray(times, np.int64))
            self.total += int(ids.size)

    def take(self) -> dict[str, Any]:
        """The update to send (times in ms before the watermark), and a fresh batch."""
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64)
        times = np.concatenate(self.times) if self.times else np.zeros(0, np.int64)
        if ids.size > self.max_events:
            keep = np.linspace(0, ids.size - 1, self.max_events).astype(np.int64)
            ids, times = ids[keep], times[keep]
        wm = self.watermark_ns
        out = {"kind": "raster", "t_ns": wm, "channels": self.channels, "total": self.total,
               "ids": ids.tolist(),
               "ago_ms": np.round((wm - times) / 1e6, 2).tolist() if wm is not None else []}
        self.ids, self.times, self.total = [], [], 0
        return out


def mount_ui(app: FastAPI, manager: SessionManager) -> None:
    """Serve the dashboard at ``/ui/`` (``/`` redirects there) and its raster WebSocket."""
    app.mount("/ui/static", StaticFiles(directory=DASHBOARD_DIR), name="ui-static")

    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    if not any(getattr(r, "path", None) == "/" for r in app.routes):
        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse("/ui/")

    @app.websocket("/ui/sessions/{sid}/raster")
    async def raster(ws: WebSocket, sid: str, fanout: FanoutDep,
                     hz: float = Query(10.0, gt=0, le=20),
                     max_events: int = Query(4000, ge=100, le=50_000)):
        """Spikes of the session's source, ``hz`` updates/s, at most ``max_events`` each."""
        row = await open_session_stream(ws, manager, sid)
        if row is None:  # never connect to a source no session listens to
            return
        cfg = SessionConfig.model_validate(row["config"])
        key = FeedKey(sid, cfg.source.endpoint, (cfg.source.spikes_topic.encode(),))
        closed = asyncio.create_task(wait_closed(ws))
        batch = RasterBatch(max_events)
        loop = asyncio.get_running_loop()
        period = 1.0 / hz
        next_send = loop.time() + period
        try:
            async with fanout.follow(key, session_active(manager, sid)) as me:
                while True:
                    msg = await me.receive(closed, max(0.0, next_send - loop.time()))
                    if msg is not None:
                        batch.add(msg)
                    if loop.time() >= next_send:
                        next_send = loop.time() + period
                        await ws.send_json(batch.take())
        except (StreamEnded, WebSocketDisconnect, RuntimeError, ConnectionError):
            pass
        finally:
            closed.cancel()
