"""Safety limits: validated at the edge, enforced by the guard.

Limits are a pydantic model because a wrong limit is itself a hazard: a
maximum below its minimum, or a negative charge cap, must be refused before it
ever reaches the guard. Defaults are conservative clinical values for a
Medtronic 3389-style DBS lead (1.5 mm contacts, 0.06 cm^2) and a 470 nm
ChR2 light source; ``docs/stimulation.md`` states the safety model.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SafetyLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # ---- DBS: pulse parameters
    max_amplitude_ma: float = Field(3.5, ge=0, le=25, description="Upper bound on amplitude")
    min_pulse_width_us: float = Field(20, gt=0, le=1000)
    max_pulse_width_us: float = Field(450, gt=0, le=1000)
    min_frequency_hz: float = Field(2, gt=0, le=1000)
    max_frequency_hz: float = Field(185, gt=0, le=1000)
    n_contacts: int = Field(4, ge=1, le=64, description="Valid contact ids are 0..n_contacts-1")
    fallback_amplitude_ma: float = Field(0.0, ge=0, description="DBS level in the safe state")

    # ---- DBS: charge (per phase, whole current assumed through one contact)
    electrode_area_cm2: float = Field(0.06, gt=0, le=10, description="Area of one contact")
    max_charge_per_phase_uc: float = Field(2.0, gt=0, le=100)
    max_charge_density_uc_cm2: float = Field(25.0, gt=0, le=1000,
                                             description="Absolute cap, uC/cm^2/phase")
    shannon_k_max: float = Field(1.75, le=3.0,
                                 description="log10(D) + log10(Q) must not exceed this")

    # ---- DBS: amplitude ramps
    max_slew_ma_per_s: float = Field(10.0, gt=0, le=1000)
    min_ramp_ms: float = Field(250.0, ge=0, le=60_000,
                               description="A 0 -> max_amplitude ramp takes at least this long")
    ramp_step_ms: float = Field(20.0, gt=0, le=1000,
                                description="No single amplitude step exceeds slew * this")

    # ---- both modalities: time on
    max_duty_cycle: float = Field(1.0, gt=0, le=1, description="On-time fraction per window")
    duty_window_s: float = Field(10.0, gt=0, le=3600)
    max_continuous_on_s: float = Field(0.0, ge=0, le=86_400, description="0 = unlimited")
    min_interval_ms: float = Field(0.0, ge=0, le=3_600_000,
                                   description="Minimum off-time between two trains")

    # ---- light
    max_power_mw: float = Field(20.0, ge=0, le=1000)
    max_irradiance_mw_mm2: float = Field(10.0, ge=0, le=1000)
    spot_area_mm2: float = Field(0.785, gt=0, le=1000,
                                 description="Illuminated area (1 mm spot): irradiance = P/area")
    min_wavelength_nm: float = Field(380, gt=0)
    max_wavelength_nm: float = Field(700, gt=0)
    min_light_pulse_ms: float = Field(0.5, gt=0, le=10_000)
    max_light_pulse_ms: float = Field(1000.0, gt=0, le=10_000)
    min_light_frequency_hz: float = Field(0.1, gt=0, le=1000)
    max_light_frequency_hz: float = Field(100.0, gt=0, le=1000)
    max_targets: int = Field(256, ge=1, le=100_000, description="Valid target ids 0..max-1")
    # first-order tissue heating: dT/dt = (heat_c_per_mw * P_avg - T) / thermal_tau_s
    max_temp_rise_c: float = Field(1.0, gt=0, le=10)
    heat_c_per_mw: float = Field(0.1, gt=0, le=10, description="Steady-state rise per mW avg")
    thermal_tau_s: float = Field(5.0, gt=0, le=600)
    thermal_horizon_s: float = Field(1.0, gt=0, le=600,
                                     description="Power is capped so T stays in budget this long")

    # ---- watchdog and clock
    watchdog_ms: float = Field(100.0, gt=0, le=60_000,
                               description="Safe state if no decoder update arrives within this")
    max_clock_jump_ms: float = Field(1000.0, gt=0, le=3_600_000,
                                     description="A source-clock step forward larger than this "
                                                 "(or any step back) is a discontinuity: safe "
                                                 "state and re-baseline")

    @model_validator(mode="after")
    def _ranges(self) -> SafetyLimits:
        for name in type(self).model_fields:
            v = getattr(self, name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{name} must be finite")
        pairs = [("min_pulse_width_us", "max_pulse_width_us"),
                 ("min_frequency_hz", "max_frequency_hz"),
                 ("fallback_amplitude_ma", "max_amplitude_ma"),
                 ("min_wavelength_nm", "max_wavelength_nm"),
                 ("min_light_pulse_ms", "max_light_pulse_ms"),
                 ("min_light_frequency_hz", "max_light_frequency_hz")]
        for lo, hi in pairs:
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} must be <= {hi}")
        if self.fallback_amplitude_ma > self.max_safe_amplitude_ma(self.min_pulse_width_us):
            raise ValueError("fallback_amplitude_ma breaks the charge limits even at the "
                             "shortest pulse width")
        if self.min_light_pulse_ms * self.min_light_frequency_hz > 1000:
            raise ValueError("the shortest light pulse does not fit in the period of the "
                             "lowest frequency")
        if self.thermal_horizon_s * 1000 < self.watchdog_ms:
            raise ValueError("thermal_horizon_s must cover the watchdog deadline: the light "
                             "may stay on that long without a new decision")
        return self

    # ---- derived limits (the guard and the tests share these definitions)
    def slew_ma_per_s(self) -> float:
        """Effective slew: the stricter of the slew cap and the minimum full-range ramp."""
        if self.min_ramp_ms <= 0:
            return self.max_slew_ma_per_s
        return min(self.max_slew_ma_per_s, self.max_amplitude_ma * 1000 / self.min_ramp_ms)

    def max_charge_uc(self) -> float:
        """Largest charge per phase allowed by the cap, the density cap and Shannon's k."""
        a = self.electrode_area_cm2
        shannon = math.sqrt(a * 10.0 ** self.shannon_k_max)  # log10(Q^2 / A) <= k
        return min(self.max_charge_per_phase_uc, self.max_charge_density_uc_cm2 * a, shannon)

    def max_safe_amplitude_ma(self, pulse_width_us: float,
                              max_charge_uc: float | None = None) -> float:
        """Highest amplitude whose charge per phase is within every charge limit.
        ``max_charge_uc``: :meth:`max_charge_uc`, when the caller keeps it (the guard,
        every bin)."""
        charge = self.max_charge_uc() if max_charge_uc is None else max_charge_uc
        return min(self.max_amplitude_ma, charge * 1000.0 / pulse_width_us)
