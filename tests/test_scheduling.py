"""Session scheduling: SCHED_FIFO and pinning are applied, or their refusal is reported."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import os, sys
from service.runner import set_scheduling
note = set_scheduling(0, 10)
print(note)
print(os.sched_getscheduler(0) == os.SCHED_FIFO, sorted(os.sched_getaffinity(0)))
"""


def test_set_scheduling_applies_or_reports_refusal():
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    note, state = r.stdout.strip().splitlines()
    assert "cpu 0" in note and sorted(os.sched_getaffinity(0))  # pinned in the child only
    if "SCHED_FIFO 10" in note and "refused" not in note:
        assert state == "True [0]"
    else:  # no CAP_SYS_NICE here: said plainly, and the process still runs
        assert "refused" in note and "CAP_SYS_NICE" in note
