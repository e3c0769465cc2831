"""Long random walk of the closed loop through every state the guard can meet (#20).

The same world and independent checker as ``tests/test_guard_states.py``
(``tests/guard_model.py``): guard on the source clock -> physical monitor on
the wall clock -> a model stimulator, through requests of both modalities and
every train setting (``train_ms = 0`` too), arm/disarm, safe states, limit
changes, source restarts and leaps, stalls and backlogs. A *violation* is a
bound of ``docs/stimulation.md`` broken by what is physically in force (wall
time), or a guard command outside the static limits. The table also shows how
often the monitor had to intervene, by limit, and (``--guard-alone``) what
would have reached the stimulator without it.

    nice -n 19 .venv/bin/python bench/guard_states.py --json results/guard_states.json
    .venv/bin/python bench/guard_states.py --quick
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import report  # noqa: E402
from tests.guard_model import World, random_limits, random_step  # noqa: E402


def run(steps: int, seed: int, walk: int, guard_alone: bool = False) -> dict:
    rng = random.Random(seed)
    violations: Counter[str] = Counter()
    interventions: Counter[str] = Counter()
    done = worlds = discontinuities = 0
    examples: list[str] = []
    t0 = time.perf_counter()
    while done < steps:
        world = World(random_limits(rng), rng.choice(["dbs", "opto"]),
                      rng.choice([1.0, 1.0, 5.0, 20.0]), monitor=not guard_alone)
        world.guard.arm()
        worlds += 1
        for _ in range(walk):
            random_step(world, rng)
            if world.steps + done >= steps:
                break
        done += world.steps
        violations.update(world.violations)
        interventions.update(world.monitor.by_limit)
        discontinuities += world.guard.discontinuities
        if world.violations and len(examples) < 5:
            examples.extend(world.phys.first[:1])
    return {"steps": done, "violations": sum(violations.values()),
            "by_limit": dict(sorted(violations.items())),
            "monitor_interventions": dict(sorted(interventions.items())),
            "guard_discontinuities": discontinuities, "worlds": worlds, "seed": seed,
            "guard_alone": guard_alone, "examples": examples,
            "seconds": round(time.perf_counter() - t0, 1)}


def print_table(res: dict) -> None:
    print(f"guard states: {res['steps']:,} steps in {res['worlds']:,} worlds, "
          f"{res['seconds']} s{'  (guard alone, no monitor)' if res['guard_alone'] else ''}")
    print(f"{'limit':<24}{'violations':>12}{'monitor':>12}")
    keys = sorted(set(res["by_limit"]) | set(res["monitor_interventions"]))
    for k in keys:
        print(f"{k:<24}{res['by_limit'].get(k, 0):>12,}"
              f"{res['monitor_interventions'].get(k, 0):>12,}")
    print(f"{'total':<24}{res['violations']:>12,}"
          f"{sum(res['monitor_interventions'].values()):>12,}")
    print(f"source-clock discontinuities handled by the guard: "
          f"{res['guard_discontinuities']:,}")
    for e in res["examples"]:
        print("  e.g.", e)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="20,000 steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--walk", type=int, default=60, help="rules per world (limits/modality)")
    ap.add_argument("--guard-alone", action="store_true",
                    help="no physical monitor: what the guard alone puts in force")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    logging.disable(logging.WARNING)  # the guard logs every discontinuity it handles
    res = run(20_000 if a.quick else a.steps, a.seed, a.walk, a.guard_alone)
    return report(res, print_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
