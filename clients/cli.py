"""The ``spikeloop`` command line."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from .cli_ops import BIND_HELP, LOCAL_SOURCE

app = typer.Typer(
    help="spikeloop: closed-loop BCI service. Start with `spikeloop run` (everything at once) "
         "or `spikeloop serve` + `spikeloop sim` + `spikeloop session create/start`.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
session_app = typer.Typer(help="Create, start, stop and list sessions.", no_args_is_help=True)
app.add_typer(session_app, name="session")
token_app = typer.Typer(help="Create, list and revoke API tokens (named, scoped, expiring).",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")


DEFAULT_DATA = Path(os.environ.get("SPIKELOOP_DATA_DIR", "var"))
DEFAULT_API = os.environ.get("SPIKELOOP_API", "http://127.0.0.1:8000")


def _client(api: str, data_dir: Path, token: str | None):
    """A REST client with the token (--token, SPIKELOOP_TOKEN or the admin token file) and
    the CA that signed an https control plane's certificate (--ca-file, SPIKELOOP_CA_FILE)."""
    from .control import client_for

    return client_for(api, data_dir, token)


CA_ENV = "SPIKELOOP_CA_FILE"  # clients.control.CA_ENV (not imported here: httpx is slow)


@app.callback(invoke_without_command=False)
def _options(verbose: bool = typer.Option(False, "--verbose", "-v",
                                          help="Debug logging from every part"),
             ca_file: Path | None = typer.Option(
                 None, "--ca-file", exists=True, dir_okay=False,
                 help="CA certificate (PEM) that signed the control plane's TLS certificate "
                      f"(or {CA_ENV}); the system's CAs otherwise")) -> None:
    """Service parts log through ``logging``: one line each, to stderr."""
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for chatty in ("httpx", "httpcore"):  # one line per request is noise on a terminal
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if ca_file is not None:  # every client made below reads it from here
        os.environ[CA_ENV] = str(ca_file)


# ============================================================================ sim
@app.command()
def sim(endpoint: str = typer.Option(LOCAL_SOURCE, help=BIND_HELP),
        source: str = typer.Option("motor", help="motor | parkinson | opsin"),
        units: int = typer.Option(96, min=1, max=65535, help="Number of units"),
        step_ms: float = typer.Option(1.0, help="Frame period (source clock)"),
        seed: int = typer.Option(0),
        fast: bool = typer.Option(False, help="As fast as possible instead of real time"),
        seconds: float | None = typer.Option(None, help="Stop after this much source time"),
        counts: bool = typer.Option(False, help="Publish binned counts instead of events"),
        stim_endpoint: str | None = typer.Option(None, help="Session output to take stim from"),
        baseline_hz: float = typer.Option(12.0), modulation_hz: float = typer.Option(10.0),
        drift_at: float | None = typer.Option(
            None, min=0, help="Motor source: drift at this source time (s): rotate every "
                              "preferred direction and silence units (logged when it happens)"),
        drift_deg: float = typer.Option(30.0, help="Drift: rotation of the preferred "
                                                   "directions (degrees)"),
        drift_silence: float = typer.Option(0.2, min=0, max=1, help="Drift: fraction of the "
                                                                    "units silenced"),
        curve_secret: Path | None = typer.Option(None, help="CurveZMQ secret key: encrypt"),
        curve_allow: Path | None = typer.Option(None, help="Directory of session public keys "
                                                           "allowed to subscribe"),
        redis: str | None = typer.Option(None, help="Publish to a Redis stream on this server "
                                                    "(redis://host:port/db) instead of ZeroMQ"),
        redis_stream: str | None = typer.Option(None, help="Stream name (the sessions' "
                                                           "source.redis_stream)"),
        redis_maxlen: int = typer.Option(100_000, min=1, help="Trim the stream to about this "
                                                              "many entries")):
    """Publish a simulated neural source on the wire protocol.

    With --redis and --redis-stream, frames go to that Redis stream instead of the ZeroMQ
    endpoint (sessions on other hosts read it with source.redis_stream).

    With --drift-at, the motor source drifts at that source time (what online
    recalibration, ``decoder.adapt`` or ``POST /sessions/{id}/adapt``, must recover from).

    Examples: spikeloop sim --units 256 --endpoint tcp://127.0.0.1:5555
              spikeloop sim --redis redis://10.0.0.5:6379/0 --redis-stream rig1
              spikeloop sim --drift-at 180 --drift-deg 30 --drift-silence 0.2
    """
    from .publisher import SpikePublisher
    from .simrunner import run_source

    if bool(redis) != bool(redis_stream):
        raise typer.BadParameter("--redis and --redis-stream go together: the server, and the "
                                 "stream name the sessions read (source.redis_stream)")
    drift = None if drift_at is None else (drift_at, drift_deg, drift_silence)
    src = _make_source(source, units, seed, baseline_hz, modulation_hz, drift)
    sink = None
    if redis and redis_stream:
        from .redis_publisher import RedisStreamSink

        try:
            sink = RedisStreamSink(redis, redis_stream, maxlen=redis_maxlen)
        except (ConnectionError, ValueError) as exc:
            raise typer.BadParameter(str(exc)) from None
    pub = SpikePublisher(endpoint, src.channels, stream=f"sim-{source}",
                         curve_secret_file=str(curve_secret) if curve_secret else None,
                         curve_allowed_dir=str(curve_allow) if curve_allow else None,
                         sink=sink)
    typer.echo(f"{source} source: {src.channels} units on {pub.endpoint}", err=True)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
    try:
        run_source(src, pub, step_ms, realtime=not fast, duration_s=seconds,
                   stim_endpoint=stim_endpoint, send_counts=counts,
                   should_stop=lambda: stop["flag"])
    except KeyboardInterrupt:
        pass
    finally:
        pub.close()


