"""Stimulation command types.

A *request* is what a policy asks for; the safety guard turns it into the
command actually sent (possibly clamped, or refused). Both use these types.
Commands describe the stimulator's *state* from ``t_ns`` on (amplitude,
pulse shape, train), not single pulses: the stimulator hardware makes pulses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

Modality = Literal["dbs", "opto"]


@dataclass(slots=True)
class DBSCommand:
    """Charge-balanced biphasic DBS. ``amplitude_ma == 0`` means off."""

    amplitude_ma: float = 0.0
    pulse_width_us: float = 60.0
    frequency_hz: float = 130.0
    contacts: list[int] = field(default_factory=lambda: [0])
    biphasic: bool = True
    modality: Modality = "dbs"

    @property
    def is_off(self) -> bool:
        return self.amplitude_ma <= 0.0

    def charge_per_phase_uc(self) -> float:
        """Charge per phase in microcoulombs: mA * us = nC, / 1000 = uC."""
        return self.amplitude_ma * self.pulse_width_us / 1000.0


@dataclass(slots=True)
class OptoCommand:
    """Light pulse train on a set of targets. ``power_mw == 0`` means light off."""

    targets: list[int] = field(default_factory=list)
    wavelength_nm: float = 470.0
    power_mw: float = 0.0
    irradiance_mw_mm2: float = 0.0
    pulse_width_ms: float = 5.0
    frequency_hz: float = 20.0
    train_ms: float = 0.0  # 0 = continuous until the next command
    modality: Modality = "opto"

    @property
    def is_off(self) -> bool:
        return self.power_mw <= 0.0 or not self.targets


StimCommand = DBSCommand | OptoCommand


def command_to_dict(cmd: StimCommand) -> dict[str, Any]:
    """Plain dict of a command. A shallow copy (lists copied): ``asdict`` deep-copies
    recursively and costs ~10x more, and this runs once per bin in the loop."""
    return {f.name: (list(v) if isinstance(v := getattr(cmd, f.name), list) else v)
            for f in fields(cmd)}


def command_from_dict(d: dict[str, Any]) -> StimCommand:
    """Inverse of :func:`command_to_dict`; unknown keys are an error."""
    d = dict(d)
    modality = d.pop("modality", None)
    if modality == "dbs":
        return DBSCommand(**d)
    if modality == "opto":
        return OptoCommand(**d)
    raise ValueError(f"stim command modality must be 'dbs' or 'opto', got {modality!r}")
