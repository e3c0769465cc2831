"""The throughput bench works end to end (no timing thresholds: the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_throughput_smoke_writes_the_contract_keys(tmp_path):
    out = tmp_path / "throughput.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "throughput.py"), "--smoke",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert isinstance(res["events_per_s"], int)
    assert isinstance(res["sessions_at_p99_1ms"], int)
    level = res["ingest"]["levels"][0]
    assert level["events_counted"] == level["events_sent"]  # nothing lost at a low rate
    assert {"p50_us", "p99_us", "p999_us", "max_us"} <= level.keys()
    assert "floor_p50_us" in res["ingest"] and "floor_p50_us" in res["concurrency"]
    assert res["concurrency"]["levels"][0]["per_session"][0]["bins"] > 0
