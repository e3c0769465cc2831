"""Session lifecycle on the control-plane side: create, start, stop, re-attach.

Each session runs in its own process (``service.session.runner``), started in a new
process group so that it survives an API crash: the closed loop must not stop
because the UI did. On start-up the manager re-attaches to sessions whose
process still answers and marks the others as ended.

With a :class:`~service.cluster.registry.Cluster` (``spikeloop serve --redis URL``) sessions
run on workers instead: the stored ``control`` is then ``worker:<id>``, every call
goes to that worker through Redis, and :meth:`SessionManager.check_workers` fails
over the sessions of a worker that stopped heartbeating.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Any

from service.cluster.redis_streams import redact
from service.session.config import SessionConfig, session_dir
from service.session.control import SessionUnreachable, call
from service.session.realtime import pick_cpu
from service.session.store import Store
from service.wire.net import is_loopback
from stim.limits import SafetyLimits

log = logging.getLogger(__name__)

ACTIVE = ("calibrating", "running")


class SessionError(Exception):
    """A request that cannot be done in the session's current state (HTTP 409)."""


#: A session's loop is one thread: BLAS and OpenMP pools of their own only add wake-ups
#: (OpenBLAS's two threads took a GRU step's p99 at 1024 inputs to ~8 ms). Set before the
#: session process imports numpy.
#: What a session process adds to this process's environment (one BLAS thread: the loop
#: is single-threaded, and a pool of spinning BLAS threads costs latency).
SESSION_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class InvalidConfig(ValueError):
    """A session config that validates but cannot work (policy vs decoder outputs...)."""


class SessionNotFound(KeyError):
    pass


class NoRoom(SessionError):
    """No worker can take the session."""


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


