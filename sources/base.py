"""What every simulated neural source offers.

A source owns its own clock (``t_ns``, starting at 0) and is advanced in steps.
Each step yields the spike events that happened in the step and the ground
truth at its end. Sources never talk to sockets: the runner in
``clients.simrunner`` publishes them on the wire protocol, so the same model
serves live ZeroMQ runs and fast in-process batch runs alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(slots=True)
class Step:
    """Events in [t_ns - dt, t_ns): unit ids and times (int64 ns), and ground truth."""

    ids: np.ndarray
    times: np.ndarray
    truth: np.ndarray  # float64 vector, names in ``SimSource.truth_names``
    t_ns: int


class SimSource(ABC):
    channels: int
    truth_names: list[str]
    t_ns: int = 0

    @abstractmethod
    def advance(self, dt_ns: int) -> Step:
        """Move the clock forward by ``dt_ns`` and return what happened."""

    def apply_stim(self, command: dict[str, Any]) -> None:
        """React to a stimulation command (a ``stim.command`` header's ``x`` map).

        Sources that do not respond to stimulation ignore it.
        """

    def counts(self, n_bins: int, bin_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch mode: (n_bins, channels) counts and (n_bins, len(truth_names)) truth."""
        counts = np.zeros((n_bins, self.channels), np.float64)
        truth = np.zeros((n_bins, len(self.truth_names)))
        for b in range(n_bins):
            s = self.advance(bin_ns)
            counts[b] = np.bincount(s.ids, minlength=self.channels)
            truth[b] = s.truth
        return counts, truth


class EventDraws:
    """Collects Poisson spike draws over sub-steps and returns them merged in time order.

    Every source draws the same way (a count per unit from its rate over the
    sub-step, then uniform times inside it), so the statistics and the random
    stream stay comparable across sources.
    """

    def __init__(self, rng: np.random.Generator, channels: int):
        self.rng = rng
        self._all = np.arange(channels, dtype=np.uint32)
        self._ids: list[np.ndarray] = []
        self._times: list[np.ndarray] = []

    def draw(self, rates_hz: np.ndarray, t_ns: int, width_ns: int) -> None:
        n = self.rng.poisson(rates_hz * (width_ns / 1e9))
        total = int(n.sum())
        if total:
            self._ids.append(np.repeat(self._all, n))
            self._times.append(t_ns + self.rng.integers(0, width_ns, total))

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids uint32, times int64) sorted by time; resets the collector."""
        if not self._ids:
            return np.zeros(0, np.uint32), np.zeros(0, np.int64)
        ids = np.concatenate(self._ids)
        times = np.concatenate(self._times).astype(np.int64)
        self._ids, self._times = [], []
        order = np.argsort(times, kind="stable")
        return ids[order], times[order]
