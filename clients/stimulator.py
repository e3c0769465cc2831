"""The stimulator side of a session: apply commands, fail safe when the service goes quiet.

A lab wraps this around its stimulator driver. Every ``stim.command`` carries
the command in force; heartbeats arrive every ``output.heartbeat_ms`` even when
no bins flow. If neither arrives within ``deadline_ms`` (the service died, the
network broke), the link calls ``on_safe`` once and reports ``lost``: the
stimulator must go to its own safe state (light off, DBS to its fallback).

Give it the ``session_id`` it serves: every stim and heartbeat message carries its
session's id (the header's stream id), and messages of any other session are
refused and counted (``foreign``) — they never reach the stimulator, nor keep its
deadline alive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from service.wire import protocol as P
from service.wire.curve import connect_curve
from stim.watchdog import Watchdog


class StimulatorLink:
    def __init__(self, endpoint: str, deadline_ms: float = 300.0,
                 on_command: Callable[[dict[str, Any]], None] | None = None,
                 on_safe: Callable[[str], None] | None = None,
                 server_public_key: str | None = None, secret_file: str | None = None,
                 session_id: str | None = None):
        self.session_id = session_id
        self.foreign = 0  # messages from another session (refused)
        self.watchdog = Watchdog(int(deadline_ms * 1e6))  # the same deadline logic as the loop
        self.on_command = on_command or (lambda cmd: None)
        self.on_safe = on_safe or (lambda reason: None)
        self.socket: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if server_public_key:  # a session whose output is CURVE-encrypted
            connect_curve(self.socket, server_public_key, secret_file)
        for t in (b"stim", b"heartbeat"):
            self.socket.setsockopt(zmq.SUBSCRIBE, t)
        self.socket.connect(endpoint)
        self.lost = False
        self.commands = 0
        self.current: dict[str, Any] | None = None
        self.rejected = 0

    def poll(self, timeout_ms: int = 0) -> None:
        """Apply everything received; then check the deadline."""
        while self.socket.poll(timeout_ms):
            timeout_ms = 0
            try:
                msg = P.decode(self.socket.recv_multipart())
            except P.ProtocolError:
                self.rejected += 1  # a corrupt command is never applied
                continue
            if self.session_id is not None and msg.header.stream != self.session_id:
                self.foreign += 1  # another session's command is never applied
                continue
            self.watchdog.feed(time.monotonic_ns())
            self.lost = False
            if msg.header.kind == P.KIND_STIM:
                cmd = msg.header.extra.get("cmd")
                if cmd is not None and cmd != self.current:
                    self.current = cmd
                    self.commands += 1
                    self.on_command(cmd)
        self._check_deadline()

    @property
    def last_heard_ns(self) -> int | None:
        return self.watchdog.last_feed_ns

    def _check_deadline(self) -> None:
        now = time.monotonic_ns()
        if self.lost or not self.watchdog.expired(now):
            return
        self.lost = True
        self.current = None
        silent = now - (self.watchdog.last_feed_ns or now)
        self.on_safe(f"no heartbeat or command for {silent / 1e6:.0f} ms")

    def close(self) -> None:
        self.socket.close(0)
