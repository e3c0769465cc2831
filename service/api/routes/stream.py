"""``/sessions/{sid}/stream``: a running session's outputs over a WebSocket."""

from __future__ import annotations

import asyncio

import numpy as np
import zmq
import zmq.asyncio
from fastapi import APIRouter, Query, WebSocket
from starlette.websockets import WebSocketDisconnect

from service.api.deps import ManagerDep
from service.api.ui import wait_closed
from service.session.manager import ACTIVE, SessionNotFound
from service.wire import protocol as P

router = APIRouter()


@router.websocket("/sessions/{sid}/stream")
async def stream(ws: WebSocket, sid: str, manager: ManagerDep,
                 every: int = Query(1, ge=1, le=10_000)):
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
    except (WebSocketDisconnect, RuntimeError, ConnectionError):
        pass
    finally:
        closed.cancel()
        sub.close(0)