def _make_source(kind: str, units: int, seed: int, baseline_hz: float, modulation_hz: float,
                 drift: tuple[float, float, float] | None = None):
    """``drift``: (at s, degrees, fraction silenced) of a scheduled drift (motor only)."""
    if drift is not None and kind != "motor":
        raise typer.BadParameter(f"--drift-at: only the motor source drifts, not {kind!r}")
    if kind == "motor":
        from sources.motor import MotorConfig, MotorCortexSim

        cfg = MotorConfig(units=units, seed=seed, baseline_hz=baseline_hz,
                          modulation_hz=modulation_hz)
        if drift is not None:
            cfg.drift_at_s, cfg.drift_deg, cfg.drift_silence = drift
        return MotorCortexSim(cfg)
    if kind == "parkinson":
        from sources.parkinson import ParkinsonSim

        return ParkinsonSim(units=units, seed=seed)
    if kind == "opsin":
        from sources.opsin import OpsinSim

        return OpsinSim(units=units, seed=seed)
    raise typer.BadParameter(f"unknown source {kind!r}: use motor, parkinson or opsin")


# ============================================================================ sessions
@session_app.command("create")
def session_create(
        config: Path | None = typer.Option(None, help="Session config JSON file"),
        source: str = typer.Option(LOCAL_SOURCE, help="Source endpoint (default: the "
                                                              "local socket of sim/replay)"),
        channels: int = typer.Option(96), bin_ms: float = typer.Option(20.0),
        decoder: str = typer.Option("kalman"), model: str | None = typer.Option(None),
        calibration_s: float = typer.Option(30.0), name: str = typer.Option("session"),
        adapt: bool = typer.Option(False, help="Recalibrate online from the start "
                                               "(decoder.adapt; or later: session adapt)"),
        api: str = typer.Option(DEFAULT_API), data_dir: Path = typer.Option(DEFAULT_DATA),
        token: str | None = typer.Option(None),
        subject: str | None = typer.Option(None, help="Subject id (for the NWB export)"),
        species: str | None = typer.Option(None, help="Subject species, e.g. 'Macaca mulatta'"),
        experimenter: list[str] = typer.Option([], help="'Last, First' (repeatable)"),
        description: str | None = typer.Option(None, help="Session description"),
        metadata_from: Path | None = typer.Option(None, exists=True, help=(
            "Take subject, experimenter and description from this NWB file (e.g. the "
            "file `spikeloop replay` publishes)")),
        as_json: bool = typer.Option(False, "--json", help="Print the whole session record")):
    """Create a session (from a JSON config file, or from options); prints its id.

    Example: spikeloop session create --channels 96 --decoder kalman --calibration-s 20
      --subject monkey-J --species "Macaca mulatta" --experimenter "Doe, Jane"
    """
    cfg: dict[str, Any] = json.loads(config.read_text()) if config else {
        "name": name, "bin_ms": bin_ms,
        "source": {"endpoint": source, "channels": channels},
        "decoder": {"type": decoder, "model": model, "calibration_s": calibration_s,
                    "adapt": adapt},
    }
    meta = dict(cfg.get("metadata") or {})
    if metadata_from is not None:
        from service.recording.replay import nwb_session_metadata
        from sources.nwb import inventory

        meta |= nwb_session_metadata(inventory(metadata_from).metadata, str(metadata_from))
    if subject or species:
        meta["subject"] = dict(meta.get("subject") or {}) | (
            {"subject_id": subject} if subject else {}) | (
            {"species": species} if species else {})
        meta["subject"].setdefault("subject_id", "unknown")
    if experimenter:
        meta["experimenter"] = list(experimenter)
    if description:
        meta["session_description"] = description
    if meta:
        cfg["metadata"] = meta
    with _client(api, data_dir, token) as c:
        _show(c.create_session(cfg), as_json)


