"""Policies: decoded state in, stimulation request out.

A policy only *asks*; the safety guard decides what is sent. ``step`` is called
once per decoded bin with the source-clock time, and returns a request or
``None`` (no change). Policies are deterministic functions of their inputs so
that a replayed session makes the same requests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from .commands import DBSCommand, StimCommand


class Policy(ABC):
    kind: ClassVar[str] = ""
    modality: ClassVar[str] = "dbs"
    _registry: ClassVar[dict[str, type[Policy]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.kind:
            Policy._registry[cls.kind] = cls

    def reset(self) -> None:
        """Forget internal state (filters, timers)."""

    @abstractmethod
    def step(self, decoded: np.ndarray, t_ns: int) -> StimCommand | None:
        """One decoded bin in, a stimulation request (or None) out."""


class SpeedToDBS(Policy):
    """DBS amplitude proportional to decoded hand speed (a demonstration mapping).

    ``velocity_index`` names the decoded outputs that hold (vx, vy).
    """

    kind = "speed_to_dbs"

    def __init__(self, gain_ma_per_cm_s: float = 0.05, velocity_index: tuple[int, int] = (2, 3),
                 pulse_width_us: float = 60.0, frequency_hz: float = 130.0):
        self.gain = float(gain_ma_per_cm_s)
        self.ix = tuple(int(i) for i in velocity_index)
        self.pulse_width_us = pulse_width_us
        self.frequency_hz = frequency_hz

    def step(self, decoded: np.ndarray, t_ns: int) -> StimCommand:
        speed = float(np.hypot(decoded[self.ix[0]], decoded[self.ix[1]]))
        return DBSCommand(amplitude_ma=self.gain * speed, pulse_width_us=self.pulse_width_us,
                          frequency_hz=self.frequency_hz)


def build_policy(spec: dict[str, Any]) -> Policy:
    """Create a policy from ``{"type": name, **params}``."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    cls = Policy._registry.get(kind or "")
    if cls is None:
        raise ValueError(f"unknown policy {kind!r}; known: {sorted(Policy._registry)}")
    return cls(**spec)


# The concrete policies register themselves on import; keep them importable from here.
from . import dbs_policies, opto_policies  # noqa: E402,F401
