"""Operator commands of the ``spikeloop`` CLI: ``report``, ``doctor`` and ``lsl``.

Kept apart from ``clients/cli.py`` (the session commands) and registered there.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import typer

from service.wire.net import local_source_endpoint

DATA = Path(os.environ.get("SPIKELOOP_DATA_DIR", "var"))
API = os.environ.get("SPIKELOOP_API", "http://127.0.0.1:8000")
LOCAL_SOURCE = local_source_endpoint()  # ipc:// in this user's runtime dir, or $SPIKELOOP_SOURCE
BIND_HELP = ("PUB endpoint to bind (default: this user's local source socket, where sessions "
             "look by default; tcp://IP:PORT to publish to other hosts)")


# ============================================================================ report
def report(recording: Path = typer.Argument(..., exists=True, dir_okay=False,
                                            help="A .splog session log"),
           out: Path | None = typer.Option(None, "--out", "-o",
                                           help="Figure path (.png/.svg/.pdf); default: "
                                                "beside the log, <name>.report.png"),
           html: bool = typer.Option(False, "--html", help="Also write <out>.html with the "
                                                           "figure inline and its numbers"),
           raster_s: float = typer.Option(10.0, min=0.1, help="Seconds of spikes in the raster"),
           quiet: bool = typer.Option(False, help="No progress bar")):
    """Draw a recorded session: raster, decoded vs true, stimulation timeline, arrival delays.

    Examples:
      spikeloop report var/recordings/abc-20261123T101500.splog
      spikeloop report session.splog --out figs/session.png --html --raster-s 5
    """
    from service.recording.replay import text_progress

    from .report import load, render, write_html

    data = load(recording, raster_s, None if quiet else text_progress("read"))
    png = render(data, out or recording.with_suffix(".report.png"), raster_s)
    typer.echo(str(png))
    if html:
        typer.echo(str(write_html(data, png, png.with_suffix(".html"))))


# ============================================================================ doctor
@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str


def doctor(api: str = typer.Option(API, help="Control plane to ask for /healthz"),
           data_dir: Path = typer.Option(DATA, help="Data directory (database, recordings)"),
           source_port: int = typer.Option(5555, help="Default source port to check"),
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output")):
    """Check this machine for running spikeloop: ports, disk, torch threads, clock, versions,
    and the real-time layout sessions get (SCHED_FIFO, cpu_dma_latency, cores to pin to).

    Exits 1 if a check fails (warnings do not).
    Examples:
      spikeloop doctor
      spikeloop doctor --api http://127.0.0.1:8001 --data-dir /data/spikeloop --json
    """
    checks = [*_versions(), _torch_threads(), _clock(), *_realtime(), _disk(data_dir),
              _api(api), _port(source_port, "source port"), _token(data_dir), _chromium()]
    if as_json:
        typer.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        for c in checks:
            typer.echo(f"{c.status.upper():4s}  {c.name:<18} {c.detail}")
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


def _versions() -> list[Check]:
    out = [Check("python", "ok" if sys.version_info >= (3, 11) else "fail",
                 f"{platform.python_version()} ({sys.executable})")]
    for dist, needed in (("spikeloop", True), ("torch", True), ("numpy", True),
                         ("pyzmq", True), ("fastapi", True), ("uvicorn", True),
                         ("pynwb", False), ("matplotlib", False), ("playwright", False),
                         ("pylsl", False)):
        try:
            v = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out.append(Check(dist, "fail" if needed else "warn",
                             "not installed" + ("" if needed else " (optional extra)")))
            continue
        detail = v
        if dist == "torch" and not v.startswith("2.13.0"):
            out.append(Check(dist, "warn", f"{v}: spikeloop pins torch==2.13.0 (CPU)"))
            continue
        if dist == "pyzmq":
            import zmq

            detail += f" (libzmq {zmq.zmq_version()})"
        if dist == "pylsl":
            detail += _liblsl_version()
        out.append(Check(dist, "ok", detail))
    return out


def _liblsl_version() -> str:
    try:
        import pylsl

        return f" (liblsl {pylsl.library_version()})"
    except Exception as exc:  # a missing/broken shared library is what doctor is for
        return f" (liblsl not loadable: {exc})"


def _torch_threads() -> Check:
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = torch.get_num_threads()
    detail = (f"{n} intra-op threads here, {cpus} usable CPUs; session processes use 1 thread "
              "each (one loop per core)")
    return Check("torch threads", "ok" if cpus and cpus >= 2 else "warn", detail)


def _realtime() -> list[Check]:
    """The real-time layout a session started from here gets (each item tried, then undone)."""
    from service.session.realtime import ItemState, probe_host

    return [Check(f"realtime {i.name}", "ok" if i.state is ItemState.APPLIED else "warn",
                  i.detail + (f"; to grant: {i.grant}" if i.grant else ""))
            for i in probe_host()]


def _clock() -> Check:
    base = Path("/sys/devices/system/clocksource/clocksource0")
    try:
        current = (base / "current_clocksource").read_text().strip()
        available = (base / "available_clocksource").read_text().split()
    except OSError:
        current, available = "unknown", []
    res = time.get_clock_info("perf_counter").resolution
    detail = f"{current} (available: {' '.join(available) or '-'}), perf_counter resolution " \
             f"{res * 1e9:.0f} ns"
    if current in ("tsc", "arch_sys_counter", "kvm-clock"):
        return Check("clock source", "ok", detail)
    return Check("clock source", "warn", detail + ": a slow clock source (e.g. hpet) adds "
                                                   "microseconds to every timestamp")


def _disk(data_dir: Path) -> Check:
    from service.recording.storage import free_bytes

    probe = data_dir if data_dir.exists() else Path(data_dir.resolve().anchor)
    free = free_bytes(probe)
    gib = free / 2**30
    status = "ok" if gib >= 5 else "warn" if gib >= 1 else "fail"
    return Check("disk", status, f"{gib:.1f} GiB free for {data_dir}")


def _api(api: str) -> Check:
    import httpx

    try:
        r = httpx.get(api.rstrip("/") + "/healthz", timeout=2.0)
        return Check("control plane", "ok", f"{api} answers: version {r.json().get('version')}")
    except (httpx.HTTPError, ValueError):
        host, _, port = api.split("://")[-1].partition(":")
        return _port(int(port.split("/")[0] or 80), "control plane", host or "127.0.0.1",
                     extra=f"; nothing answers {api}/healthz (start it: spikeloop serve)")


def _port(port: int, name: str, host: str = "127.0.0.1", extra: str = "") -> Check:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return Check(name, "warn", f"{host}:{port} is in use ({exc.strerror}){extra}")
    return Check(name, "ok", f"{host}:{port} is free{extra}")


def _token(data_dir: Path) -> Check:
    path = data_dir / "admin.token"
    if path.exists():
        mode = path.stat().st_mode & 0o777
        status = "ok" if mode & 0o077 == 0 else "warn"
        return Check("admin token", status, f"{path} (mode {mode:o})")
    return Check("admin token", "warn", f"{path} not created yet (spikeloop serve creates it)")


def _chromium() -> Check:
    path = shutil.which("chromium") or ("/usr/bin/chromium"
                                        if Path("/usr/bin/chromium").exists() else None)
    if path:
        return Check("chromium", "ok", f"{path} (dashboard browser tests)")
    return Check("chromium", "warn", "missing: browser tests skip (apt-get install chromium)")


# ============================================================================ lsl
lsl_app = typer.Typer(help="Lab Streaming Layer bridges (needs pylsl: the 'lsl' extra).",
                      no_args_is_help=True)


def _until_signal() -> dict[str, bool]:
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
    return stop


@lsl_app.command("source")
def lsl_source(spikes: str = typer.Argument(..., help="Name of the LSL spike stream"),
               endpoint: str = typer.Option(LOCAL_SOURCE, help=BIND_HELP),
               behavior: str | None = typer.Option(None, help="LSL stream with the behaviour "
                                                              "(truth/calibration targets)"),
               channels: int | None = typer.Option(None, help="Units of an event stream"),
               timeout_s: float = typer.Option(10.0, help="How long to look for the streams")):
    """Publish an LSL spike stream (and behaviour) on the wire protocol, as a session source.

    A regular-rate N-channel stream is read as spike counts per sample; an irregular
    1-channel stream as one spike per sample whose value is the unit id.
    Examples:
      spikeloop lsl source RigSpikes --behavior RigHand --endpoint tcp://127.0.0.1:5555
      spikeloop lsl source SortedUnits --channels 128
    """
    from .lsl_bridge import LslSource

    src = LslSource(spikes, endpoint, behavior, channels, timeout_s)
    kind = "events" if src.events else f"counts ({src.bin_ns / 1e6:g} ms)"
    typer.echo(f"LSL {spikes!r} ({src.channels} channels, {kind}) -> {src.endpoint}", err=True)
    stop = _until_signal()
    try:
        stats = src.run(lambda: stop["flag"])
    except KeyboardInterrupt:
        stats = src.stats
    finally:
        src.close()
    typer.echo(json.dumps(stats.__dict__), err=True)


@lsl_app.command("outlet")
def lsl_outlet(sid: str = typer.Argument(..., help="Session id"),
               api: str = typer.Option(API), prefix: str | None = typer.Option(
                   None, help="Outlet name prefix (default spikeloop-<sid>)"),
               data_dir: Path = typer.Option(DATA, help="Where the admin token is"),
               token: str | None = typer.Option(None, help="A token with the read scope "
                                                           "(default SPIKELOOP_TOKEN, then "
                                                           "the admin token)"),
               timestamps: str = typer.Option("local", help="local: LSL clock at receipt; "
                                                            "source: the bin's source time "
                                                            "(for LSL-fed sessions)"),
               wait_s: float = typer.Option(60.0, help="Wait this long for a running decoder")):
    """Offer a session's decoded outputs and stimulation events as LSL outlets (LabRecorder).

    Outlets: <prefix>-decoded (one sample per bin) and <prefix>-stim (a JSON marker each
    time the stimulation outcome changes).
    Examples:
      spikeloop lsl outlet 3f2a9c1b7d10
      spikeloop lsl outlet 3f2a9c1b7d10 --timestamps source --prefix rig1
    """
    from .control import client_for
    from .lsl_bridge import LslSink

    deadline = time.monotonic() + wait_s
    with client_for(api, data_dir, token) as c:
        while True:
            s = c.session(sid)
            dec = (s.get("live") or {}).get("decoder")
            if dec or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    if not dec or not s["output_endpoint"]:
        typer.echo(f"session {sid} has no running decoder (state {s['state']})", err=True)
        raise typer.Exit(1)
    sink = LslSink(s["output_endpoint"], prefix or f"spikeloop-{sid}", dec["n_outputs"],
                   dec.get("output_names"), s["config"].get("bin_ms", 0.0), timestamps)
    typer.echo(f"session {sid} -> LSL {prefix or f'spikeloop-{sid}'}-decoded/-stim", err=True)
    stop = _until_signal()
    try:
        stats = sink.run(lambda: stop["flag"])
    except KeyboardInterrupt:
        stats = sink.stats
    finally:
        sink.close()
    typer.echo(json.dumps(stats.__dict__), err=True)
