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


def test_sim_replay_and_a_default_session_meet_on_one_private_local_socket(tmp_path,
                                                                          monkeypatch):
    """Defaults are the product: with no endpoint given anywhere, `spikeloop sim`/`replay`
    bind where a session listens by default, on ipc:// in a 0700 directory of this user."""
    from service.session.config import SessionConfig
    from service.wire.net import local_source_endpoint, prepare_bind

    monkeypatch.delenv("SPIKELOOP_SOURCE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    endpoint = local_source_endpoint()
    assert endpoint == f"ipc://{tmp_path}/spikeloop/source.sock"
    assert SessionConfig().source.endpoint == endpoint
    assert SessionConfig().output.endpoint == "ipc"
    prepare_bind(endpoint)
    assert (tmp_path / "spikeloop").stat().st_mode & 0o777 == 0o700
    cmd = get_command(app)
    defaults = {name: {p.name: p.default for p in cmd.commands[name].params}  # type: ignore
                for name in ("sim", "replay", "check-source")}
    import clients.cli_ops as ops
    # the CLI computed its default at import, in this process's environment
    assert defaults["sim"]["endpoint"] == defaults["replay"]["endpoint"] == ops.LOCAL_SOURCE
    assert defaults["check-source"]["endpoint"] == ops.LOCAL_SOURCE
    monkeypatch.setenv("SPIKELOOP_SOURCE", "tcp://127.0.0.1:5999")
    assert SessionConfig().source.endpoint == "tcp://127.0.0.1:5999"
