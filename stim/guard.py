"""The safety guard: the only path from a policy to a stimulator.

Every request goes through :meth:`SafetyGuard.process`, which returns an
:class:`Outcome` saying what is sent (``sent``), sent after clamping
(``clamped``, with reasons) or not sent (``refused``). It never raises into the
loop: any unexpected error becomes a refusal and the safe state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from .commands import DBSCommand, OptoCommand, StimCommand
from .limits import SafetyLimits

Status = Literal["sent", "clamped", "refused", "safe"]


@dataclass(slots=True)
class Outcome:
    status: Status
    t_ns: int
    request: StimCommand | None
    command: StimCommand | None  # what the stimulator is told; None if nothing is sent
    reasons: list[str] = field(default_factory=list)


class SafetyGuard:
    """Clamp or refuse requests against :class:`SafetyLimits`; disarmed at start."""

    def __init__(self, limits: SafetyLimits | None = None, modality: str = "dbs"):
        if modality not in ("dbs", "opto"):
            raise ValueError(f"modality must be 'dbs' or 'opto', got {modality!r}")
        self.limits = limits or SafetyLimits()
        self.modality = modality
        self.armed = False
        self.current: StimCommand = self.safe_command()

    # ------------------------------------------------------------------ state
    def safe_command(self) -> StimCommand:
        if self.modality == "dbs":
            return DBSCommand(amplitude_ma=self.limits.fallback_amplitude_ma)
        return OptoCommand()

    def set_limits(self, limits: SafetyLimits) -> None:
        self.limits = limits

    def arm(self) -> None:
        self.armed = True

    def disarm(self, t_ns: int) -> Outcome:
        self.armed = False
        return self.safe_state(t_ns, "disarmed")

    def safe_state(self, t_ns: int, reason: str) -> Outcome:
        self.current = self.safe_command()
        return Outcome("safe", t_ns, None, self.current, [reason])

    # ------------------------------------------------------------------ requests
    def process(self, request: StimCommand | None, t_ns: int) -> Outcome:
        try:
            return self._process(request, t_ns)
        except Exception as exc:  # the guard must never raise into the loop
            out = self.safe_state(t_ns, f"guard error: {type(exc).__name__}: {exc}")
            out.status = "refused"
            out.request = request
            return out

    def _process(self, request: StimCommand | None, t_ns: int) -> Outcome:
        if request is None:
            return Outcome("refused", t_ns, None, None, ["no request"])
        if not self.armed:
            return Outcome("refused", t_ns, request, None, ["disarmed"])
        if request.modality != self.modality:
            return Outcome("refused", t_ns, request, None,
                           [f"modality {request.modality} but guard is {self.modality}"])
        if isinstance(request, DBSCommand):
            cmd, reasons = self._clamp_dbs(request)
        else:
            cmd, reasons = self._clamp_opto(request)
        if cmd is None:
            return Outcome("refused", t_ns, request, None, reasons)
        self.current = cmd
        return Outcome("clamped" if reasons else "sent", t_ns, request, cmd, reasons)

    def _clamp_dbs(self, r: DBSCommand) -> tuple[DBSCommand | None, list[str]]:
        lim = self.limits
        values = (r.amplitude_ma, r.pulse_width_us, r.frequency_hz)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            return None, ["non-finite parameter"]
        reasons: list[str] = []
        amp = _clamp(r.amplitude_ma, 0.0, lim.max_amplitude_ma, "amplitude_ma", reasons)
        pw = _clamp(r.pulse_width_us, lim.min_pulse_width_us, lim.max_pulse_width_us,
                    "pulse_width_us", reasons)
        f = _clamp(r.frequency_hz, lim.min_frequency_hz, lim.max_frequency_hz,
                   "frequency_hz", reasons)
        if not r.biphasic:
            reasons.append("biphasic forced (charge balance)")
        return replace(r, amplitude_ma=amp, pulse_width_us=pw, frequency_hz=f,
                       biphasic=True, contacts=list(r.contacts)), reasons

    def _clamp_opto(self, r: OptoCommand) -> tuple[OptoCommand | None, list[str]]:
        lim = self.limits
        values = (r.power_mw, r.irradiance_mw_mm2, r.pulse_width_ms, r.frequency_hz)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            return None, ["non-finite parameter"]
        reasons: list[str] = []
        p = _clamp(r.power_mw, 0.0, lim.max_power_mw, "power_mw", reasons)
        irr = _clamp(r.irradiance_mw_mm2, 0.0, lim.max_irradiance_mw_mm2, "irradiance_mw_mm2",
                     reasons)
        return replace(r, power_mw=p, irradiance_mw_mm2=irr, targets=list(r.targets)), reasons


def _clamp(v: float, lo: float, hi: float, name: str, reasons: list[str]) -> float:
    if v < lo:
        reasons.append(f"{name} {v:g} raised to {lo:g}")
        return lo
    if v > hi:
        reasons.append(f"{name} {v:g} clamped to {hi:g}")
        return hi
    return float(v)