@session_app.command("start")
def session_start(sid: str, api: str = typer.Option(DEFAULT_API),
                  data_dir: Path = typer.Option(DEFAULT_DATA),
                  token: str | None = typer.Option(None),
                  as_json: bool = typer.Option(False, "--json",
                                               help="Print the whole session record")):
    """Start a created or stopped session.

    Example: spikeloop session start 3f2a9c1b7d10
    """
    with _client(api, data_dir, token) as c:
        _show(c.start(sid), as_json)


@session_app.command("stop")
def session_stop(sid: str, api: str = typer.Option(DEFAULT_API),
                 data_dir: Path = typer.Option(DEFAULT_DATA),
                 token: str | None = typer.Option(None),
                 as_json: bool = typer.Option(False, "--json",
                                              help="Print the whole session record")):
    """Stop a session: stimulation is driven safe first.

    Example: spikeloop session stop 3f2a9c1b7d10
    """
    with _client(api, data_dir, token) as c:
        _show(c.stop(sid), as_json)


@session_app.command("adapt")
def session_adapt(sid: str,
                  off: bool = typer.Option(False, "--off", help="Switch recalibration off "
                                                                "(freeze the decoder as it is)"),
                  api: str = typer.Option(DEFAULT_API),
                  data_dir: Path = typer.Option(DEFAULT_DATA),
                  token: str | None = typer.Option(None)):
    """Online recalibration on (or --off) from the next bin: the decoder follows the
    behaviour topic (POST /sessions/{id}/adapt). Prints whether the decoder adapts.

    Example: spikeloop session adapt 3f2a9c1b7d10
    """
    with _client(api, data_dir, token) as c:
        reply = c.adapt(sid, not off)
    typer.echo(f"{sid}  adapt={'on' if reply['adapt'] else 'off'}  "
               f"decoder adapting={'yes' if reply['adapting'] else 'no'}")


@session_app.command("list")
def session_list(api: str = typer.Option(DEFAULT_API), data_dir: Path = typer.Option(DEFAULT_DATA),
                 token: str | None = typer.Option(None)):
    """List sessions with their state.

    Example: spikeloop session list --api http://127.0.0.1:8000
    """
    with _client(api, data_dir, token) as c:
        for s in c.sessions():
            live = s.get("live") or {}
            typer.echo(f"{s['id']}  {s['state']:<12} {s['name']:<20} bins={live.get('bins', '-')}"
                       f"  {s['error']}")


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _show(session: dict[str, Any], as_json: bool) -> None:
    """A session record: its id (and state) on one line, or the whole JSON with --json."""
    if as_json:
        _print(session)
        return
    line = f"{session['id']}  {session['state']}"
    if session.get("output_endpoint"):
        line += f"  output {session['output_endpoint']}"
    if session.get("error"):
        line += f"  error: {session['error']}"
    typer.echo(line)


# ============================================================================ tokens
def _store(data_dir: Path):
    from service.session.store import Store

    os.umask(0o077)  # the token store is this user's only, whoever creates it
    return Store(data_dir / "spikeloop.db")


@token_app.command("create")
def token_create(name: str = typer.Argument(..., help="Who or what the token is for; written "
                                                      "in the audit log with what it does"),
                 scopes: str = typer.Option("read", help="Comma-separated: read, control, stim"),
                 expires: str | None = typer.Option(None, help="Lifetime, e.g. 30d, 12h, 2w "
                                                               "(default: until revoked)"),
                 data_dir: Path = typer.Option(DEFAULT_DATA)):
    """Create an API token (printed once; only its hash is stored, in the data directory).

    Example: spikeloop token create alice --scopes read,control,stim --expires 30d
    """
    from service.api.auth import new_token, parse_duration

    try:
        lifetime = parse_duration(expires) if expires else None
        with contextlib.closing(_store(data_dir)) as store:
            typer.echo(new_token(store, name, [s.strip() for s in scopes.split(",")
                                               if s.strip()], lifetime))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@token_app.command("list")
def token_list_cmd(data_dir: Path = typer.Option(DEFAULT_DATA),
                   as_json: bool = typer.Option(False, "--json", help="One JSON document")):
    """List tokens: name, scopes, state (active, expired, revoked), created, expires.

    Example: spikeloop token list
    """
    from service.api.auth import token_list

    with contextlib.closing(_store(data_dir)) as store:
        rows = token_list(store)
    if as_json:
        _print(rows)
        return

    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) if t else "-"

    for t in rows:
        typer.echo(f"{t['name']:24s} {','.join(t['scopes']):18s} {t['state']:8s} "
                   f"created {when(t['created_at'])}  expires {when(t['expires_at'])}")


