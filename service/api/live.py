"""Live streams to WebSockets: one ZeroMQ subscription per session, shared by every
WebSocket that follows it, and the opening and closing that every stream route shares.

A browser tab or script that opens a live stream does not get a socket of its own on
the session: the first follower of a session's output (or of its source, for the raster)
starts a :class:`Feed`, a task that subscribes once, decodes each message once and hands
it to every follower's bounded queue; the last follower to leave ends it. So a thousand
viewers cost the session one subscriber, and a follower that reads too slowly loses its
own oldest messages (counted) without slowing the feed, the other followers or the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from service.session.manager import ACTIVE, SessionManager, SessionNotFound
from service.wire import protocol as P

log = logging.getLogger(__name__)

#: what a follower's queue yields after the feed's last message (the session ended)
END = None

#: messages taken from the socket before the feed yields to the event loop
DRAIN = 1000


@dataclass(frozen=True)
class FeedKey:
    """Which subscription: a session's socket (``endpoint``) filtered to ``topics``."""

    session: str
    endpoint: str
    topics: tuple[bytes, ...]


class StreamEnded(Exception):
    """The browser went away, or the session's feed ended."""


@dataclass(eq=False)  # followers are told apart by identity (kept in a set)
class Follower:
    queue: asyncio.Queue[P.Message | None]
    dropped: int = 0  # messages lost because this follower read too slowly

    async def receive(self, closed: asyncio.Task[None],
                      timeout: float | None = None) -> P.Message | None:
        """The next message, or None if ``timeout`` seconds pass first. Raises
        :class:`StreamEnded` when ``closed`` (see :func:`wait_closed`) is done or the feed
        has ended."""
        if not self.queue.empty():
            msg = self.queue.get_nowait()
        else:
            get = asyncio.ensure_future(self.queue.get())
            done, _ = await asyncio.wait({get, closed}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                if closed in done:
                    raise StreamEnded("the browser went away")
                return None
            msg = get.result()
        if msg is END:
            raise StreamEnded("session ended")
        return msg


@dataclass
class Feed:
    """One subscription and its followers; its task runs from creation until the session
    ends or the last follower leaves."""

    key: FeedKey
    still_active: Callable[[], Awaitable[bool]]
    followers: set[Follower] = field(default_factory=set)
    task: asyncio.Task[None] = field(init=False)

    def __post_init__(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"feed-{self.key.session}")

    async def run(self) -> None:
        sub = zmq.asyncio.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 10_000)  # a stalled feed drops here, not in the session
        for topic in self.key.topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(self.key.endpoint)
        try:
            while True:
                # Poll with a timeout: a session that stops sends nothing more.
                if not await sub.poll(500):
                    if not await self.still_active():
                        return
                    continue
                for _ in range(DRAIN):
                    try:
                        frames = await sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        msg = P.decode(frames)
                    except P.ProtocolError:
                        continue  # the session counts its own bad input; nothing to show
                    for f in self.followers:
                        _offer(f, msg)
        finally:
            sub.close(0)
            for f in self.followers:
                _offer(f, END)


def _offer(f: Follower, msg: P.Message | None) -> None:
    """Queue ``msg`` for ``f``; when it is full, its oldest message makes room."""
    while True:
        try:
            f.queue.put_nowait(msg)
            return
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                f.queue.get_nowait()
                f.dropped += 1


class Fanout:
    """The live feeds of this control plane, by :class:`FeedKey`."""

    def __init__(self) -> None:
        self.feeds: dict[FeedKey, Feed] = {}
        self.dropped = 0  # messages lost by followers that have left, all feeds together

    @contextlib.asynccontextmanager
    async def follow(self, key: FeedKey, still_active: Callable[[], Awaitable[bool]],
                     queue_size: int = 1000) -> AsyncIterator[Follower]:
        """Follow ``key``'s feed (started if no one follows it yet) while in the block;
        ``still_active()`` is asked when the socket is quiet, and False ends the feed."""
        feed = self.feeds.get(key)
        if feed is None or feed.task.done():
            feed = self.feeds[key] = Feed(key, still_active)
        me = Follower(asyncio.Queue(queue_size))
        feed.followers.add(me)
        try:
            yield me
        finally:
            feed.followers.discard(me)
            self.dropped += me.dropped
            if me.dropped:
                log.info("a follower of session %s lost %d messages (it read too slowly)",
                         key.session, me.dropped)
            if not feed.followers and self.feeds.get(key) is feed:
                del self.feeds[key]
                feed.task.cancel()

    def followers(self) -> int:
        return sum(len(f.followers) for f in self.feeds.values())


async def open_session_stream(ws: WebSocket, manager: SessionManager,
                              sid: str) -> dict[str, Any] | None:
    """Accept ``ws`` for session ``sid`` and return its record, or close it (4404 unknown,
    4409 not running: never subscribe to a socket no session owns) and return None."""
    try:
        row = manager.get(sid)
    except SessionNotFound:
        await ws.close(code=4404, reason=f"no session {sid}")
        return None
    if row["state"] not in ACTIVE or not row["output_endpoint"]:
        await ws.close(code=4409, reason=f"session is {row['state']}")
        return None
    await ws.accept()
    return row


def session_active(manager: SessionManager, sid: str) -> Callable[[], Awaitable[bool]]:
    """For :meth:`Fanout.follow`: whether ``sid`` still runs (a store read, off the loop)."""
    async def still_active() -> bool:
        row = await asyncio.to_thread(manager.store.get_session, sid)
        return row is not None and row["state"] in ACTIVE
    return still_active


async def wait_closed(ws: WebSocket) -> None:
    """Return when the browser goes away (it sends nothing on this socket)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            if (await ws.receive())["type"] == "websocket.disconnect":
                return
