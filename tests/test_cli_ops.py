"""CLI polish: every command explains itself with an example; ``doctor`` checks the machine."""

from __future__ import annotations

import json
import os
import subprocess

from typer.main import get_command

from clients.cli import app
from tests.helpers import PY, REPO, free_port


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def test_every_command_has_help_with_an_example():
    missing = [" ".join(path) for path, cmd in _commands(get_command(app))
               if "Example" not in (cmd.help or "")]
    assert not missing, f"commands without an example in --help: {missing}"


def test_doctor_reports_every_check_as_json(tmp_path):
    port = free_port()
    proc = subprocess.run([PY, "-m", "clients.cli", "doctor", "--json", "--data-dir",
                           str(tmp_path), "--api", f"http://127.0.0.1:{port}",
                           "--source-port", str(free_port())],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert proc.returncode == (1 if any(c["status"] == "fail" for c in checks.values()) else 0)
    for name in ("python", "torch", "pyzmq", "torch threads", "clock source", "disk",
                 "control plane", "source port", "admin token"):
        assert name in checks, name
        assert checks[name]["status"] in ("ok", "warn", "fail")
    assert f"127.0.0.1:{port} is free" in checks["control plane"]["detail"]
    assert checks["admin token"]["status"] == "warn"  # no server has run in this data dir
    for item in ("scheduling", "cpu_dma_latency", "cpu"):  # granted, or how to grant it
        c = checks[f"realtime {item}"]
        assert c["status"] == "ok" or "to grant:" in c["detail"], c
    if os.geteuid() == 0:  # root may use SCHED_FIFO (unless a container forbids it)
        assert "SCHED_FIFO" in checks["realtime scheduling"]["detail"]
