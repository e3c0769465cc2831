"""Deadlines that drive the stimulator to the safe state.

Two ends use the same :class:`Watchdog`:

* the session runtime feeds it on every decoder update and, on every tick
  while it is expired, calls ``guard.safe_state(t_ns, "watchdog")`` and sends
  the command (idempotent: the guard keeps ramping DBS toward a non-zero
  fallback, and has already cut light and DBS above fallback at the first call);
* a stimulator (or its simulator, :class:`FailsafeStimulator`) feeds it on
  every heartbeat from the service's sinks, and turns itself off when the
  service dies, without needing the service to say so.

The watchdog compares wall-clock (monotonic) nanoseconds passed in by the
caller; it never reads a clock itself, so tests and replays are deterministic.
"""

from __future__ import annotations

from .commands import StimCommand


class Watchdog:
    """Expired when ``deadline_ns`` has passed since the last ``feed``.

    Not expired before the first feed: a session that has not started has
    nothing to guard (and the guard is disarmed until armed).
    """

    def __init__(self, deadline_ns: int):
        if deadline_ns <= 0:
            raise ValueError("deadline_ns must be > 0")
        self.deadline_ns = int(deadline_ns)
        self.last_feed_ns: int | None = None
        self.trips = 0
        self._tripped = False

    def feed(self, now_ns: int) -> None:
        self.last_feed_ns = int(now_ns)
        self._tripped = False

    def expired(self, now_ns: int) -> bool:
        if self.last_feed_ns is None:
            return False
        return now_ns - self.last_feed_ns > self.deadline_ns

    def check(self, now_ns: int) -> bool:
        """Like :meth:`expired`, and counts each new expiry once in ``trips``."""
        exp = self.expired(now_ns)
        if exp and not self._tripped:
            self._tripped = True
            self.trips += 1
        return exp


class FailsafeStimulator:
    """The stimulator end of the heartbeat contract.

    Holds the last command received and reports it as in force only while
    heartbeats keep arriving; otherwise the stimulator is off.
    """

    def __init__(self, heartbeat_timeout_ns: int, off: StimCommand):
        self.watchdog = Watchdog(heartbeat_timeout_ns)
        self.off = off
        self.command: StimCommand = off

    def on_command(self, command: StimCommand, now_ns: int) -> None:
        self.command = command
        self.watchdog.feed(now_ns)

    def on_heartbeat(self, now_ns: int) -> None:
        self.watchdog.feed(now_ns)

    def effective(self, now_ns: int) -> StimCommand:
        if self.watchdog.last_feed_ns is None or self.watchdog.expired(now_ns):
            return self.off
        return self.command
