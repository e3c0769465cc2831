"""Spike events -> counts per bin, on the source's clock.

Bins are [start, start + bin_ns) on a grid anchored at the first frame's time.
After a clock jump the grid is anchored afresh on the new clock, but bin
indices keep counting: index ``k`` always follows index ``k - 1``.
A bin is complete once a frame's watermark (its header ``t_ns``: no later
event is older than it, up to the reorder tolerance) has passed its end plus
the tolerance. Events that arrive for an already emitted bin are *late*: they
are counted and dropped, never silently folded into the wrong bin.

The ring of pending bins is preallocated; emitting a bin hands out a view
that stays valid until the next call to :meth:`Binner.ready`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class Binner:
    def __init__(self, channels: int, bin_ns: int, tolerance_ns: int = 0,
                 max_jump_ns: int = 2_000_000_000):
        if channels < 1 or bin_ns <= 0 or tolerance_ns < 0:
            raise ValueError("channels >= 1, bin_ns > 0 and tolerance_ns >= 0 are required")
        self.channels = channels
        self.bin_ns = bin_ns
        self.tolerance_ns = tolerance_ns
        self.max_jump_ns = max_jump_ns
        # Pending bins span the tolerance plus the frame that closes them.
        self.slots = int(-(-tolerance_ns // bin_ns)) + 64
        self._ring = np.zeros((self.slots, channels), np.float64)
        self._out = np.zeros(channels, np.float64)
        self.next_index = 0  # index of the next bin to emit
        self.origin_ns: int | None = None
        self.late_events = 0
        self.future_events = 0
        self.clock_jumps = 0

    # ------------------------------------------------------------------ state
    def start_of(self, index: int) -> int:
        return self.origin_ns + index * self.bin_ns  # type: ignore[operator]

    def _anchor(self, t_ns: int) -> None:
        if self.origin_ns is None:
            t = t_ns - self.tolerance_ns  # leave room for events reordered before the first
            # The next bin to emit starts on this frame's grid line (indices continue).
            self.origin_ns = t - (t % self.bin_ns) - self.next_index * self.bin_ns

    def resync(self) -> None:
        """Restart the grid (after a clock jump): pending counts are dropped and the grid is
        anchored afresh at the next frame's earliest time; the bin index carries on."""
        self._ring[:] = 0.0
        self.origin_ns = None
        self.clock_jumps += 1

    # ------------------------------------------------------------------ input
    def _check_jump(self, watermark_ns: int) -> None:
        if self.origin_ns is not None and (
            watermark_ns - self.start_of(self.next_index) > self.max_jump_ns
        ):
            self.resync()

    def add_events(self, ids: np.ndarray, times: np.ndarray, watermark_ns: int) -> None:
        """Events with times (ns) up to ``watermark_ns``, the frame's header time."""
        self._check_jump(watermark_ns)
        if ids.size == 0:
            return
        self._anchor(int(times.min()))
        idx = (times - self.origin_ns) // self.bin_ns
        lo = self.next_index
        ok = (idx >= lo) & (idx < lo + self.slots)
        n_ok = int(np.count_nonzero(ok))
        if n_ok != ids.size:
            late = int(np.count_nonzero(idx < lo))
            self.late_events += late
            self.future_events += ids.size - n_ok - late
            ids, idx = ids[ok], idx[ok]
        np.add.at(self._ring, (idx % self.slots, ids), 1.0)

    def add_counts(self, t_ns: int, counts: np.ndarray) -> None:
        """A pre-binned frame covering [t_ns, t_ns + its bin width) joins the bin at t_ns."""
        self._check_jump(t_ns)
        self._anchor(t_ns)
        assert self.origin_ns is not None
        idx = (t_ns - self.origin_ns) // self.bin_ns
        if idx < self.next_index:
            self.late_events += int(counts.sum())
            return
        if idx >= self.next_index + self.slots:
            self.future_events += int(counts.sum())
            return
        self._ring[idx % self.slots] += counts

    # ------------------------------------------------------------------ output
    def ready(self, watermark_ns: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(index, start_ns, counts)`` for every bin complete at ``watermark_ns``."""
        self._anchor(watermark_ns)
        horizon = watermark_ns - self.tolerance_ns
        if self.origin_ns is not None and horizon - self.start_of(self.next_index) > \
                self.max_jump_ns:
            self.resync()  # never decode an unbounded run of empty bins
            return
        while self.start_of(self.next_index + 1) <= horizon:
            slot = self.next_index % self.slots
            self._out[:] = self._ring[slot]
            self._ring[slot] = 0.0
            index = self.next_index
            self.next_index += 1
            yield index, self.start_of(index), self._out
