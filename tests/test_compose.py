"""docker-compose.yml, validated offline (no Docker engine here) against the Compose spec."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from ruamel.yaml import YAML

from clients.cli import app

REPO = Path(__file__).resolve().parents[1]


def test_compose_file_matches_the_compose_spec():
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    r = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec",
                        str(REPO / "docker-compose.yml")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _services():
    return YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())["services"]


def test_service_and_source_are_separate_services():
    services = _services()
    assert {"spikeloop", "sim"} <= set(services)
    assert services["spikeloop"]["command"][1] == "serve"
    assert services["sim"]["command"][1] == "sim"


def test_cluster_profile_has_redis_and_a_scalable_worker():
    services = _services()
    assert services["redis"]["image"] == "redis:7"
    assert services["worker"]["command"][1] == "worker"
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert {s for s, v in services.items() if "cluster" in v.get("profiles", [])} >= {
        "redis", "worker", "recorder"}
    assert "--redis" in services["spikeloop"]["command"]


@pytest.mark.parametrize("name", ["spikeloop", "sim", "worker", "recorder"])
def test_compose_commands_exist_and_their_options_parse(name):
    argv = _services()[name]["command"]
    assert argv[0] == "spikeloop"
    cli = typer.main.get_command(app)
    sub = cli.get_command(None, argv[1])
    assert sub is not None, f"spikeloop has no command {argv[1]!r}"
    ctx = sub.make_context(argv[1], list(argv[2:]))  # raises on an unknown option
    assert ctx.params


def test_dockerfile_copies_every_package():
    text = (REPO / "Dockerfile").read_text()
    for pkg in ("service", "decoders", "stim", "sources", "clients"):
        assert f"COPY {pkg} {pkg}" in text
    assert '"torch==2.13.0"' in text


def test_the_image_is_multi_stage_non_root_and_installs_the_lock_non_editable():
    text = (REPO / "Dockerfile").read_text()
    assert text.count("\nFROM ") >= 2  # a build stage and a run stage
    assert "COPY --from=build" in text and "USER spikeloop" in text
    assert "-c requirements.lock" in text and " -e " not in text
    assert "\nHEALTHCHECK " in text and "\nCMD [" in text


def test_compose_services_get_only_what_real_time_needs():
    for name, svc in _services().items():
        if "build" not in svc:
            continue  # redis: its own image
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"] and svc["cap_add"] == ["SYS_NICE"], name
        assert svc["ulimits"]["rtprio"] == {"soft": 99, "hard": 99}, name
        assert any(v.endswith((":/data", ":/central")) for v in svc.get("volumes", [])) \
            or name == "sim", name
    assert _services()["spikeloop"]["ports"] == ["127.0.0.1:8000:8000"]
