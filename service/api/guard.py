"""Bounded requests: the control plane reads no body it has not agreed to read.

A pure ASGI middleware in front of every route:

* a request that changes something (POST, PUT, PATCH, DELETE) must carry a valid
  token *before* its body is read, so an unauthenticated caller cannot make the
  server buffer or parse anything (the route still checks the scope it needs);
  a client that presented bad tokens too often is answered 429 (``FailedAuthLimiter``);
* a body is at most ``max_body`` bytes (413 otherwise, whether the length is
  declared or the body is streamed);
* a JSON body nests at most ``max_depth`` levels (422 otherwise), checked on the
  raw bytes before any parser recurses into it.

WebSocket connections are counted here too (``max_websockets``; 1013 "try again
later" beyond it) and must come from a page of this server when a browser says
where it comes from (``Origin``). A browser sends its token as the subprotocol
``bearer.<token>`` beside ``spikeloop``; the accepted connection names ``spikeloop``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from service.api.auth import FailedAuthLimiter
from service.api.deps import WS_PROTOCOL, bearer

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """True when the JSON text nests objects/arrays deeper than ``max_depth``."""
    depth = 0
    in_string = escaped = False
    for b in body:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:  # quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                return True
        elif b in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


class RequestGuard:
    def __init__(self, app: ASGIApp, token_known: Callable[[str], bool] | None,
                 limiter: FailedAuthLimiter | None = None,
                 max_body: int = 1 << 20, max_depth: int = 32, max_websockets: int = 64):
        self.app = app
        self.token_known = token_known  # None: authentication is off
        self.limiter = limiter
        self.max_body = max_body
        self.max_depth = max_depth
        self.max_websockets = max_websockets
        self.websockets = 0
        self.refused: dict[str, int] = {"unauthenticated": 0, "too_large": 0, "too_deep": 0,
                                        "websockets_full": 0, "bad_origin": 0,
                                        "rate_limited": 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # ------------------------------------------------------------------ http
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        if scope["method"] in WRITE_METHODS and self.token_known is not None:
            client = (scope.get("client") or ("unknown",))[0]
            wait = self.limiter.retry_after(client) if self.limiter is not None else 0.0
            if wait > 0:
                self.refused["rate_limited"] += 1
                await _reply(send, 429, f"too many failed authentications from {client}: "
                                        f"retry in {math.ceil(wait)} s with a valid token",
                             {"retry-after": str(math.ceil(wait))})
                return
            token = bearer(HTTPConnection(scope)) or ""
            if not token or not self.token_known(token):
                if token and self.limiter is not None:
                    self.limiter.failed(client, scope["path"],
                                        "unknown, expired or revoked token")
                self.refused["unauthenticated"] += 1
                await _reply(send, 401, "this call needs a token with the scope it changes "
                                        "('control' for sessions, 'stim' for stimulation): "
                                        "send 'Authorization: Bearer <token>' that is "
                                        "neither expired nor revoked (the admin token, or "
                                        "spikeloop token create NAME --scopes ...)",
                             {"www-authenticate": "Bearer"})
                return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            self.refused["too_large"] += 1
            await _reply(send, 413, f"request body over {self.max_body} bytes")
            return
        if scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_body:
                self.refused["too_large"] += 1
                await _reply(send, 413, f"request body over {self.max_body} bytes")
                return
        if "json" in headers.get("content-type", "") and \
                json_depth_exceeds(bytes(body), self.max_depth):
            self.refused["too_deep"] += 1
            await _reply(send, 422, f"JSON nested deeper than {self.max_depth} levels")
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    # ------------------------------------------------------------------ websocket
    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        origin = headers.get("origin")
        if origin and not _same_host(origin, headers.get("host", "")):
            self.refused["bad_origin"] += 1
            log.warning("WebSocket from origin %s refused (host %s)", origin,
                        headers.get("host"))
            await send({"type": "websocket.close", "code": 1008,
                        "reason": "cross-origin WebSocket refused"})
            return
        if self.websockets >= self.max_websockets:
            self.refused["websockets_full"] += 1
            await send({"type": "websocket.close", "code": 1013,
                        "reason": f"at most {self.max_websockets} live streams; try later"})
            return
        self.websockets += 1
        offered = WS_PROTOCOL in scope.get("subprotocols", [])

        async def accept_named(message: Message) -> None:
            # A browser that offered subprotocols fails the handshake unless one is chosen.
            if message["type"] == "websocket.accept" and offered and \
                    not message.get("subprotocol"):
                message = {**message, "subprotocol": WS_PROTOCOL}
            await send(message)

        try:
            await self.app(scope, receive, accept_named)
        finally:
            self.websockets -= 1


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _same_host(origin: str, host: str) -> bool:
    o = urlsplit(origin)
    return bool(o.netloc) and o.netloc.lower() == host.lower()


async def _reply(send: Send, status: int, detail: str,
                 extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
