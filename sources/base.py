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
