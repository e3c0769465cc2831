"""Read a session's output (decoded, stim, heartbeat) from its Redis stream, as a consumer group.

A session with ``redis.mirror_output`` copies every output message to
``Keys.output(sid)``. Unlike a SUB socket, a consumer group loses nothing while a
consumer is away, and lets consumers on several hosts share the work:

* each consumer of a group gets a disjoint share of the entries (several groups each
  get every entry);
* an update stays pending until acknowledged, which happens when the caller asks for
  more after a batch (so it was handled): a consumer that dies re-reads its
  unacknowledged entries when it comes back under the same name (at-least-once).

    r = GroupReader("redis://10.0.0.5:6379/0", "3f2a9c1b7d10", group="dashboards")
    while (u := r.recv(1000)) is not None:
        ...
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Iterator

from service.cluster.redis_streams import Keys, connect, fields_to_frames, stream_entries
from service.wire import protocol as P

from .stream import Update, to_update


class GroupReader:
    def __init__(self, url: str, sid: str, group: str, consumer: str | None = None,
                 start: str = "$", count: int = 100):
        """``start``: where a new group begins, ``$`` (new entries) or ``0`` (the whole
        stream); an existing group keeps its position."""
        import redis

        # recv(timeout_ms=-1) blocks in XREADGROUP without end: no socket timeout.
        self.client = connect(url, socket_timeout=None)
        self.key = Keys.output(sid)
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.count = count
        self.rejected = 0  # entries that are not protocol messages (acknowledged, skipped)
        try:
            self.client.xgroup_create(self.key, group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists: join it where it is
                raise
        self._pending = True  # first our own unacknowledged entries, then new ones
        self._buf: deque[tuple[bytes, dict]] = deque()
        self._delivered: list[bytes] = []

    def recv(self, timeout_ms: int = 1000) -> Update | None:
        """The next update, or None after ``timeout_ms`` (< 0: wait for ever)."""
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        while True:
            if not self._buf:
                left_ms = 1000 if deadline is None else int((deadline - time.monotonic()) * 1000)
                if not self._fetch(min(max(left_ms, 0), 1000)):
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    continue
            entry_id, fields = self._buf.popleft()
            self._delivered.append(entry_id)
            if not fields:  # trimmed away while it was pending
                continue
            try:
                u = to_update(fields_to_frames(fields))
            except P.ProtocolError:
                self.rejected += 1
                continue
            u.entry_id = entry_id.decode()
            return u

    def _fetch(self, block_ms: int) -> bool:
        self.ack()  # the caller asked for more: everything handed out so far was handled
        if self._pending:
            entries = stream_entries(self.client.xreadgroup(
                self.group, self.consumer, {self.key: "0"}, count=self.count))
            if entries:
                self._buf.extend(entries)
                return True
            self._pending = False
        entries = stream_entries(self.client.xreadgroup(
            self.group, self.consumer, {self.key: ">"}, count=self.count,
            block=block_ms or None))
        self._buf.extend(entries)
        return bool(entries)

    def ack(self) -> None:
        """Acknowledge every update returned so far (``recv`` does it before reading more)."""
        if self._delivered:
            self.client.xack(self.key, self.group, *self._delivered)
            self._delivered = []

    def __iter__(self) -> Iterator[Update]:
        while True:
            u = self.recv(timeout_ms=-1)
            if u is not None:
                yield u

    def close(self) -> None:
        self.ack()
        self.client.close()
