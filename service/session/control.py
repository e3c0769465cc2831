"""Control-plane side of the control channel to a session process.

One DEALER socket per request: a session that died or hangs can never wedge
the API, it only makes one call time out.
"""

from __future__ import annotations

import json
from typing import Any

import zmq


class SessionUnreachable(RuntimeError):
    """The session process did not answer within the timeout."""


def call(endpoint: str, request: dict[str, Any], timeout_ms: int = 2000,
         with_extra: bool = False) -> Any:
    ctx: zmq.Context = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(request).encode())
        if not sock.poll(timeout_ms):
            raise SessionUnreachable(
                f"session at {endpoint} did not answer {request.get('cmd')!r} "
                f"within {timeout_ms} ms")
        frames = sock.recv_multipart()
    finally:
        sock.close(0)
    reply = json.loads(frames[0])
    if not reply.get("ok"):
        raise RuntimeError(reply.get("error", "session refused the request"))
    return (reply, frames[1:]) if with_extra else reply
