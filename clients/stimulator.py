"""The stimulator side of a session: apply commands, fail safe when the service goes quiet.

A lab wraps this around its stimulator driver. Every ``stim.command`` carries
the command in force; heartbeats arrive every ``output.heartbeat_ms`` even when
no bins flow. If neither arrives within ``deadline_ms`` (the service died, the
network broke), the link calls ``on_safe`` once and reports ``lost``: the
stimulator must go to its own safe state (light off, DBS to its fallback).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq

from service import protocol as P
from service.curve import connect_curve


class StimulatorLink:
    def __init__(self, endpoint: str, deadline_ms: float = 300.0,
                 on_command: Callable[[dict[str, Any]], None] | None = None,
                 on_safe: Callable[[str], None] | None = None,
                 server_public_key: str | None = None, secret_file: str | None = None):
        self.deadline_ns = int(deadline_ms * 1e6)
        self.on_command = on_command or (lambda cmd: None)
        self.on_safe = on_safe or (lambda reason: None)
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if server_public_key:  # a session whose output is CURVE-encrypted
            connect_curve(self.socket, server_public_key, secret_file)
        for t in (b"stim", b"heartbeat"):
            self.socket.setsockopt(zmq.SUBSCRIBE, t)
        self.socket.connect(endpoint)
        self.last_heard_ns: int | None = None
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
            self.last_heard_ns = time.monotonic_ns()
            self.lost = False
            if msg.header.kind == P.KIND_STIM:
                cmd = msg.header.extra.get("cmd")
                if cmd is not None and cmd != self.current:
                    self.current = cmd
                    self.commands += 1
                    self.on_command(cmd)
        self._check_deadline()

    def _check_deadline(self) -> None:
        if self.lost or self.last_heard_ns is None:
            return
        silent = time.monotonic_ns() - self.last_heard_ns
        if silent > self.deadline_ns:
            self.lost = True
            self.current = None
            self.on_safe(f"no heartbeat or command for {silent / 1e6:.0f} ms")

    def close(self) -> None:
        self.socket.close(0)
