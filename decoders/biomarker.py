"""Biomarkers from spikes: beta band power and ensemble firing rate.

The population spike count (sum over channels, one value per bin) is a crude
local field potential: when units fire locked to a shared beta rhythm, it
oscillates at beta. Band-passing it causally (Butterworth, second-order
sections stepped bin by bin) and averaging its square over a sliding window
gives beta band power, the biomarker adaptive DBS uses. ``fit`` scales it so
that the median over a calibration recording (no stimulation) reads 1, which
puts policy thresholds in units a clinician would set ("1.5x resting beta").

The second output is the mean firing rate (Hz per unit) of ``rate_channels``
over a sliding window: the measurement an optogenetic rate clamp holds.
Stepping bin by bin and ``predict`` over a recording run the same code path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.signal import butter

from .base import Decoder


class BetaPowerDecoder(Decoder):
    kind = "beta_power"

    def __init__(self, n_inputs: int = 0, bin_ms: float = 1.0,
                 band_hz: tuple[float, float] = (13.0, 30.0), order: int = 2,
                 window_ms: float = 200.0, rate_window_ms: float = 100.0,
                 rate_channels: list[int] | None = None, scale: float = 1.0):
        self._init(n_inputs, bin_ms, band_hz, order, window_ms, rate_window_ms, rate_channels,
                   scale)

    def _init(self, n_inputs: int, bin_ms: float, band_hz: tuple[float, float], order: int,
              window_ms: float, rate_window_ms: float, rate_channels: list[int] | None,
              scale: float) -> None:
        """Set the parameters and build the filter (``__init__``, ``load_state_dict``)."""
        self.n_inputs = int(n_inputs)
        self.n_outputs = 2
        self.output_names = ["beta_power", "rate_hz"]
        self.bin_ms = float(bin_ms)
        self.band_hz = (float(band_hz[0]), float(band_hz[1]))
        self.order = int(order)
        self.window_ms = float(window_ms)
        self.rate_window_ms = float(rate_window_ms)
        self.rate_channels = None if rate_channels is None else [int(c) for c in rate_channels]
        self.scale = float(scale)
        self._prepare()

    def _prepare(self) -> None:
        fs = 1000.0 / self.bin_ms
        if not 0 < self.band_hz[0] < self.band_hz[1] < fs / 2:
            raise ValueError(f"band {self.band_hz} Hz must lie inside 0..{fs / 2:g} Hz")
        self.sos = butter(self.order, self.band_hz, btype="bandpass", fs=fs, output="sos")
        self._coef = [tuple(float(v) for v in s) for s in self.sos]
        self._n_pow = max(1, round(self.window_ms / self.bin_ms))
        self._n_rate = max(1, round(self.rate_window_ms / self.bin_ms))
        self._rate_idx = (None if self.rate_channels is None
                          else np.asarray(self.rate_channels, dtype=np.intp))
        self._out = np.zeros(2)
        self.reset()

    def reset(self) -> None:
        self._z = [[0.0, 0.0] for _ in self._coef]
        self._pow = np.zeros(self._n_pow)
        self._rate = np.zeros(self._n_rate)
        self._i = 0
        self._sum_pow = 0.0
        self._sum_rate = 0.0

    def step(self, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts)
        y = float(counts.sum())
        for (b0, b1, b2, _a0, a1, a2), z in zip(self._coef, self._z, strict=True):
            x = y
            y = b0 * x + z[0]
            z[0] = b1 * x - a1 * y + z[1]
            z[1] = b2 * x - a2 * y
        sel = counts if self._rate_idx is None else counts[self._rate_idx]
        rate = float(sel.mean()) * 1000.0 / self.bin_ms if sel.size else 0.0
        # Sliding sums; refreshed exactly once per lap of the ring so rounding cannot drift.
        ip, ir = self._i % self._n_pow, self._i % self._n_rate
        self._sum_pow += y * y - self._pow[ip]
        self._pow[ip] = y * y
        self._sum_rate += rate - self._rate[ir]
        self._rate[ir] = rate
        if ip == self._n_pow - 1:
            self._sum_pow = float(self._pow.sum())
        if ir == self._n_rate - 1:
            self._sum_rate = float(self._rate.sum())
        self._i += 1
        self._out[0] = max(0.0, self._sum_pow) / min(self._i, self._n_pow) / self.scale
        self._out[1] = max(0.0, self._sum_rate) / min(self._i, self._n_rate)
        return self._out

    def fit(self, counts: np.ndarray, targets: np.ndarray | None = None,
            bin_ms: float | None = None, **_: Any) -> BetaPowerDecoder:
        """Calibrate: median beta power over ``counts`` (no stimulation) becomes 1."""
        counts = np.asarray(counts, float)
        self.n_inputs = counts.shape[1]
        if bin_ms:
            self.bin_ms = float(bin_ms)
        self.scale = 1.0
        self._prepare()
        beta = self.predict(counts)[:, 0]
        settled = beta[self._n_pow:] if len(beta) > 2 * self._n_pow else beta
        self.scale = float(np.median(settled)) or 1.0
        return self

    def metadata(self) -> dict[str, Any]:
        return super().metadata() | {
            "band_hz": list(self.band_hz), "order": self.order, "window_ms": self.window_ms,
            "rate_window_ms": self.rate_window_ms, "rate_channels": self.rate_channels,
            "scale": self.scale,
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"sos": np.asarray(self.sos), "scale": np.array([self.scale])}

    def load_state_dict(self, state: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        band = meta["band_hz"]
        self._init(n_inputs=meta["n_inputs"], bin_ms=meta["bin_ms"],
                   band_hz=(band[0], band[1]), order=meta["order"],
                   window_ms=meta["window_ms"], rate_window_ms=meta["rate_window_ms"],
                   rate_channels=meta.get("rate_channels"),
                   scale=float(state["scale"][0]))
