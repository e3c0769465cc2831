"""Publish a simulated source on the wire protocol, in real time or as fast as possible.

Sources that respond to stimulation get every ``stim.command`` the session
publishes (``stim_endpoint``), so the loop is closed through the source.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sources.base import SimSource

from .publisher import SpikePublisher
from .stimulator import StimulatorLink


def run_source(source: SimSource, publisher: SpikePublisher, step_ms: float = 1.0,
               realtime: bool = True, duration_s: float | None = None,
               stim_endpoint: str | None = None, send_counts: bool = False,
               should_stop: Callable[[], bool] = lambda: False,
               on_step: Callable[[int], None] | None = None) -> int:
    """Run until ``duration_s`` of source time, or ``should_stop()``; returns steps sent."""
    step_ns = int(step_ms * 1e6)
    link = None
    if stim_endpoint:
        link = StimulatorLink(stim_endpoint, on_command=source.apply_stim)
    names = list(source.truth_names)
    t_start = time.perf_counter()
    steps = 0
    try:
        while not should_stop():
            if duration_s is not None and source.t_ns >= duration_s * 1e9:
                break
            if link is not None:
                link.poll()
            t_from = source.t_ns
            step = source.advance(step_ns)
            if realtime:
                delay = t_start + step.t_ns / 1e9 - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            # Behaviour first: a bin closed by the spikes frame then finds its truth.
            publisher.send_behavior(step.truth, step.t_ns, names)
            if send_counts:
                import numpy as np

                counts = np.bincount(step.ids, minlength=source.channels).astype("<u2")
                publisher.send_counts(counts, t_from, step_ns)
            else:
                publisher.send_events(step.ids, step.times, step.t_ns)
            steps += 1
            if on_step is not None:
                on_step(steps)
    finally:
        if link is not None:
            link.close()
    return steps

