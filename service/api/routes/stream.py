"""``/sessions/{sid}/stream``: a running session's outputs over a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
from fastapi import APIRouter, Query, WebSocket
from starlette.websockets import WebSocketDisconnect

from service.api.deps import FanoutDep, ManagerDep
from service.api.live import FeedKey, StreamEnded, open_session_stream, session_active, wait_closed
from service.wire import protocol as P

router = APIRouter()


@router.websocket("/sessions/{sid}/stream")
async def stream(ws: WebSocket, sid: str, manager: ManagerDep, fanout: FanoutDep,
                 every: int = Query(1, ge=1, le=10_000)):
    """Decoded outputs (every ``every``-th bin), stim commands and heartbeats as JSON."""
    row = await open_session_stream(ws, manager, sid)
    if row is None:
        return
    key = FeedKey(sid, row["output_endpoint"], (b"decoded", b"stim", b"heartbeat"))
    closed = asyncio.create_task(wait_closed(ws))
    counts = {P.KIND_DECODED: 0, P.KIND_STIM: 0}
    try:
        async with fanout.follow(key, session_active(manager, sid)) as me:
            while True:
                msg = await me.receive(closed)
                if msg is None:
                    continue
                h = msg.header
                # Decimate decoded bins and routine stim messages; never heartbeats, and
                # never a safety event (clamped, refused, safe): the operator must see them.
                if h.kind in counts and (h.kind == P.KIND_DECODED or
                                         h.extra.get("status") in ("sent", "hold")):
                    counts[h.kind] += 1
                    if counts[h.kind] % every:
                        continue
                # Every message carries the ZeroMQ message's ``seq`` (docs/protocol.md,
                # "WebSocket stream"): decoded = the bin index, stim/heartbeat = one counter.
                if h.kind == P.KIND_DECODED:
                    await ws.send_json({"kind": h.kind, "session": h.stream, "seq": h.seq,
                                        "bin": h.seq, "t_ns": h.t_ns,
                                        "decoded": np.asarray(msg.values).tolist(),
                                        "names": h.extra.get("names"),
                                        "truth": h.extra.get("truth"),
                                        "truth_names": h.extra.get("truth_names")})
                else:
                    await ws.send_json({"kind": h.kind, "session": h.stream, "seq": h.seq,
                                        "t_ns": h.t_ns, **h.extra})
    except StreamEnded as end:
        if not closed.done():
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await ws.close(code=1000, reason=str(end))
    except (WebSocketDisconnect, RuntimeError, ConnectionError):
        pass
    finally:
        closed.cancel()
