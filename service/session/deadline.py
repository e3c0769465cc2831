"""Missed bins, and whose fault they are: the platform's or the software's.

A bin is *missed* when its stimulation command is not out within one bin width of
the frame that closed it. Each missed bin is put down to one cause:

* **software** - the loop's own work overran: the loop thread *used* more than a bin
  width of CPU time between receiving the frame and sending the command (a slow
  decoder, a long collection pass, too many channels for the budget);
* **platform** - the CPU was taken away: the command was late in wall time although
  the work itself fit the budget (the thread was preempted by another process, an
  interrupt or the hypervisor), or the loop *woke up late*: it found frames that had
  waited a bin or more in the socket after being away at least that long (see
  :meth:`DeadlineAccounting.end_wake`).

CPU time is the loop thread's own clock (``CLOCK_THREAD_CPUTIME_ID``), read once when
a frame is received and once per missed bin: time not given to the thread does not
count. Counters (``missed_bins`` = ``missed_bins_platform`` + ``missed_bins_software``,
``late_wakes``) go to the session's counters, hence to its status and ``/metrics``.
"""

from __future__ import annotations

import time
from collections import Counter

thread_cpu_ns = time.thread_time_ns


class DeadlineAccounting:
    """Per-frame bookkeeping of the live loop (one instance per session process)."""

    __slots__ = ("bin_ns", "counters", "cpu_at_recv", "_wake_ns", "_prev_wake_ns",
                 "_frames", "_bins", "_missed", "_recv_ns", "max_late_wake_ns")

    def __init__(self, bin_ns: int, counters: Counter[str]):
        self.bin_ns = bin_ns
        self.counters = counters
        self.cpu_at_recv = 0
        self._wake_ns = 0
        self._prev_wake_ns = 0
        # per spike frame of the present wake: (source time, bins closed, bins missed)
        self._frames: list[tuple[int, int, int]] = []
        self._bins = 0  # of the frame being handled
        self._missed = 0
        self._recv_ns = 0
        self.max_late_wake_ns = 0

    def start_wake(self, wake_ns: int) -> None:
        """The loop's poll returned with input at ``wake_ns``."""
        self._prev_wake_ns, self._wake_ns = self._wake_ns, wake_ns
        self._frames.clear()

    def start_frame(self, recv_ns: int) -> None:
        """A frame was received at ``recv_ns`` (call right before handing it to the core)."""
        self.cpu_at_recv = thread_cpu_ns()
        self._recv_ns = recv_ns
        self._bins = self._missed = 0

    def end_frame(self, src_ns: int | None) -> None:
        """The frame is handled; ``src_ns``: its source time if it was a spike frame.

        Only frames received within a bin of the wake are kept for :meth:`end_wake`: a
        frame received later may have arrived while the loop was working on the ones
        before it (a software overrun, already counted), not while it was away."""
        if src_ns is not None and self._recv_ns - self._wake_ns < self.bin_ns:
            self._frames.append((src_ns, self._bins, self._missed))

    def bin_sent(self, recv_ns: int, sent_ns: int) -> None:
        """A bin's command went out at ``sent_ns`` for a frame received at ``recv_ns``."""
        self._bins += 1
        if sent_ns - recv_ns <= self.bin_ns:
            return
        self._missed += 1
        c = self.counters
        c["missed_bins"] += 1
        if thread_cpu_ns() - self.cpu_at_recv > self.bin_ns:
            c["missed_bins_software"] += 1
        else:
            c["missed_bins_platform"] += 1

    def end_wake(self) -> None:
        """The drain is over: did the loop wake up late?

        The frames found at one wake span ``span`` of source time; if ``span`` is at
        least a bin and the loop had been away (since its previous wake) at least as
        long, the older frames waited in the socket for the loop: a late wake. Their
        bins not already counted missed are counted now, on the platform. A replay sent
        faster than real time does not count: its frames queue while the loop works,
        not while it is away.
        """
        frames = self._frames
        if len(frames) < 2:
            return
        newest = frames[-1][0]
        span = newest - frames[0][0]
        if span < self.bin_ns or self._wake_ns - self._prev_wake_ns < span:
            return
        c = self.counters
        c["late_wakes"] += 1
        self.max_late_wake_ns = max(self.max_late_wake_ns, span)
        for src, bins, missed in frames:
            if newest - src >= self.bin_ns and bins > missed:
                late = bins - missed
                c["missed_bins"] += late
                c["missed_bins_platform"] += late

    def summary(self) -> dict[str, int | float]:
        c = self.counters
        return {"missed_bins": c["missed_bins"], "platform": c["missed_bins_platform"],
                "software": c["missed_bins_software"], "late_wakes": c["late_wakes"],
                "max_late_wake_us": round(self.max_late_wake_ns / 1e3, 1)}
