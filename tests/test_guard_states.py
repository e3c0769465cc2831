"""Stateful property test: the limits hold *in force over time*, in both clocks.

A hypothesis ``RuleBasedStateMachine`` interleaves requests (DBS and opto, every
train setting including ``train_ms = 0``), arm/disarm, safe states, limit
changes, source restarts and leaps, stalls and backlogs (many bins in little
wall time), and checks with the independent model in ``tests/guard_model.py``
what the stimulator actually does in wall time (continuous-on, duty over the
window, thermal, minimum interval, slew) - not only each returned command.
The long run is ``bench/guard_states.py``.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.guard_model import MS, S, World, random_limits, random_request

seeds = st.integers(0, 2**32 - 1)


class GuardStates(RuleBasedStateMachine):
    @initialize(modality=st.sampled_from(["dbs", "opto"]), seed=seeds,
                bin_ms=st.sampled_from([1.0, 1.0, 5.0, 20.0]))
    def start(self, modality: str, seed: int, bin_ms: float) -> None:
        self.rng = random.Random(seed)
        self.world = World(random_limits(self.rng), modality, bin_ms)
        self.world.guard.arm()

    @rule(seed=seeds, n=st.sampled_from([1, 1, 3, 20]), repeat=st.booleans(),
          wall=st.sampled_from(["real", "real", "none", "slow"]))
    def bins(self, seed: int, n: int, repeat: bool, wall: str) -> None:
        w = self.world
        rng = random.Random(seed)
        per = {"real": w.bin, "none": 0, "slow": 3 * w.bin}[wall]
        w.bins(n, random_request(rng, w.modality), per, repeat=repeat)

    @rule(seed=seeds, n=st.integers(10, 300), wall_us=st.integers(0, 100))
    def backlog(self, seed: int, n: int, wall_us: int) -> None:
        w = self.world
        w.bins(n, random_request(random.Random(seed), w.modality), wall_us * 1000,
               repeat=n % 2 == 0)

    @rule(ms=st.integers(0, 3000))
    def stall(self, ms: int) -> None:
        self.world.stall(ms * MS)

    @rule(back_ms=st.integers(0, 60_000))
    def restart(self, back_ms: int) -> None:
        self.world.restart(back_ms * MS)

    @rule(fwd_ms=st.sampled_from([5, 500, 2000, 3_600_000]))
    def leap(self, fwd_ms: int) -> None:
        self.world.leap(fwd_ms * MS)

    @rule()
    def arm(self) -> None:
        self.world.arm()

    @rule()
    def disarm(self) -> None:
        self.world.disarm()

    @rule()
    def safe(self) -> None:
        self.world.safe()

    @rule(seed=seeds)
    def limits(self, seed: int) -> None:
        self.world.set_limits(random_limits(random.Random(seed)))

    @invariant()
    def nothing_out_of_bounds(self) -> None:
        if hasattr(self, "world"):
            v = self.world.violations
            assert not v, (dict(v), self.world.phys.first)


GuardStates.TestCase.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
test_guard_states = GuardStates.TestCase

assert S > MS
