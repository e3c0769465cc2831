"""Session lifecycle on the control-plane side: create, start, stop, re-attach.

Each session runs in its own process (``service.runner``), started in a new
process group so that it survives an API crash: the closed loop must not stop
because the UI did. On start-up the manager re-attaches to sessions whose
process still answers and marks the others as ended.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .config import SessionConfig
from .control import SessionUnreachable, call
from .store import Store

ACTIVE = ("calibrating", "running")


class SessionError(Exception):
    """A request that cannot be done in the session's current state (HTTP 409)."""


class SessionNotFound(KeyError):
    pass


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
                 min_free_bytes: int = 200 * 1024**2):
        self.data_dir = data_dir
        self.run_dir = data_dir / "run"
        self.models_dir = data_dir / "models"
        self.recordings_dir = data_dir / "recordings"
        self.keys_dir = data_dir / "keys"
        self.audit_dir = data_dir / "audit"
        for d in (self.run_dir, self.models_dir, self.recordings_dir, self.keys_dir,
                  self.audit_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.start_timeout_s = start_timeout_s
        self.min_free_bytes = min_free_bytes
        self._procs: dict[str, subprocess.Popen] = {}
        self._replays: dict[str, subprocess.Popen] = {}
        self._exports: list[threading.Thread] = []

    # ------------------------------------------------------------------ queries
    def _row(self, sid: str) -> dict[str, Any]:
        row = self.store.get_session(sid)
        if row is None:
            raise SessionNotFound(sid)
        return row

    def list(self) -> list[dict[str, Any]]:
        return [self.get(r["id"]) for r in self.store.list_sessions()]

    def get(self, sid: str) -> dict[str, Any]:
        """The stored record, refreshed from the live process when there is one."""
        row = self._row(sid)
        live = None
        if row["state"] in ACTIVE:
            live = self._live_status(row)
            if live is None:
                row = self._row(sid)
        out = {k: row[k] for k in ("id", "name", "state", "error", "pid", "created_at",
                                   "updated_at", "config", "recording")}
        out["output_endpoint"] = row["output"]
        out["live"] = live
        return out

    def _live_status(self, row: dict[str, Any]) -> dict[str, Any] | None:
        sid = row["id"]
        try:
            st = call(row["control"], {"cmd": "status"}, timeout_ms=1000)["status"]
        except SessionUnreachable:
            if _alive(row["pid"]):
                return {"state": row["state"], "unresponsive": True}
            self._mark_ended(sid)
            return None
        if st["state"] != row["state"] or st["error"] != row["error"]:
            self.store.update_session(sid, state=st["state"], error=st["error"])
        return st

    def _mark_ended(self, sid: str) -> None:
        """The process is gone: take its last words from the status file."""
        st = self._status_file(sid)
        proc = self._procs.pop(sid, None)
        if proc is not None:
            proc.poll()
        if st and st.get("state") in ("stopped", "failed"):
            self.store.update_session(sid, state=st["state"], error=st.get("error", ""), pid=None)
        else:
            self.store.update_session(sid, state="failed", pid=None,
                                      error="session process ended unexpectedly; see "
                                            f"{self.run_dir / (sid + '.log')}")

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
        return call(row["control"], request, timeout_ms, with_extra)

    # ------------------------------------------------------------------ lifecycle
    def create(self, config: SessionConfig) -> dict[str, Any]:
        sid = uuid.uuid4().hex[:12]
        self.store.insert_session(sid, config.name, config.model_dump())
        return self.get(sid)

    def start(self, sid: str) -> dict[str, Any]:
        row = self._row(sid)
        if row["state"] in ACTIVE:
            raise SessionError(f"session {sid} is already {row['state']}")
        from .storage import check_free

        check_free(self.recordings_dir, self.min_free_bytes)
        cfg = SessionConfig.model_validate(row["config"])
        cfg_path = self.run_dir / f"{sid}.config.json"
        cfg_path.write_text(cfg.model_dump_json())
        control = f"ipc://{self.run_dir / (sid + '.ctl')}"
        (self.run_dir / f"{sid}.status.json").unlink(missing_ok=True)
        log = open(self.run_dir / f"{sid}.log", "ab")
        cmd = [sys.executable, "-m", "service.runner", "--id", sid, "--config", str(cfg_path),
               "--control", control, "--run-dir", str(self.run_dir),
               "--models-dir", str(self.models_dir), "--recordings-dir", str(self.recordings_dir),
               "--keys-dir", str(self.keys_dir), "--audit-dir", str(self.audit_dir)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[1])
        log.close()
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

    def stop(self, sid: str, timeout_s: float = 15.0) -> dict[str, Any]:
        row = self._row(sid)
        if row["state"] not in (*ACTIVE, "starting"):
            return self.get(sid)
        try:
            call(row["control"], {"cmd": "stop"}, timeout_ms=1000)
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
        log = Path(row["recording"]) if row["recording"] else None
        if log is None or not log.exists():
            return

        def work() -> None:
            from .nwb_export import export_nwb

            try:
                export_nwb(log, log.with_suffix(".nwb"))
            except Exception as exc:  # the log stays the primary record
                print(f"[spikeloop] NWB export of {log} failed: {exc}", file=sys.stderr)

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
               overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create and start a session fed by a recording published by its own process.

        The session config is the recording's own (for a session log) or a default
        one, with ``overrides`` merged in and the source pointed at the replay.
        """
        from .replay import open_recording
        from .verify import session_config

        rec = open_recording(recording)
        base: dict[str, Any] = {}
        if rec.kind == "log":
            from .recorder import RecordType, read_log

            for r in read_log(recording, {RecordType.CONFIG}):
                base = session_config(r.value["config"]).model_dump()
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
        log = open(self.run_dir / f"{sid}.replay.log", "ab")
        cmd = [sys.executable, "-m", "clients.cli", "replay", str(recording), "--endpoint",
               endpoint, "--quiet"]
        cmd += ["--speed", str(speed)] if speed else ["--fast"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[1])
        log.close()
        self._replays[sid] = proc
        try:
            return self.start(sid) | {"replay_pid": proc.pid}
        except Exception:
            proc.kill()
            raise

    def delete(self, sid: str) -> None:
        self.stop(sid)
        self.store.delete_session(sid)
        for suffix in (".config.json", ".status.json", ".log", ".ctl"):
            (self.run_dir / f"{sid}{suffix}").unlink(missing_ok=True)

    def reattach(self) -> dict[str, int]:
        """After an API restart: keep sessions that still answer, close the books on others."""
        kept = ended = 0
        for row in self.store.list_sessions():
            if row["state"] not in (*ACTIVE, "starting"):
                continue
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


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
