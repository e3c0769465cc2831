"""Safety limits: validated at the edge, enforced by the guard.

Limits are a pydantic model because a wrong limit is itself a hazard: a
maximum below its minimum, or a negative charge cap, must be refused before it
ever reaches the guard.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SafetyLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # DBS
    max_amplitude_ma: float = Field(3.5, ge=0, le=25, description="Upper bound on amplitude")
    min_pulse_width_us: float = Field(20, gt=0, le=1000)
    max_pulse_width_us: float = Field(450, gt=0, le=1000)
    min_frequency_hz: float = Field(2, gt=0, le=1000)
    max_frequency_hz: float = Field(185, gt=0, le=1000)
    fallback_amplitude_ma: float = Field(0.0, ge=0, description="DBS level in the safe state")

    # light
    max_power_mw: float = Field(20.0, ge=0, le=1000)
    max_irradiance_mw_mm2: float = Field(10.0, ge=0, le=1000)

    # watchdog
    watchdog_ms: float = Field(100.0, gt=0, le=60_000,
                               description="Safe state if no decoder update arrives within this")

    @model_validator(mode="after")
    def _ranges(self) -> SafetyLimits:
        if self.min_pulse_width_us > self.max_pulse_width_us:
            raise ValueError("min_pulse_width_us must be <= max_pulse_width_us")
        if self.min_frequency_hz > self.max_frequency_hz:
            raise ValueError("min_frequency_hz must be <= max_frequency_hz")
        if self.fallback_amplitude_ma > self.max_amplitude_ma:
            raise ValueError("fallback_amplitude_ma must be <= max_amplitude_ma")
        return self