@token_app.command("revoke")
def token_revoke(name: str = typer.Argument(..., help="The token's name (spikeloop token list)"),
                 data_dir: Path = typer.Option(DEFAULT_DATA)):
    """Revoke the token called NAME: refused from the next request on.

    Example: spikeloop token revoke alice
    """
    with contextlib.closing(_store(data_dir)) as store:
        n = store.revoke_tokens(name)
    if not n:
        raise typer.BadParameter(f"no active token called {name!r}; spikeloop token list "
                                 "shows them")
    typer.echo(f"revoked {n} token(s) called {name!r}")


@app.command()
def keys(name: str = typer.Argument(..., help="Certificate name, e.g. rig1 or stimulator"),
         directory: Path = typer.Option(DEFAULT_DATA / "keys", "--dir",
                                        help="Where to write NAME.key and NAME.key_secret")):
    """Make a CurveZMQ certificate (public NAME.key, secret NAME.key_secret).

    Example: spikeloop keys rig1 && spikeloop sim --curve-secret var/keys/rig1.key_secret
    """
    from service.wire.curve import ensure_cert, public_key

    pub, sec = ensure_cert(directory, name)
    typer.echo(f"public key {public_key(pub)}\n  {pub}\n  {sec} (keep secret)")


# ============================================================================ stream
@app.command()
def stream(sid: str = typer.Argument(..., help="Session id"),
           api: str = typer.Option(DEFAULT_API), data_dir: Path = typer.Option(DEFAULT_DATA),
           every: int = typer.Option(10, help="Print every N-th bin"),
           token: str | None = typer.Option(None),
           redis: str | None = typer.Option(None, help="Read the session's Redis output "
                                                       "stream on this server instead"),
           group: str = typer.Option("spikeloop-stream", help="With --redis: consumer group"),
           consumer: str | None = typer.Option(None, help="With --redis: consumer name "
                                                          "(default host-pid)"),
           start: str = typer.Option("$", help="With --redis: where a new group starts, "
                                               "$ (new entries) or 0 (the whole stream)")):
    """Print a session's decoded outputs with a running R² against the truth.

    With --redis, read the session's output stream (redis.mirror_output) as a consumer of
    GROUP: consumers of one group share the entries, and none is lost while one is away.

    Examples: spikeloop stream 3f2a9c1b7d10 --every 50
              spikeloop stream 3f2a9c1b7d10 --redis redis://10.0.0.5:6379/0 --group lab
    """
    if redis:
        from .redis_stream import GroupReader

        try:
            reader = GroupReader(redis, sid, group, consumer, start)
        except ConnectionError as exc:
            raise typer.BadParameter(str(exc)) from None
        _follow(reader, every)
        return
    with _client(api, data_dir, token) as c:
        endpoint = c.session(sid)["output_endpoint"]
    if not endpoint:
        typer.echo(f"session {sid} has no output yet: start it first", err=True)
        raise typer.Exit(1)
    _follow(_stream_client(endpoint), every)


def _stream_client(endpoint: str):
    from .stream import StreamClient

    return StreamClient(endpoint, topics=(b"decoded", b"heartbeat"))


def _follow(sc, every: int, should_stop=lambda: False) -> None:
    """Print from ``sc`` (a StreamClient or a GroupReader) until stopped; closes it."""
    from .stream import RunningR2

    r2 = RunningR2()
    n = 0
    try:
        while not should_stop():
            u = sc.recv(500)
            if u is None:
                continue
            if u.kind == "heartbeat":
                if u.fields.get("state") == "calibrating" and n == 0:
                    typer.echo(f"calibrating... ({u.fields.get('bins', 0)} bins)", err=True)
                continue
            if u.kind != "decoded":
                continue
            n += 1
            if u.truth is not None and len(u.truth) == len(u.decoded):
                r2.add(u.decoded, u.truth)
            if n % every == 0:
                dec = " ".join(f"{v:7.2f}" for v in u.decoded[-2:])
                tru = " ".join(f"{v:7.2f}" for v in u.truth[-2:]) if u.truth is not None else ""
                score = " ".join("   --" if math.isnan(v) else f"{v:5.2f}" for v in r2.r2()[-2:])
                typer.echo(f"bin {u.seq:6d}  decoded v [{dec}]  true v [{tru}]  R² [{score}]")
    except KeyboardInterrupt:
        pass
    finally:
        sc.close()


