"""The stimulator side of a session: apply commands, fail safe when the service goes quiet.

A lab wraps this around its stimulator driver. A ``stim.command`` carries in
``cmd`` what to apply now (none: keep the present state; docs/protocol.md §8.2)
and in ``in_force`` the last command published; heartbeats arrive every
``output.heartbeat_ms`` even when no bins flow. If neither arrives within
``deadline_ms`` (the service died, the network broke), the link calls ``on_safe``
once and reports ``lost``: the stimulator must go to its own safe state (light off,
DBS to its fallback).

Give it the ``session_id`` it serves: every stim and heartbeat message carries its
session's id (the header's stream id), and messages of any other session are
refused and counted (``foreign``) — they never reach the stimulator, nor keep its
deadline alive.

With ``limits`` (the session's :class:`~stim.limits.SafetyLimits`) every command
passes a :class:`~stim.monitor.PhysicalMonitor` before ``on_command``: what is
applied then holds the limits in wall-clock time (slew, continuous-on, duty,
minimum interval, thermal, and every static limit), whatever the source clock
did; ``poll`` also ticks the monitor so time bounds act between commands.
``on_command`` receives what is applied; ``interventions`` counts the changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from service.wire import protocol as P
from service.wire.curve import connect_curve
from stim.commands import command_from_dict, command_to_dict
from stim.limits import SafetyLimits
from stim.monitor import PhysicalMonitor
from stim.watchdog import Watchdog

log = logging.getLogger(__name__)


class StimulatorLink:
    def __init__(self, endpoint: str, deadline_ms: float = 300.0,
                 on_command: Callable[[dict[str, Any]], None] | None = None,
                 on_safe: Callable[[str], None] | None = None,
                 server_public_key: str | None = None, secret_file: str | None = None,
                 session_id: str | None = None,
                 limits: SafetyLimits | None = None, modality: str | None = None):
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
        self.applied: dict[str, Any] | None = None  # what the stimulator was last told
        self.monitor: PhysicalMonitor | None = None
        self._limits = limits
        if limits is not None and modality is not None:
            self.monitor = PhysicalMonitor(limits, modality)
        self.interventions = 0

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
                    self._apply(cmd)
        self._tick()
        self._check_deadline()

    def _apply(self, cmd: dict[str, Any]) -> None:
        if self._limits is None:
            self.applied = cmd
            self.on_command(cmd)
            return
        now = time.monotonic_ns()
        try:
            parsed = command_from_dict(cmd)
        except (TypeError, ValueError) as exc:
            self.rejected += 1  # not a command: never applied; the stimulator goes safe
            log.error("stimulator: malformed command %r: %s", cmd, exc)
            if self.monitor is None:
                return
            parsed = self.monitor.safe_command()
        if self.monitor is None:
            self.monitor = PhysicalMonitor(self._limits, parsed.modality)
        sent, reason = self.monitor.admit(parsed, now)
        if reason is not None:
            self.interventions += 1
            log.warning("stimulator monitor: %s", reason)
        self.applied = command_to_dict(sent)
        self.on_command(self.applied)

    def _tick(self) -> None:
        if self.monitor is None:
            return
        hit = self.monitor.tick(time.monotonic_ns())
        if hit is not None:
            sent, reason = hit
            self.interventions += 1
            log.warning("stimulator monitor: %s", reason)
            self.applied = command_to_dict(sent)
            self.on_command(self.applied)

    def set_limits(self, limits: SafetyLimits) -> None:
        """The session's limits changed: the monitor keeps its history."""
        self._limits = limits
        if self.monitor is not None:
            self.monitor.set_limits(limits)

    @property
    def last_heard_ns(self) -> int | None:
        return self.watchdog.last_feed_ns

    def _check_deadline(self) -> None:
        now = time.monotonic_ns()
        if self.lost or not self.watchdog.expired(now):
            return
        self.lost = True
        self.current = None
        if self.monitor is not None:  # the stimulator goes to its own safe state
            self.monitor.admit(self.monitor.safe_command(), now)
        silent = now - (self.watchdog.last_feed_ns or now)
        self.on_safe(f"no heartbeat or command for {silent / 1e6:.0f} ms")

    def close(self) -> None:
        self.socket.close(0)
