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

    def reads(self) -> tuple[int, ...]:
        """The indices of the decoded vector this policy reads."""
        if hasattr(self, "indices"):
            return tuple(self.indices)
        if hasattr(self, "index"):
            return (self.index,)
        return ()

    def bind(self, output_names: list[str]) -> None:
        """Check the decoded outputs this policy reads against the decoder's outputs.

        Called when a decoder is installed (and when a session is created with a known
        model), so a policy that cannot work is refused with its reason instead of
        failing on every bin. Raises ValueError naming what is missing.
        """
        n = len(output_names)
        bad = [i for i in self.reads() if not 0 <= i < n]
        if bad:
            raise ValueError(
                f"policy {self.kind!r} reads decoded output index {bad}, but the decoder "
                f"has {n} output(s) {output_names}: set the policy's index parameter(s) "
                "or choose a decoder with those outputs")

    @abstractmethod
    def step(self, decoded: np.ndarray, t_ns: int) -> StimCommand | None:
        """One decoded bin in, a stimulation request (or None) out."""


class SpeedToDBS(Policy):
    """DBS amplitude proportional to decoded hand speed (a demonstration mapping).

    The velocity is read from the decoded outputs named ``vx`` and ``vy`` (found by
    name when the decoder is bound), or from ``velocity_index`` when given.
    """

    kind = "speed_to_dbs"
    VELOCITY_NAMES = ("vx", "vy")

    def __init__(self, gain_ma_per_cm_s: float = 0.05,
                 velocity_index: tuple[int, int] | list[int] | None = None,
                 pulse_width_us: float = 60.0, frequency_hz: float = 130.0):
        self.gain = float(gain_ma_per_cm_s)
        self.by_name = velocity_index is None
        self.ix = tuple(int(i) for i in (velocity_index or (2, 3)))
        self.pulse_width_us = pulse_width_us
        self.frequency_hz = frequency_hz

    def reads(self) -> tuple[int, ...]:
        return self.ix

    def bind(self, output_names: list[str]) -> None:
        if self.by_name:
            missing = [n for n in self.VELOCITY_NAMES if n not in output_names]
            if missing:
                raise ValueError(
                    f"policy 'speed_to_dbs' reads the hand velocity (outputs named vx, vy), "
                    f"but the decoder's outputs are {output_names}: set "
                    "stim.policy.velocity_index, or choose a policy for these outputs")
            self.ix = tuple(output_names.index(n) for n in self.VELOCITY_NAMES)
        super().bind(output_names)

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