class SessionManager:
    def __init__(self, data_dir: Path, store: Store, start_timeout_s: float = 60.0,
                 min_free_bytes: int = 200 * 1024**2, exit_with_parent: bool = False,
                 cluster: Any = None, public_outputs: bool = False, max_sessions: int = 16):
        self.data_dir = data_dir
        # An operator's decision (serve --public-outputs), never a request field: whether
        # a session may bind its output beyond the loopback interface.
        self.public_outputs = public_outputs
        self.max_sessions = max_sessions  # session processes on this host at once
        self.run_dir = data_dir / "run"
        self.models_dir = data_dir / "models"
        self.recordings_dir = data_dir / "recordings"
        self.keys_dir = data_dir / "keys"
        self.audit_dir = data_dir / "audit"
        for d in (self.run_dir, self.models_dir, self.recordings_dir, self.keys_dir,
                  self.audit_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)  # neural data, tokens, keys and sockets: this user only
        self.store = store
        self.start_timeout_s = start_timeout_s
        self.min_free_bytes = min_free_bytes
        self._procs: dict[str, subprocess.Popen] = {}
        self._replays: dict[str, subprocess.Popen] = {}
        self._cpus: dict[str, int | None] = {}  # the CPU each session started here runs on
        self._exports: list[threading.Thread] = []
        self.exit_with_parent = exit_with_parent  # sessions of a worker die with it
        self.cluster = cluster  # service.cluster.registry.Cluster: sessions run on workers
        self._placed: dict[str, str] = {}  # session id -> worker, ahead of heartbeats
        self.failovers: deque[dict[str, Any]] = deque(maxlen=100)
        self._failover_lock = threading.Lock()

    # ------------------------------------------------------------------ queries
    def _row(self, sid: str) -> dict[str, Any]:
        row = self.store.get_session(sid)
        if row is None:
            raise SessionNotFound(sid)
        return row

    def list(self) -> list[dict[str, Any]]:
        return [self.get(r["id"]) for r in self.store.list_sessions()]

    def get(self, sid: str) -> dict[str, Any]:
        """The stored record with the live process's word on its state. Reads only: the
        store is brought up to date by :meth:`reconcile`, never by a GET."""
        row = self._row(sid)
        live = None
        ended = None
        if row["state"] in ACTIVE:
            live = self._live_status(row, write=False)
            if live is None:
                ended = self._ended_state(sid)
        out = {k: row[k] for k in ("id", "name", "state", "error", "pid", "created_at",
                                   "updated_at", "config", "recording")}
        if live is not None and "error" in live:  # the process's word, not the row read before
            out["state"], out["error"] = live["state"], live["error"]
        elif ended is not None:
            out["state"], out["error"] = ended["state"], ended["error"]
        if (out["config"].get("redis") or {}).get("url"):  # rows stored before redis.url
            # refused passwords may hold one: never show it
            out["config"] = _merge(out["config"], {"redis": {
                "url": redact(out["config"]["redis"]["url"])}})
        out["output_endpoint"] = row["output"]
        out["worker"] = _worker_of(row)
        out["live"] = live
        return out

    def set_limits(self, sid: str, limits: SafetyLimits, by: str = "") -> SafetyLimits:
        """New safety limits: to the running session (applied at its next bin boundary)
        and into the stored config (read unredacted from the store, so no secret in it
        is replaced by its redacted form)."""
        row = self._row(sid)
        if row["state"] in ACTIVE:
            self.control(sid, {"cmd": "limits", "limits": limits.model_dump(), "by": by})
        cfg = SessionConfig.model_validate(row["config"])
        cfg.stim.limits = limits
        self.store.update_session(sid, config=cfg.model_dump())
        return limits

    def reconcile(self) -> None:
        """Bring the store up to date with every active session's process (the control
        plane calls this every second; a worker with each heartbeat)."""
        for row in self.store.list_sessions():
            if row["state"] in ACTIVE:
                try:
                    self._live_status(row, write=True)
                except (SessionError, RuntimeError) as exc:
                    log.warning("reconcile %s: %s", row["id"], exc)

    def _live_status(self, row: dict[str, Any], write: bool = True) -> dict[str, Any] | None:
        sid = row["id"]
        if _worker_of(row) is not None:
            return self._remote_status(row, write)
        try:
            st = call(row["control"], {"cmd": "status"}, timeout_ms=1000)["status"]
        except SessionUnreachable:
            if _alive(row["pid"]):
                return {"state": row["state"], "unresponsive": True}
            if write:
                self._mark_ended(sid)
            return None
        if write and (st["state"] != row["state"] or st["error"] != row["error"]):
            self.store.update_session(sid, state=st["state"], error=st["error"])
        return st

    def _ended_state(self, sid: str) -> dict[str, str]:
        """How a session whose process is gone ended: its last words (the status file)."""
        st = self._status_file(sid)
        if st and st.get("state") in ("stopped", "failed"):
            return {"state": st["state"], "error": st.get("error", "")}
        return {"state": "failed", "error": "session process ended unexpectedly; see "
                                            f"{self.run_dir / (sid + '.log')}"}

    def _mark_ended(self, sid: str) -> None:
        """The process is gone: store how it ended."""
        proc = self._procs.pop(sid, None)
        if proc is not None:
            proc.poll()
        self.store.update_session(sid, **self._ended_state(sid), pid=None)

    def _status_file(self, sid: str) -> dict[str, Any] | None:
        p = self.run_dir / f"{sid}.status.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def control(self, sid: str, request: dict[str, Any], timeout_ms: int = 2000,
                with_extra: bool = False) -> Any:
        row = self._row(sid)
        if row["state"] not in ACTIVE:
            raise SessionError(f"session {sid} is {row['state']}; start it first")
        wid = _worker_of(row)
        if wid is None:
            try:
                return call(row["control"], request, timeout_ms, with_extra)
            except SessionUnreachable:
                if request.get("cmd") not in ("disarm", "safe") or not _alive(row["pid"]):
                    raise
                # The second path: the process maps SIGUSR1 to "disarm now", whatever
                # happened to its control socket. Disarm must never be blocked.
                os.kill(row["pid"], signal.SIGUSR1)
                log.warning("session %s: control socket did not answer %r; disarmed by "
                            "signal", sid, request.get("cmd"))
                reply = {"ok": True, "armed": False, "via": "signal"}
                return (reply, []) if with_extra else reply
        out = self._ask(wid, "control", timeout_ms / 1000 + 2, sid=sid, request=request,
                        timeout_ms=timeout_ms)
        extra = [base64.b64decode(x) for x in out["extra"]]
        return (out["reply"], extra) if with_extra else out["reply"]

    # ------------------------------------------------------------------ lifecycle
    def create(self, config: SessionConfig, sid: str | None = None) -> dict[str, Any]:
        self.check_config(config)
        sid = sid or uuid.uuid4().hex[:12]
        self.store.insert_session(sid, config.name, config.model_dump())
        return self.get(sid)

    def check_config(self, config: SessionConfig) -> None:
        """Refuse a config that cannot work, naming why (raises :class:`InvalidConfig`).

        The policy is built (its parameters checked) and bound to the decoder's outputs
        when they are known now: a stored model's, or ``decoder.outputs``. A calibrated
        decoder whose outputs come from the source is checked again when it is installed.
        """
        from decoders.store import ModelStore
        from stim.policies import build_policy

        try:
            policy = build_policy(config.stim.policy) if config.stim.policy else None
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"stim.policy: {exc}") from exc
        self._check_output(config.output.endpoint)
        names: list[str] | None = config.decoder.outputs
        if config.decoder.model:
            try:
                meta = ModelStore(self.models_dir).meta(config.decoder.model)
            except (KeyError, ValueError) as exc:
                raise InvalidConfig(f"decoder.model: {exc.args[0]}; GET /models lists the "
                                    "stored models") from exc
            if int(meta.get("n_inputs", config.source.channels)) != config.source.channels:
                raise InvalidConfig(
                    f"decoder.model {config.decoder.model!r} expects {meta['n_inputs']} "
                    f"channels, source.channels is {config.source.channels}")
            names = list(meta.get("output_names") or
                         [f"x{i}" for i in range(int(meta.get("n_outputs", 0)))])
        if policy is not None and names is not None:
            try:
                policy.bind(names)
            except ValueError as exc:
                raise InvalidConfig(str(exc)) from exc

    def _check_output(self, endpoint: str) -> None:
        """The server decides where sessions bind: a request may ask for ``ipc`` (a socket
        in the session's own directory) or a TCP port on loopback, nothing else."""
        if endpoint == "ipc":
            return
        if endpoint.startswith(("ipc://", "inproc://")):
            raise InvalidConfig(
                f"output.endpoint {endpoint!r}: a session may not name a socket path (it "
                "could replace any file, or another session's socket); use \"ipc\" and the "
                "server binds one in the session's own directory")
        host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
        if not self.public_outputs and not is_loopback(host):
            raise InvalidConfig(
                f"output.endpoint {endpoint!r} binds beyond loopback; that is the operator's "
                "decision (spikeloop serve --public-outputs), not a request's: use "
                "tcp://127.0.0.1:PORT (0 = any free port) or \"ipc\"")

    def session_dir(self, sid: str) -> Path:
        """The session's own 0700 directory: its control and output sockets."""
        return session_dir(self.run_dir, sid)

    def start(self, sid: str, local: bool = False, by: str = "") -> dict[str, Any]:
        """Start the session's process on a worker when there is a cluster, else here;
        ``local``: here in any case (a replay, or a worker starting what it was given).
        ``by``: who asked (a token's name), recorded and audited with the start."""
        row = self._row(sid)
        if row["state"] in ACTIVE:
            raise SessionError(f"session {sid} is already {row['state']}")
        if self.cluster is not None and not local:
            return self._start_remote(sid, SessionConfig.model_validate(row["config"]), by=by)
        placement = row["config"].get("placement")
        if placement and not local:  # it was meant for a particular host: never guess
            raise SessionError(f"session {sid} asks for a worker with labels {placement}, but "
                               "this control plane has no workers (spikeloop serve --redis "
                               "URL); remove placement to run it here")
        from service.recording.storage import check_free

        running = sum(1 for r in self.store.list_sessions()
                      if r["state"] in (*ACTIVE, "starting") and _worker_of(r) is None)
        if running >= self.max_sessions:
            raise NoRoom(f"{running} sessions run on this host, the most it takes "
                         f"(serve --max-sessions); stop one first")
        check_free(self.recordings_dir, self.min_free_bytes)
        cfg = SessionConfig.model_validate(row["config"])
        sdir = self.session_dir(sid)
        for sock in sdir.glob("*.sock"):  # ours, from an earlier run of this session
            sock.unlink()
        if cfg.realtime and cfg.cpu is None:  # spread real-time sessions over the cores
            cfg.cpu = pick_cpu(os.sched_getaffinity(0), self._pinned_cpus())
        self._cpus[sid] = cfg.cpu
        cfg_path = self.run_dir / f"{sid}.config.json"
        cfg_path.write_text(cfg.model_dump_json())
        control = f"ipc://{sdir / 'control.sock'}"
        (self.run_dir / f"{sid}.status.json").unlink(missing_ok=True)
        out = open(self.run_dir / f"{sid}.log", "ab")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "service.session.runner", "--id", sid,
               "--config", str(cfg_path),
               "--control", control, "--run-dir", str(self.run_dir),
               "--models-dir", str(self.models_dir), "--recordings-dir", str(self.recordings_dir),
               "--keys-dir", str(self.keys_dir), "--audit-dir", str(self.audit_dir)]
        if self.exit_with_parent:
            cmd.append("--exit-with-parent")
        if by:
            cmd += ["--by", by]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | SESSION_ENV, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])
        out.close()
        self._procs[sid] = proc
        self.store.update_session(sid, state="starting", error="", pid=proc.pid, control=control)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                st = self._status_file(sid) or {}
                err = st.get("error") or f"session process exited with code {proc.returncode}"
                self.store.update_session(sid, state="failed", error=err, pid=None)
                raise SessionError(f"session {sid} failed to start: {err} "
                                   f"(log: {self.run_dir / (sid + '.log')})")
            try:
                st = call(control, {"cmd": "status"}, timeout_ms=200)["status"]
            except SessionUnreachable:
                continue
            self.store.update_session(sid, state=st["state"], output=st["output_endpoint"],
                                      recording=st.get("recording"))
            return self.get(sid)
        self._kill(sid, proc.pid)
        self.store.update_session(sid, state="failed", error="session did not start in time")
        raise SessionError(f"session {sid} did not answer within {self.start_timeout_s:.0f} s")

    def _pinned_cpus(self) -> builtins.list[int | None]:
        """The CPUs of this host's sessions whose processes still run."""
        return [cpu for sid, cpu in self._cpus.items()
                if sid in self._procs and self._procs[sid].poll() is None]

    def stop(self, sid: str, timeout_s: float = 15.0, by: str = "") -> dict[str, Any]:
        row = self._row(sid)
        if row["state"] not in (*ACTIVE, "starting"):
            return self.get(sid)
        if _worker_of(row) is not None:
            return self._stop_remote(row, timeout_s, by)
        try:
            call(row["control"], {"cmd": "stop", "by": by}, timeout_ms=1000)
        except (SessionUnreachable, RuntimeError):
            pass
        if not self._wait_exit(sid, row["pid"], timeout_s):
            self._kill(sid, row["pid"])
        self._mark_ended(sid)
        replay = self._replays.pop(sid, None)
        if replay is not None and replay.poll() is None:
            replay.terminate()
            replay.wait(5)
        self._export_nwb(sid)
        return self.get(sid)

    def _export_nwb(self, sid: str) -> None:
        """Write the NWB file next to the session log, off the request thread."""
        row = self._row(sid)
        splog = Path(row["recording"]) if row["recording"] else None
        if splog is None or not splog.exists():
            return

        def work() -> None:
            from service.recording.nwb_export import export_nwb

            try:
                export_nwb(splog, splog.with_suffix(".nwb"))
            except Exception as exc:  # the log stays the primary record
                log.warning("NWB export of %s failed: %s", splog, exc)

        t = threading.Thread(target=work, name=f"nwb-{sid}", daemon=False)
        t.start()
        self._exports.append(t)

    def _wait_exit(self, sid: str, pid: int | None, timeout_s: float) -> bool:
        proc = self._procs.get(sid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return True
            elif not _alive(pid):
                return True
            time.sleep(0.02)
        return False

    def _kill(self, sid: str, pid: int | None) -> None:
        if not pid:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            if self._wait_exit(sid, pid, 3.0):
                return

    # ------------------------------------------------------------------ replay
    def replay(self, recording: Path, speed: float | None,
               overrides: dict[str, Any] | None = None,
               behavior: str | None = None) -> dict[str, Any]:
        """Create and start a session fed by a recording published by its own process.

        The session config is the recording's own (for a session log) or a default
        one, with ``overrides`` merged in and the source pointed at the replay. An NWB
        file's metadata (subject, experimenter, ...) becomes the session's, and with
        ``behavior`` that series goes out as behaviour frames, one per session bin.
        """
        from service.recording.replay import open_recording, session_metadata
        from service.session.config import recorded_config

        bin_ms = float((overrides or {}).get("bin_ms") or SessionConfig().bin_ms)
        rec = open_recording(recording, bin_ms=bin_ms if behavior else None, behavior=behavior)
        base: dict[str, Any] = {}
        if rec.kind == "nwb":
            # A lab's file has its own outputs: no stimulation policy unless one is asked for.
            base = {"metadata": session_metadata(rec), "stim": {"policy": {}}}
        if rec.kind == "log":
            from service.recording.recorder import RecordType, read_log

            for r in read_log(recording, {RecordType.CONFIG}):
                base = recorded_config(r.value).model_dump()
                # Recordings carry no Redis password (and a replay runs here): no Redis.
                base.pop("redis", None)
                # The recorded output was that session's socket, not this one's.
                base["output"]["endpoint"] = "ipc"
                break
        cfg = _merge(base, overrides or {})
        port = _free_port()
        endpoint = f"tcp://127.0.0.1:{port}"
        cfg.setdefault("source", {})
        cfg["source"].update({"endpoint": endpoint, "channels": rec.channels})
        cfg["source"].pop("stream", None)
        cfg["name"] = cfg.get("name") or f"replay {recording.name}"[:100]
        config = SessionConfig.model_validate(cfg)
        session = self.create(config)
        sid = session["id"]
        out = open(self.run_dir / f"{sid}.replay.log", "ab")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "clients.cli", "replay", str(recording), "--endpoint",
               endpoint, "--quiet"]
        cmd += ["--speed", str(speed)] if speed else ["--fast"]
        if behavior:
            cmd += ["--behavior", behavior, "--bin-ms", str(config.bin_ms)]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[2])
        out.close()
        self._replays[sid] = proc
        try:  # here, beside the replay process publishing on 127.0.0.1
            return self.start(sid, local=True) | {"replay_pid": proc.pid}
        except Exception:
            proc.kill()
            raise

    def delete(self, sid: str, by: str = "") -> None:
        self.stop(sid, by=by)
        wid = _worker_of(self._row(sid))
        if wid is not None and self.cluster.alive(wid):
            try:
                self._ask(wid, "delete", 10.0, sid=sid)
            except SessionError:
                pass  # the worker no longer has it: nothing to delete there
        self.store.delete_session(sid)
        for suffix in (".config.json", ".status.json", ".log"):
            (self.run_dir / f"{sid}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / sid, ignore_errors=True)

    def reattach(self) -> dict[str, int]:
        """After an API restart: keep sessions that still answer, close the books on others."""
        kept = ended = 0
        for row in self.store.list_sessions():
            if row["state"] not in (*ACTIVE, "starting"):
                continue
            wid = _worker_of(row)
            if wid is not None:  # a worker's session: alive as long as the worker is
                if self.cluster is not None and self.cluster.alive(wid):
                    self._placed[row["id"]] = wid
                    kept += 1
                continue  # otherwise check_workers() fails it over
            if _alive(row["pid"]) and self._live_status(row) is not None:
                kept += 1
            else:
                self._mark_ended(row["id"])
                ended += 1
        return {"reattached": kept, "ended": ended}

    def stop_all(self) -> None:
        for row in self.store.list_sessions():
            if row["state"] in (*ACTIVE, "starting"):
                self.stop(row["id"])
        self.wait_exports()

    def wait_exports(self, timeout_s: float = 120.0) -> None:
        for t in self._exports:
            t.join(timeout_s)
        self._exports = [t for t in self._exports if t.is_alive()]


    # ------------------------------------------------------------------ workers
    def _ask(self, wid: str, op: str, timeout_s: float, **body: Any) -> Any:
        """A request to a worker, its failures as the errors a local session raises."""
        from service.cluster.registry import WorkerError, WorkerUnreachable

        try:
            return self.cluster.request(wid, op, timeout_s, **body)
        except WorkerUnreachable as exc:
            raise SessionUnreachable(str(exc)) from exc
        except WorkerError as exc:
            if exc.kind == "SessionUnreachable":
                raise SessionUnreachable(str(exc)) from exc
            if exc.kind in ("SessionError", "SessionNotFound", "ValueError"):
                raise SessionError(f"worker {wid}: {exc}") from exc
            raise RuntimeError(str(exc)) from exc

    def _start_remote(self, sid: str, cfg: SessionConfig,
                      exclude: tuple[str, ...] = (), by: str = "") -> dict[str, Any]:
        from service.cluster.registry import NoWorker

        try:
            wid = self.cluster.pick(cfg.placement, Counter(self._placed.values()), exclude)
        except NoWorker as exc:
            raise NoRoom(str(exc)) from exc
        self._placed[sid] = wid
        self.store.update_session(sid, state="starting", error="", pid=None,
                                  control=f"worker:{wid}")
        try:
            out = self._ask(wid, "start", self.start_timeout_s + 5, sid=sid,
                            config=cfg.model_dump(), by=by)
        except (SessionError, SessionUnreachable, RuntimeError) as exc:
            self._placed.pop(sid, None)
            self.store.update_session(sid, state="failed", error=str(exc))
            raise SessionError(f"session {sid} failed to start on worker {wid}: {exc}") from exc
        self.store.update_session(sid, state=out["state"], output=out["output_endpoint"],
                                  recording=out.get("recording"))
        return self.get(sid)

    def _remote_status(self, row: dict[str, Any], write: bool = True) -> dict[str, Any] | None:
        sid, wid = row["id"], _worker_of(row)
        assert wid is not None
        try:
            out = self._ask(wid, "get", 2.0, sid=sid)
        except SessionUnreachable:
            lost = self.cluster is None or not self.cluster.alive(wid)
            return {"state": row["state"], "unresponsive": True, "worker_lost": lost}
        except SessionError as exc:  # the worker does not know it (restarted worker)
            if write:
                self._placed.pop(sid, None)
                self.store.update_session(sid, state="failed", error=str(exc))
            return {"state": "failed", "error": str(exc)}
        if write:
            changed = {k: out[k] for k in ("state", "error", "recording") if out[k] != row[k]}
            if out["output_endpoint"] != row["output"]:
                changed["output"] = out["output_endpoint"]
            if changed:
                self.store.update_session(sid, **changed)
            if out["state"] not in ACTIVE:
                self._placed.pop(sid, None)
        live = out["live"]
        if live is None:  # ended on the worker: its record says how
            return {"state": out["state"], "error": out["error"]}
        return live

    def _stop_remote(self, row: dict[str, Any], timeout_s: float,
                     by: str = "") -> dict[str, Any]:
        sid, wid = row["id"], _worker_of(row)
        assert wid is not None
        try:
            out = self._ask(wid, "stop", timeout_s + 5, sid=sid, by=by)
            self.store.update_session(sid, state=out["state"], error=out["error"],
                                      recording=out.get("recording"))
        except (SessionError, SessionUnreachable, RuntimeError) as exc:
            self.store.update_session(sid, state="failed",
                                      error=f"stop on worker {wid} failed: {exc}")
        self._placed.pop(sid, None)
        return self.get(sid)

    def check_workers(self) -> builtins.list[dict[str, Any]]:
        """Fail over the sessions of every worker that stopped heartbeating.

        Called periodically by the control plane. A lost worker's sessions are marked
        failed; those configured with ``failover: restart`` are started again on another
        live worker, which starts them disarmed (the guard always does), so nothing
        stimulates until an operator arms the new incarnation.
        """
        if self.cluster is None:
            return []
        with self._failover_lock:
            lost = set(self.cluster.lost())
            registered = self.cluster.registered()
            events = []
            for row in self.store.list_sessions():
                wid = _worker_of(row)
                if wid is None or row["state"] not in (*ACTIVE, "starting"):
                    continue
                if wid in lost or wid not in registered:
                    events.append(self._fail_over(row, wid))
            for wid in lost:
                self.cluster.forget(wid)
            return events

    def _fail_over(self, row: dict[str, Any], wid: str) -> dict[str, Any]:
        sid = row["id"]
        cfg = SessionConfig.model_validate(row["config"])
        self._placed.pop(sid, None)
        why = (f"{self.cluster.why_lost(wid)}; its sessions were stopped there or drove "
               "stimulation safe (worker lease, session parent watch, stimulator heartbeats)")
        self.store.update_session(sid, state="failed", error=why, pid=None)
        if cfg.redis is None or cfg.redis.mirror_recording:  # workers mirror by default
            self._abandon_recording(sid, row["recording"], why)
        event = {"session": sid, "worker": wid, "at": time.time(), "action": "failed",
                 "error": why}
        if cfg.failover == "restart":
            try:
                out = self._start_remote(sid, cfg, exclude=(wid,))
                event |= {"action": "restarted", "to": out["worker"]}
            except SessionError as exc:
                self.store.update_session(sid, state="failed", error=f"{why}; restart: {exc}")
                event |= {"action": "restart_failed", "error": f"{why}; restart: {exc}"}
        self.failovers.append(event)
        log.warning(f"failover: {json.dumps(event)}")
        return event


    def _abandon_recording(self, sid: str, recording: str | None, why: str) -> None:
        """The lost worker will never end its recording's mirror: let the central copy close."""
        if not recording:
            return
        from service.cluster.redis_streams import abandon_recording

        try:
            abandon_recording(self.cluster.r, sid, Path(recording).name, why)
        except Exception as exc:  # the copy then stays open until the session records again
            log.info(f"could not mark {recording} abandoned: {exc}")


def _worker_of(row: dict[str, Any]) -> str | None:
    """The worker running a session (``control`` is ``worker:<id>``), or None if local."""
    control = row.get("control") or ""
    return control[len("worker:"):] if control.startswith("worker:") else None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