# ============================================================================ recordings
@app.command()
def replay(recording: str = typer.Argument(..., help="A .splog session log, an NWB file, "
                                                     "or dataset:NAME"),
           endpoint: str = typer.Option(LOCAL_SOURCE, help=BIND_HELP),
           speed: float = typer.Option(1.0, min=0.001, help="x real time"),
           fast: bool = typer.Option(False, help="As fast as possible (overrides --speed)"),
           wait_s: float = typer.Option(60.0, help="Wait this long for a subscriber"),
           quiet: bool = typer.Option(False, help="No progress bar"),
           behavior: str | None = typer.Option(None, help="NWB: send this behaviour series as "
                                                          "behaviour frames, one per bin"),
           bin_ms: float | None = typer.Option(None, help="NWB with --behavior: the session's "
                                                          "bin width"),
           interval: str | None = typer.Option(None, help="NWB with --behavior: behaviour only "
                                                          "in START:STOP (s, file time)")):
    """Publish a recording on the wire protocol, like a live source.

    Point a session's source.endpoint at ENDPOINT. Examples:
      spikeloop replay var/recordings/abc.splog --speed 10
      spikeloop replay ../shared/data/mc_maze_small/sub-Jenkins_ses-small_desc-test_ecephys.nwb
      spikeloop replay rat07.nwb --behavior head_direction --bin-ms 20 --fast
    """
    from service.recording.replay import open_recording, publish, text_progress

    rec = open_recording(recording, bin_ms=bin_ms, behavior=behavior,
                         interval=_interval(interval))
    typer.echo(f"replaying {rec.kind} {recording}: {rec.channels} channels, "
               f"{rec.duration_s:.1f} s, on {endpoint}", err=True)
    stats = publish(rec, endpoint, None if fast else speed,
                    None if quiet else text_progress("replay"), wait_subscriber_s=wait_s)
    typer.echo(json.dumps(stats.to_dict()), err=True)


@app.command()
def verify(recording: Path = typer.Argument(..., exists=True, help="A .splog session log"),
           quiet: bool = typer.Option(False, help="No progress bar")):
    """Re-run a recorded session offline and diff every decision against the recording.

    Exits 1 and names the first divergent bin if anything differs.
    Example: spikeloop verify var/recordings/abc-20261123T101500.splog
    """
    from service.recording.replay import text_progress
    from service.recording.verify import verify as run_verify

    report = run_verify(recording, None if quiet else text_progress("verify"))
    _print(report.to_dict())
    if not report.identical:
        raise typer.Exit(1)


@app.command("check-source")
def check_source(
        endpoint: str = typer.Argument(LOCAL_SOURCE, help="The publisher's ZeroMQ endpoint, "
                                                       "e.g. tcp://127.0.0.1:5555 (default: "
                                                       "the local source socket)"),
        seconds: float = typer.Option(10.0, min=0.1, help="How long to listen (wall clock)"),
        channels: int | None = typer.Option(None, min=1, help="The session's channel count: "
                                                              "also check ch against it"),
        bin_ms: float | None = typer.Option(None, min=0.1, help="The session's bin: also "
                                                                "check counts widths"),
        reorder_tolerance_ms: float = typer.Option(0.0, min=0, help="The session's "
                                                                    "source.reorder_tolerance_ms"),
        spikes_topic: str = typer.Option("spikes"), behavior_topic: str = typer.Option("behavior"),
        as_json: bool = typer.Option(False, "--json", help="The report as JSON")):
    """Listen to a publisher and report every violation of docs/protocol.md, with its section.

    Exits 1 when there is any violation (or no spikes message arrived), 0 otherwise.
    Example: spikeloop check-source tcp://127.0.0.1:5555 --seconds 10 --channels 96
    """
    from service.wire.conformance import SourceCheck

    from .check_source import format_report, listen

    check = SourceCheck(spikes_topic.encode(), behavior_topic.encode(), channels,
                        int(round(bin_ms * 1e6)) if bin_ms else None,
                        int(reorder_tolerance_ms * 1e6))
    listen(endpoint, seconds, check)
    if as_json:
        _print(check.report())
    else:
        for line in format_report(endpoint, seconds, check):
            typer.echo(line)
    if not check.ok:
        raise typer.Exit(1)


@app.command("export-nwb")
def export_nwb_cmd(recording: Path = typer.Argument(..., exists=True, help="A .splog log"),
                   out: Path | None = typer.Argument(None, help="Output .nwb (default: beside)")):
    """Export a session log to NWB (spikes, decoded, truth, stimulation, config).

    Example: spikeloop export-nwb var/recordings/abc-20261123T101500.splog out.nwb
    """
    from service.recording.nwb_export import export_nwb
    from service.recording.replay import text_progress

    path = export_nwb(recording, out or recording.with_suffix(".nwb"), text_progress("export"))
    typer.echo(str(path))


@app.command()
def recordings(data_dir: Path = typer.Option(DEFAULT_DATA)):
    """List recordings in the data directory.

    Example: spikeloop recordings --data-dir var
    """
    from service.recording.storage import list_recordings

    for r in list_recordings(data_dir / "recordings"):
        dur = f"{r.duration_s:8.1f} s" if r.duration_s is not None else "       - "
        state = "-" if r.clean is None else "clean" if r.clean else "open/torn"
        typer.echo(f"{r.name:50s} {r.kind:4s} {r.size_bytes / 1e6:8.2f} MB {dur} {state}")


