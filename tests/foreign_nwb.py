"""NWB files laid out as other labs' tools write them, made with pynwb (never our exporter).

* :func:`write_position_file`: sorted units tuned to a 2-D position, a ``Units`` table
  with ``obs_intervals`` (units not observed everywhere, spikes outside them present),
  ``Position``/``SpatialSeries`` at an irregular ~30 Hz in ``acquisition``, a trials
  table, electrodes, subject.
* :func:`write_head_direction_file`: head-direction cells, a ``CompassDirection``
  series (radians, regular 50 Hz) in ``processing['behavior']``.
* :func:`write_no_units_file`: an LFP-only style file: behaviour but no ``Units``.

The spikes are simulated from known tuning so a decoder must find real structure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def _nwbfile(desc: str):
    from pynwb import NWBFile
    from pynwb.file import Subject

    return NWBFile(session_description=desc, identifier=f"foreign-{desc}",
                   session_start_time=datetime(2024, 5, 6, 9, 30, tzinfo=UTC),
                   experimenter=["Doe, Jane"], lab="Other Lab", institution="Elsewhere U",
                   subject=Subject(subject_id="rat07", species="Rattus norvegicus", sex="M",
                                   age="P90D", description="implanted rat"))


def _poisson_spikes(rng: np.random.Generator, rates: np.ndarray, dt: float, t0: float
                    ) -> list[np.ndarray]:
    """Spike times per unit from rates (T, units) sampled every ``dt`` from ``t0``."""
    hits = rng.random(rates.shape) < rates * dt
    jitter = rng.random(rates.shape) * dt
    return [t0 + np.flatnonzero(hits[:, u]) * dt + jitter[hits[:, u], u]
            for u in range(rates.shape[1])]


def _write(nwb, path: Path) -> Path:
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def position_walk(t: np.ndarray) -> np.ndarray:
    """A smooth 2-D path (cm) made of a few slow sinusoids."""
    x = 20 * np.sin(2 * np.pi * t / 23.0) + 8 * np.sin(2 * np.pi * t / 7.3 + 1.0)
    y = 20 * np.cos(2 * np.pi * t / 17.0) + 8 * np.sin(2 * np.pi * t / 5.1 + 0.3)
    return np.stack([x, y], 1)


def write_position_file(path: Path, seconds: float = 240.0, units: int = 24, seed: int = 1,
                        t0: float = 1000.0) -> Path:
    """Units with obs_intervals + Position/SpatialSeries in acquisition; times from ``t0``."""
    from pynwb.behavior import Position

    rng = np.random.default_rng(seed)
    dt = 0.001
    t = t0 + np.arange(0, seconds, dt)
    pos = position_walk(t - t0)
    centres = rng.uniform(-25, 25, (units, 2))
    d2 = ((pos[:, None, :] - centres[None]) ** 2).sum(-1)
    rates = 3.0 + 40.0 * np.exp(-d2 / (2 * 12.0**2))
    spikes = _poisson_spikes(rng, rates, dt, t0)
    nwb = _nwbfile("position")
    device = nwb.create_device(name="tetrode-drive", description="8 tetrodes",
                               manufacturer="Lab-made")
    group = nwb.create_electrode_group(name="tetrodes", description="CA1 tetrodes",
                                       location="CA1", device=device)
    for _ in range(units):
        nwb.add_electrode(group=group, location="CA1")
    # The first 4 units were lost for a while: not observed in [t0+60, t0+90).
    lost = [[t0, t0 + 60.0], [t0 + 90.0, t0 + seconds]]
    whole = [[t0, t0 + seconds]]
    for u in range(units):
        nwb.add_unit(spike_times=spikes[u], obs_intervals=lost if u < 4 else whole,
                     electrodes=[u], electrode_group=group)
    # Irregular ~30 Hz tracking, as a video tracker timestamps it.
    ts = t0 + np.cumsum(rng.uniform(0.028, 0.038, int(seconds / 0.033)))
    ts = ts[ts < t0 + seconds]
    pos_s = position_walk(ts - t0)
    position = Position(name="Position")
    position.create_spatial_series(name="led", data=pos_s, timestamps=ts,
                                   reference_frame="arena centre", unit="cm")
    nwb.add_acquisition(position)
    for k in range(int(seconds // 10)):
        nwb.add_trial(start_time=t0 + 10.0 * k + 0.5, stop_time=t0 + 10.0 * k + 9.5)
    return _write(nwb, path)


def write_head_direction_file(path: Path, seconds: float = 240.0, units: int = 16,
                              seed: int = 2) -> Path:
    """Head-direction cells + CompassDirection (radians, 50 Hz) in processing['behavior']."""
    from pynwb.behavior import CompassDirection

    rng = np.random.default_rng(seed)
    dt = 0.001
    t = np.arange(0, seconds, dt)
    ang = np.cumsum(rng.normal(0, 0.05, len(t)))
    ang = np.angle(np.exp(1j * np.convolve(ang, np.ones(200) / 200, "same")))
    pref = np.linspace(-np.pi, np.pi, units, endpoint=False)
    rates = 1.0 + 30.0 * np.exp(3.0 * (np.cos(ang[:, None] - pref[None]) - 1))
    spikes = _poisson_spikes(rng, rates, dt, 0.0)
    nwb = _nwbfile("head-direction")
    for u in range(units):
        nwb.add_unit(spike_times=spikes[u])
    beh = nwb.create_processing_module(name="behavior", description="tracking")
    cd = CompassDirection(name="CompassDirection")
    every = int(0.02 / dt)
    cd.create_spatial_series(name="head_direction", data=ang[::every], rate=1 / 0.02,
                             starting_time=0.0, reference_frame="0 = east, counterclockwise",
                             unit="radians")
    beh.add(cd)
    return _write(nwb, path)


def write_no_units_file(path: Path) -> Path:
    """Behaviour and an LFP-like series but no Units table."""
    from pynwb import TimeSeries

    nwb = _nwbfile("no-units")
    nwb.add_acquisition(TimeSeries(name="lfp_like", data=np.zeros((1000, 4)), rate=1000.0,
                                   unit="volts", description="raw voltage"))
    return _write(nwb, path)