# ============================================================================ models
def _interval(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        a, b = (float(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--interval {text!r}: give START:STOP in seconds of the file, "
                         "e.g. 100:400") from None
    if b <= a:
        raise ValueError(f"--interval {text!r}: STOP must be after START")
    return a, b


@app.command()
def inspect(path: Path = typer.Argument(..., exists=True, help="An NWB file"),
            as_json: bool = typer.Option(False, "--json", help="Everything as JSON")):
    """What an NWB file holds (units, behaviour series, intervals, subject) and what can
    be decoded from it.

    Example: spikeloop inspect sub-rat07_ses-1.nwb
    """
    from sources.nwb import inventory

    inv = inventory(path)
    if as_json:
        _print(inv.to_dict())
        return
    meta = inv.metadata
    subj = meta.get("subject", {})
    typer.echo(f"{path}: {inv.session_description!r}, started {inv.session_start_time}")
    typer.echo(f"  subject: {subj.get('subject_id', '-')} ({subj.get('species', 'species ?')})"
               f"; experimenter: {', '.join(meta.get('experimenter', [])) or '-'}")
    if inv.units is None:
        typer.echo("  units: none (no Units table)")
    else:
        obs = ", with obs_intervals" if inv.obs_intervals else ""
        typer.echo(f"  units: {inv.units} with {inv.spikes} spikes, {inv.spikes_start_s:.2f} to "
                   f"{inv.spikes_stop_s:.2f} s{obs}; electrodes: {inv.electrodes}")
    typer.echo(f"  intervals: {inv.trials} trials, {inv.epochs} epochs")
    typer.echo(f"  behaviour series: {len(inv.series)}")
    for sr in inv.series:
        angle = "  angle -> cos/sin" if sr.angular else ""
        typer.echo(f"    {sr.name:20s} {sr.path}  [{sr.unit}] {sr.samples} samples "
                   f"{sr.start_s:.2f}-{sr.stop_s:.2f} s -> {', '.join(sr.columns)}{angle}")
    if inv.missing:
        typer.echo(f"  cannot decode: {inv.missing}")
    elif not inv.series:
        typer.echo("  can replay the spikes; no behaviour series to train a decoder on")
    else:
        typer.echo(f"  can decode: spikeloop train {path} --behavior "
                   f"{inv.series[0].name} --name MODEL")


@app.command()
def train(source: str = typer.Argument(..., help="contdata95 | mc_maze_small | peyrache_hd, "
                                                 "a .splog session recording or an NWB file"),
          name: str = typer.Option(..., help="Model name in the store (sessions use it)"),
          kind: str = typer.Option("snn", help="snn | kalman | wiener | gru | lstm"),
          epochs: int | None = typer.Option(None, help="SNN training epochs"),
          seed: int = typer.Option(0),
          bin_ms: float | None = typer.Option(None, help="Bin width for a recording "
                                                         "(NWB default 20)"),
          behavior: str | None = typer.Option(None, help="NWB: the behaviour series to decode "
                                                         "(`spikeloop inspect FILE` lists them)"),
          interval: str | None = typer.Option(None, help="NWB: only START:STOP (s, file time)"),
          split: str = typer.Option("time", help="NWB: test on the last 20 % by time, or on "
                                                 "the last 20 % of trials (trials)"),
          data_dir: Path = typer.Option(DEFAULT_DATA),
          replace: bool = typer.Option(False, help="Train over a stored model of this name")):
    """Train a decoder (validation split, early stopping, seeded) into the model store.

    Examples:
      spikeloop train contdata95 --name monkey-snn
      spikeloop train var/recordings/abc.splog --kind kalman --name day3
      spikeloop train rat07.nwb --behavior head_direction --kind wiener --name hd
    """
    from decoders.bptt import text_progress
    from decoders.store import ModelStore
    from decoders.train import train_model

    store = ModelStore(data_dir / "models")
    if not replace and name in {m["name"] for m in store.list()}:
        raise ValueError(f"model {name!r} exists; add --replace to train over it")
    params = {"epochs": epochs} if epochs and kind in ("snn", "gru", "lstm") else {}
    b: float | None
    if source.endswith(".nwb"):
        _train_nwb(store, source, name, kind, params, seed, bin_ms or 20.0, behavior,
                   _interval(interval), split)
        return
    if source.endswith(".splog"):
        from service.recording.training import recording_arrays

        counts, beh, names, b = recording_arrays(source, bin_ms)
        data: object = (counts, beh)
        typer.echo(f"{source}: {len(counts)} bins of {b:g} ms, outputs {names}", err=True)
    else:
        data, names, b = source, None, bin_ms
    dec, meta = train_model(data, kind, params, seed, progress=text_progress, bin_ms=b,
                            output_names=names)
    path = store.save(name, dec, meta | {"source": source})
    r2 = meta["metrics"].get("r2_mean")
    typer.echo(f"{path}" + (f"  test R² {r2:.3f}" if r2 is not None else ""))


def _train_nwb(store, source: str, name: str, kind: str, params: dict[str, Any], seed: int,
               bin_ms: float, behavior: str | None, interval: tuple[float, float] | None,
               split: str) -> None:
    from decoders.bptt import text_progress
    from service.recording.training import train_nwb
    from sources.nwb import inventory

    inv = inventory(source)
    if inv.missing:
        raise ValueError(inv.missing)
    if behavior is None:
        names = ", ".join(sr.name for sr in inv.series) or "none in this file"
        raise ValueError(f"{source}: name the behaviour to decode with --behavior "
                         f"(series: {names})")
    typer.echo(f"{source}: {inv.units} units, behaviour {behavior!r}, {bin_ms:g} ms bins, "
               f"split by {split}", err=True)
    dec, meta = train_nwb(source, behavior, kind, bin_ms, interval, split, seed, params,
                          text_progress)
    path = store.save(name, dec, meta | {"source": source})
    m, ridge = meta["metrics"], meta["ridge"]
    typer.echo(f"{path}")
    typer.echo(f"  {meta['train_bins']} train bins, {m['test_bins']} test bins "
               f"(outputs {', '.join(dec.output_names)})")
    typer.echo(f"  test R² {m['r2_mean']:.3f} {kind}   {ridge['r2_mean']:.3f} ridge  "
               f"(per output: {' '.join(f'{x:.3f}' for x in m['r2'])} vs "
               f"{' '.join(f'{x:.3f}' for x in ridge['r2'])})")
    if "angle_error_deg" in m:
        typer.echo(f"  angle error {m['angle_error_deg']:.1f}° {kind}   "
                   f"{ridge['angle_error_deg']:.1f}° ridge (mean absolute)")


@app.command()
def models(data_dir: Path = typer.Option(DEFAULT_DATA)):
    """List the models in the store (name, type, inputs, bin width, test R²).

    Example: spikeloop models --data-dir var
    """
    from decoders.store import ModelStore

    for m in ModelStore(data_dir / "models").list():
        r2 = (m.get("metrics") or {}).get("r2_mean")
        typer.echo(f"{m.get('name', '?'):24s} {m.get('type', '?'):8s} {m.get('n_inputs', '?'):>5} "
                   f"inputs  {m.get('bin_ms', 0):g} ms" + (f"  R² {r2:.3f}" if r2 else ""))


# ============================================================================ bench
@app.command()
def bench(quick: bool = typer.Option(False, help="Every benchmark's short version (~15 min)"),
          long: bool = typer.Option(False, help="The 1024-channel SNN latency run lasts 10 min"),
          only: list[str] = typer.Option([], help="Only these groups (e2e_latency, throughput, "
                                                  "decoders, closed_loop, replay, fuzz, "
                                                  "redis_path)"),
          json_path: Path = typer.Option(Path("results/bench.json"), "--json",
                                         help="Where the combined results go")):
    """Run every benchmark (bench/run_all.py): one results JSON and a summary table.

    Needs a source checkout (bench/ is not installed). Example: spikeloop bench --quick
    """
    script = Path(__file__).resolve().parents[1] / "bench" / "run_all.py"
    if not script.exists():
        raise typer.BadParameter(f"{script} not found: run from a source checkout")
    argv = [sys.executable, str(script), "--json", str(json_path)]
    argv += ["--quick"] * quick + ["--long"] * long + (["--only", *only] if only else [])
    raise typer.Exit(subprocess.call(argv))


# ============================================================================ run
@app.command()
def run(units: int = typer.Option(96, help="Simulated units"),
        bin_ms: float = typer.Option(20.0), calibration_s: float = typer.Option(20.0),
        port: int = typer.Option(8000), source_port: int = typer.Option(5555),
        data_dir: Path = typer.Option(DEFAULT_DATA),
        seconds: float | None = typer.Option(None, help="Stop after this many seconds"),
        transport: str = typer.Option(
            "ipc", help="ipc: source and session output on Unix sockets in the data directory "
                        "(one host, the lower latency); tcp: tcp://127.0.0.1 "
                        "(--source-port and a free port)"),
        drift_at: float | None = typer.Option(
            None, min=0, help="The source drifts at this source time (s), as spikeloop sim "
                              "--drift-at"),
        adapt: bool = typer.Option(False, help="The decoder recalibrates online from the "
                                               "start (decoder.adapt)")):
    """Run everything: control plane, simulated motor cortex, and a closed-loop session.

    Prints live decoded vs true velocity with a running R² until Ctrl-C, then stops
    the session and every process it started. With --drift-at and --adapt, watch the
    R² fall at the drift and come back.

    Example: spikeloop run --units 256 --bin-ms 10 --seconds 60
             spikeloop run --bin-ms 50 --calibration-s 60 --drift-at 120 --adapt
    """
    from .control import ControlClient

    py = sys.executable
    procs: list[subprocess.Popen] = []
    api = f"http://127.0.0.1:{port}"
    if transport not in ("ipc", "tcp"):
        raise typer.BadParameter(f"--transport is ipc or tcp, not {transport!r}")
    data_dir.mkdir(parents=True, exist_ok=True)
    src = (f"ipc://{(data_dir / f'source-{source_port}.sock').resolve()}"
           if transport == "ipc" else f"tcp://127.0.0.1:{source_port}")
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
    client = None
    sid = None
    try:
        # Children in their own process groups: Ctrl-C in the terminal reaches only this
        # process, which then stops the session through the API before stopping them.
        procs.append(subprocess.Popen([py, "-m", "clients.cli", "serve", "--port", str(port),
                                       "--data-dir", str(data_dir)], start_new_session=True))
        drift = ["--drift-at", f"{drift_at:g}"] if drift_at is not None else []
        procs.append(subprocess.Popen([py, "-m", "clients.cli", "sim", "--endpoint", src,
                                       "--units", str(units), *drift], start_new_session=True))
        client = ControlClient(api, None)
        _wait_http(client, procs[0])
        client = _client(api, data_dir, None)
        s = client.create_session({
            "name": "demo", "bin_ms": bin_ms,
            "source": {"endpoint": src, "channels": units},
            "decoder": {"type": "kalman", "calibration_s": calibration_s, "adapt": adapt},
            "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}},
            "output": {"endpoint": "ipc" if transport == "ipc" else "tcp://127.0.0.1:0"},
        })
        sid = s["id"]
        s = client.start(sid)
        typer.echo(f"session {sid} started ({s['state']}); calibrating a Kalman decoder on "
                   f"{calibration_s:g} s of simulated reaching"
                   + (", then recalibrating it online" if adapt else "")
                   + (f"; the source drifts at {drift_at:g} s" if drift_at is not None else "")
                   + ". Ctrl-C to stop.", err=True)
        live = client.session(sid).get("live") or {}
        typer.echo(f"real-time layout: {live.get('scheduling', '?')}", err=True)
        for item in (live.get("realtime") or {}).get("items", []):
            if item.get("grant"):
                typer.echo(f"  refused: {item['detail']}; to grant: {item['grant']}", err=True)
        t_end = time.monotonic() + seconds if seconds else None
        _follow(_stream_client(s["output_endpoint"]), every=10,
                should_stop=lambda: stop["flag"] or (t_end is not None
                                                     and time.monotonic() > t_end))
    except KeyboardInterrupt:
        pass
    finally:
        if client is not None and sid is not None:
            try:
                final = client.stop(sid)
                typer.echo(f"session {sid} {final['state']}", err=True)
            except Exception as exc:  # still stop the processes below
                typer.echo(f"could not stop session cleanly: {exc}", err=True)
        for p in reversed(procs):
            p.send_signal(signal.SIGINT if p is procs[0] else signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        typer.echo("all processes stopped", err=True)


def _wait_http(client, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the control plane exited during start-up")
        try:
            client.health()
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("the control plane did not come up")


# The server entry points live in the service; operator commands (report, doctor, LSL
# bridges) in their own module.
from service.entry import recorder_cmd, serve, worker  # noqa: E402

from .cli_ops import doctor, lsl_app, report  # noqa: E402

app.command()(serve)
app.command()(worker)
app.command("recorder")(recorder_cmd)
app.command()(report)
app.command()(doctor)
app.add_typer(lsl_app, name="lsl")

def main() -> None:
    """The ``spikeloop`` entry point: the commands, with errors on one line each."""
    import httpx
    import zmq

    from .control import ControlError

    try:
        app()
    except ControlError as exc:
        typer.echo(f"error: the control plane answered {exc.status}: {exc.detail}", err=True)
        sys.exit(1)
    except httpx.TransportError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            typer.echo(f"error: the control plane's TLS certificate is not trusted ({exc}); "
                       f"give the CA that signed it: spikeloop --ca-file CA.pem ... (or "
                       f"{CA_ENV})", err=True)
        else:
            typer.echo(f"error: cannot reach the control plane ({exc}); start it with "
                       "`spikeloop serve`, or point --api at it", err=True)
        sys.exit(1)
    except zmq.ZMQError as exc:
        hint = "; another process holds it: pick another --endpoint, or stop that process" \
            if exc.errno == zmq.EADDRINUSE else ""
        typer.echo(f"error: ZeroMQ: {exc}{hint}", err=True)
        sys.exit(1)
    except (OSError, ValueError, KeyError, TimeoutError, RuntimeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
