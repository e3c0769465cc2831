"""The session process: the shell around one session core, in its own interpreter.

Run as ``python -m service.session.runner --config FILE --id ID --control ENDPOINT
--run-dir DIR``. The loop never shares a GIL with the HTTP server; the control
plane talks to it over a ZeroMQ ROUTER socket (JSON requests, JSON replies).

Everything the loop decides lives in :class:`service.loop.core.SessionCore`; this
module keeps only I/O (sockets, recorder, audit log, status file), scheduling
(poll, heartbeats, the wall-clock watchdog, the calibration thread) and signals.
State transitions are written to ``<run-dir>/<id>.status.json`` so the control
plane can tell how a session ended even after the process is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from decoders.base import Decoder
from service.loop.core import (
    SPIKE_KINDS,
    BinResult,
    Control,
    ControlOp,
    SessionCore,
    SessionState,
    fit_calibration,
)
from service.loop.outcome import command_fields
from service.recording.sink import RecorderSink
from service.session.config import SessionConfig, output_endpoint
from service.session.deadline import DeadlineAccounting
from service.session.metrics import SessionMetrics
from service.session.realtime import Layout, apply_layout
from service.wire import protocol as P
from service.wire.curve import connect_curve, ensure_cert, public_key, serve_curve
from stim.audit import AuditLog
from stim.commands import command_to_dict
from stim.guard import Outcome
from stim.limits import SafetyLimits
from stim.monitor import PhysicalMonitor
from stim.watchdog import Watchdog

now_ns = time.perf_counter_ns
log = logging.getLogger(__name__)
#: a stim message's content: status, the command's fields (None: none sent), reasons
StimMessage = tuple[str, dict[str, Any] | None, list[str]]


class LiveSink(RecorderSink):
    """The core's actions on the wire, in the recording, the audit log and the metrics."""

    def __init__(self, runner: SessionRunner):
        super().__init__(None)
        self.r = runner
        self.fit_request: tuple[np.ndarray, np.ndarray, list[str]] | None = None

    def accepted(self, frames: list[Any], msg: P.Message, recv_ns: int) -> None:
        super().accepted(frames, msg, recv_ns)
        self.r.metrics.stages["parse"].observe_ns(now_ns() - recv_ns)
        if msg.header.kind in SPIKE_KINDS:
            self.r.frame_src_ns = msg.header.t_ns

    def bin(self, r: BinResult, recv_ns: int, in_seq: int) -> None:
        run = self.r
        m = run.metrics
        out = r.outcome
        assert out is not None
        t_done = now_ns()
        run.watchdog.feed(t_done)
        run.publish_stim(run.physical(out, r.index, t_done), out.t_ns, r.index, in_seq)
        t_sent = now_ns()
        m.stages["stim"].observe_ns(t_sent - t_done)
        m.e2e(t_sent - recv_ns)
        run.deadline.bin_sent(recv_ns, t_sent)
        if r.decoded is not None:
            truth = r.truth
            run.emit(P.encode_array(
                b"decoded", P.KIND_DECODED, run.id, r.index, r.start_ns, r.decoded,
                run.cfg.bin_ns,
                {"truth": truth.tolist() if truth is not None else None,
                 "truth_names": run.core.truth_names if truth is not None else None,
                 "names": run.output_names}), copy=False)
        m.stages["publish"].observe_ns(now_ns() - t_sent)
        run.audit.record(out)  # after the command and the decoded vector are out
        if self.recorder is not None:  # the record is built by the recorder's writer
            self.recorder.bin(r.index, r.start_ns, r.decoded, out)

    def outcome(self, out: Outcome, index: int) -> None:
        run = self.r
        run.publish_stim(run.physical(out, index, now_ns()), out.t_ns, index, -1)
        run.audit.record(out)

    def event(self, ev: dict[str, Any]) -> None:
        super().event(ev)
        if "op" in ev or "segment" in ev:
            name = str(ev.get("op") or "segment")
            self.r.audit.event(name, self.r.core.session_ns(),
                               **{k: v for k, v in ev.items() if k not in ("op", "bin")})

    def state(self, state: SessionState, error: str) -> None:
        self.r.audit.event("state", self.r.core.session_ns(), state=state.value, error=error)
        self.r.write_status()

    def calibration_ready(self, counts: np.ndarray, truth: np.ndarray,
                          names: list[str]) -> None:
        self.r.start_fit(counts, truth, names)


class SessionRunner:
    def __init__(self, session_id: str, config: SessionConfig, control_endpoint: str,
                 run_dir: Path, models_dir: Path | None = None,
                 recordings_dir: Path | None = None, keys_dir: Path | None = None,
                 audit_dir: Path | None = None):
        self.id = session_id
        self.cfg = config
        self.parent_pid: int | None = None  # set: exit safe when this process is gone
        self.run_dir = run_dir
        self.models_dir = models_dir
        self.recordings_dir = recordings_dir
        self.layout = Layout()  # what the process applied at start (main sets it)
        self.metrics = SessionMetrics()
        self.stop_requested = False
        self.mirror: Any = None  # RecordingMirror, with redis.mirror_recording
        self.recording_path: Path | None = None
        # Every request and outcome, and every control event, in plain JSON lines.
        self.audit = AuditLog((audit_dir or run_dir) / f"{session_id}.audit.jsonl")
        # The physical backstop: what is handed to the stimulator holds the limits in wall
        # time too (a backlog of bins, a stall, a restarted source), whatever the guard's
        # source-clock view; its interventions are published, recorded and audited.
        self.monitor = PhysicalMonitor(config.stim.limits, config.stim.modality)
        self.sink = LiveSink(self)
        self.core = SessionCore(config, self.sink, now_ns, self._observe)
        # The loop's counters are the core's (frames, bins, stim statuses, ...).
        self.metrics.counters = self.core.counters
        self.metrics.rejected = self.core.rejected
        # Missed bins, put down to the platform or the software (service.session.deadline).
        self.deadline = DeadlineAccounting(config.bin_ns, self.core.counters)
        self.frame_src_ns: int | None = None  # source time of the spike frame being handled
        self.output_names: list[str] = []
        self._fit_thread: threading.Thread | None = None
        self._fitted: Decoder | None = None
        self._fit_error = ""
        # Wall clock (never the source clock): fed by every decoded bin, checked each beat.
        self.watchdog = Watchdog(int(config.stim.limits.watchdog_ms * 1e6))
        self.watchdog.feed(now_ns())
        self._out_seq = 0
        self._in_force: dict[str, Any] | None = None  # the last command published
        self._heartbeats = 0
        self.disarm_signalled = False  # SIGUSR1: the control plane's second path to disarm
        self.control_path = control_endpoint[len("ipc://"):] \
            if control_endpoint.startswith("ipc://") else None
        self._control_inode: int | None = None
        spikes_topic = config.source.spikes_topic.encode()
        behavior_topic = config.source.behavior_topic.encode()
        self.topics = (spikes_topic, behavior_topic)
        self.unmatched_topics: dict[bytes, int] = {}  # the first few topics nobody reads

        self.ctx: zmq.Context = zmq.Context.instance()
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(control_endpoint)
        if self.control_path is not None:
            self._control_inode = os.stat(self.control_path).st_ino
        sec = config.security
        self.public_key = None
        self._auth = None
        if sec.source_public_key or sec.output_curve:
            _, secret = ensure_cert(keys_dir or run_dir, "session")
            self.public_key = public_key(secret)
        self.output = self.ctx.socket(zmq.PUB)
        self.output.setsockopt(zmq.SNDHWM, config.output.high_water_mark)
        self.output.setsockopt(zmq.LINGER, 0)
        if sec.output_curve:
            self._auth = serve_curve(self.output, secret, sec.output_allowed_clients)
        self.output_endpoint = _bind(self.output, output_endpoint(config.output.endpoint,
                                                                  run_dir, session_id))
        # Every output message goes through emit: the PUB alone, or the PUB and then a
        # non-blocking copy to the Redis mirror thread.
        self.emit = self.output.send_multipart
        self.redis_mirror = None
        self.redis_reader = None
        if config.redis is not None and config.redis.mirror_output:
            from service.cluster.redis_mirror import OutputMirror
            from service.cluster.redis_streams import Keys

            self.redis_mirror = OutputMirror(
                config.redis.url, Keys.output(session_id), config.redis.output_maxlen,
                self.ctx, f"inproc://redis-mirror-{session_id}",
                config.output.high_water_mark)
            self.emit = self.redis_mirror.tee(self.output.send_multipart)
        if config.source.redis_stream:
            # Frames from Redis reach the loop on an inproc PULL, so the loop below reads
            # this socket exactly as it reads a ZeroMQ source (see service.cluster.redis_ingest).
            from service.cluster.redis_ingest import StreamReader
            from service.cluster.redis_streams import Keys

            assert config.redis is not None
            self.ingest = self.ctx.socket(zmq.PULL)
            self.ingest.setsockopt(zmq.LINGER, 0)
            endpoint = f"inproc://redis-ingest-{session_id}"
            self.ingest.bind(endpoint)
            self.redis_reader = StreamReader(
                config.redis.url, Keys.source(config.source.redis_stream), endpoint,
                (spikes_topic, behavior_topic), self.ctx)
        else:
            self.ingest = self.ctx.socket(zmq.SUB)
            self.ingest.setsockopt(zmq.RCVHWM, 1_000_000)
            self.ingest.setsockopt(zmq.LINGER, 0)
            if sec.source_public_key:
                connect_curve(self.ingest, sec.source_public_key, secret)
            # Every topic, so that frames on a topic the session does not read are counted
            # (``unmatched_topic``) rather than silently filtered out by the SUB socket.
            self.ingest.setsockopt(zmq.SUBSCRIBE, b"")
            self.ingest.connect(config.source.endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.ingest, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)

    def _observe(self, stage: str, ns: int) -> None:
        self.metrics.stages[stage].observe_ns(ns)

    @property
    def state(self) -> SessionState:
        return self.core.state

    # ================================================================== lifecycle
    def start(self, by: str = "") -> None:
        """Open the recording and begin the loop; ``by``: who started it (recorded)."""
        # Redis first: an unreachable server fails the start with its URL in the error.
        if self.redis_mirror is not None:
            self.redis_mirror.start()
        if self.redis_reader is not None:
            self.redis_reader.start()
        if self.cfg.record and self.recordings_dir is not None:
            self._open_recorder()
        self.lifecycle("start", by)
        decoder = self._load_model(self.cfg.decoder.model) if self.cfg.decoder.model else None
        self.core.begin(decoder)
        self._after_install()

    def lifecycle(self, op: str, by: str) -> None:
        """A start or stop asked by ``by`` (a token's name): in the recording, as an event
        that replay and verify pass over (it changes no decision), and in the audit log."""
        if self.recorder is not None and not self.recorder.error:
            self.recorder.event({"lifecycle": op, "by": by})
        self.audit.event(op, self.core.session_ns(), by=by)

    def _open_recorder(self) -> None:
        from service.recording.recorder import Recorder

        assert self.recordings_dir is not None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        self.recording_path = self.recordings_dir / f"{self.id}-{stamp}.splog"
        on_durable = None
        if self.cfg.redis is not None and self.cfg.redis.mirror_recording:
            from service.cluster.recording_mirror import RecordingMirror

            self.mirror = RecordingMirror(self.cfg.redis.url, self.id, self.recording_path,
                                          _recording_summary(self.cfg))
            on_durable = self.mirror.written
        recorder = Recorder(self.recording_path, on_durable=on_durable)
        recorder.config(self.cfg.model_dump(mode="json"), self.id)  # holds no secret
        self.sink.recorder = recorder

    @property
    def recorder(self):
        return self.sink.recorder

    def _load_model(self, name: str) -> Decoder:
        from decoders.store import ModelStore

        if self.models_dir is None:
            raise ValueError(f"decoder.model {name!r}: this session has no model store")
        return ModelStore(self.models_dir).load(name)

    def _after_install(self) -> None:
        dec = self.core.decoder
        if dec is not None:
            self.output_names = list(dec.output_names) or [f"x{i}" for i in
                                                           range(dec.n_outputs)]

    def write_status(self) -> None:
        path = self.run_dir / f"{self.id}.status.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status(), default=_jsonable))
        os.replace(tmp, path)

    # ================================================================== loop
    def run(self) -> None:
        gc.collect()
        if self.cfg.gc_freeze:
            gc.freeze()  # start-up objects are never scanned again: shorter pauses
            gc.disable()  # young garbage is collected at the heartbeat, between bins
        heartbeat_ns = int(self.cfg.output.heartbeat_ms * 1e6)
        next_heartbeat = now_ns()
        poll_ms = 0 if self.cfg.spin else max(1, int(self.cfg.output.heartbeat_ms / 2))
        ingest, control, deadline = self.ingest, self.control, self.deadline
        while not self.stop_requested:
            events = dict(self.poller.poll(poll_ms))
            if ingest in events:
                deadline.start_wake(now_ns())
                # Drain everything queued before looking at control or timers.
                while True:
                    try:
                        frames = ingest.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    # (a lone frame is malformed whatever its topic: the core rejects it)
                    if len(frames) > 1 and frames[0].bytes not in self.topics:
                        self._unmatched(frames[0].bytes)
                        continue
                    self.frame_src_ns = None
                    t_recv = now_ns()
                    deadline.start_frame(t_recv)
                    try:
                        self.core.accept(frames, t_recv)
                    except Exception as exc:  # a bug must not end the loop: safe, and say so
                        self._frame_fault(frames, exc)
                    deadline.end_frame(self.frame_src_ns)
                deadline.end_wake()
            if control in events:
                self._on_control()
            if self.disarm_signalled:
                self.disarm_signalled = False
                self.core.control(Control(ControlOp.DISARM, by="signal"))
                log.warning("session %s: disarmed by signal (SIGUSR1)", self.id)
            t = now_ns()
            if t >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = t + heartbeat_ns
                self._check_watchdog(t)
                self._tick_monitor(t)
                self._check_control_socket()
                self._check_parent()
                self._check_fit()
                if self.cfg.gc_freeze:
                    self._heartbeats += 1  # young gen each beat; older ones now and then
                    gc.collect(2 if self._heartbeats % 600 == 0 else
                               1 if self._heartbeats % 50 == 0 else 0)
                rec = self.recorder
                if rec is not None and rec.error and self.state is SessionState.RUNNING:
                    self._fail(f"recording failed: {rec.error}")
        self._shutdown()

    def _unmatched(self, topic: bytes) -> None:
        """A frame on a topic that is neither the spikes nor the behaviour topic."""
        self.metrics.counters["unmatched_topic"] += 1
        if topic in self.unmatched_topics or len(self.unmatched_topics) < 8:
            n = self.unmatched_topics[topic] = self.unmatched_topics.get(topic, 0) + 1
            if n == 1:
                log.warning("session %s: frames on topic %r are ignored: the session reads "
                            "%r (spikes) and %r (behaviour); set source.spikes_topic / "
                            "source.behavior_topic or publish on those", self.id, topic,
                            *self.topics)

    def physical(self, out: Outcome, index: int, wall_ns: int) -> StimMessage:
        """``out`` as the stimulator must get it: (status, command fields, reasons). A new
        command passes the physical monitor (only a change: an unchanged command is held,
        and ``tick`` bounds it in time)."""
        cmd = out.command
        if cmd is None:
            return out.status, None, out.reasons
        admitted, why = self.monitor.admit(cmd, wall_ns)
        if why is None:
            return out.status, command_fields(cmd), out.reasons
        return self._intervened(admitted, why, index, out.t_ns)

    def _intervened(self, cmd: Any, why: str, index: int, t_ns: int) -> StimMessage:
        """The monitor changed what is sent: say so on every channel, once."""
        self.metrics.counters["monitor_interventions"] += 1
        cmd_dict = command_to_dict(cmd)
        reason = f"physical monitor (wall clock): {why}"
        ev = {"monitor": why, "command": cmd_dict, "bin": index}
        if self.recorder is not None and not self.recorder.error:
            self.recorder.event(ev)  # not a control: verify checks the guard's decisions
        self.audit.event("monitor", t_ns, reason=why, command=cmd_dict)
        if self.metrics.counters["monitor_interventions"] <= 10:
            log.warning("session %s: %s", self.id, reason)
        return "safe" if cmd.is_off else "clamped", cmd_dict, [reason]

    def _tick_monitor(self, wall_ns: int) -> None:
        """Between commands: the command in force may cross a time bound (continuous-on,
        duty, heat) with nothing new sent; the monitor then turns it off."""
        cut = self.monitor.tick(wall_ns)
        if cut is not None:
            cmd, why = cut
            index = self.core.next_index
            self.publish_stim(self._intervened(cmd, why, index, self.core.session_ns()),
                              self.core.session_ns(), index, -1)

    def publish_stim(self, stim: StimMessage, t_ns: int, index: int, in_seq: int) -> None:
        """``cmd``: what the stimulator applies now (None: keep its present state);
        ``in_force``: the last command published, what it should be doing after this
        message (information only: re-applying it changes nothing)."""
        self._out_seq += 1
        status, cmd, reasons = stim
        if cmd is not None:
            self._in_force = cmd
        self.emit(P.encode_control(
            b"stim", P.KIND_STIM, self.id, self._out_seq, t_ns,
            {"status": status, "cmd": cmd, "in_force": self._in_force, "reasons": reasons,
             "bin": index, "in_seq": in_seq, "armed": self.core.guard.armed}))

    def _heartbeat(self) -> None:
        self._out_seq += 1
        core = self.core
        self.emit(P.encode_control(
            b"heartbeat", P.KIND_HEARTBEAT, self.id, self._out_seq, core.session_ns(),
            {"state": core.state.value, "armed": core.guard.armed,
             "bins": core.counters["bins"]}))

    # ================================================================== safety
    def _frame_fault(self, frames: list, exc: Exception) -> None:
        """An unexpected error while handling an accepted frame: drive stim safe, keep going."""
        m = self.metrics
        m.counters["frame_errors"] += 1
        self.core.degraded = True
        self.core.error = f"internal error on a frame: {type(exc).__name__}: {exc}"
        if m.counters["frame_errors"] <= 10:
            log.exception("session %s: internal error on a frame", self.id)
        if self.recorder is not None:
            self.recorder.rejected(frames, "internal_error", now_ns())
        self._safe(self.core.error)

    def _check_watchdog(self, t: int) -> None:
        wd = self.watchdog
        wd.deadline_ns = int(self.core.guard.limits.watchdog_ms * 1e6)  # limits may change
        trips = wd.trips
        if not wd.check(t) or wd.trips == trips:  # not expired, or this expiry already handled
            return
        self.metrics.counters["watchdog_trips"] += 1
        silent_ms = (t - (wd.last_feed_ns or t)) / 1e6
        self._safe(f"watchdog: no decoder update for {silent_ms:.0f} ms")

    def _check_control_socket(self) -> None:
        """The control socket is how the operator disarms. If its file was removed or
        replaced (another process bound the path), drive stimulation safe at once, say
        so, and take the path back by binding again."""
        if self.control_path is None:
            return
        try:
            inode: int | None = os.stat(self.control_path).st_ino
        except FileNotFoundError:
            inode = None
        if inode == self._control_inode:
            return
        what = "removed" if inode is None else "replaced by another socket"
        self.metrics.counters["control_socket_lost"] += 1
        self._safe(f"control socket {what}: stimulation safe; the path was bound again")
        endpoint = f"ipc://{self.control_path}"
        with contextlib.suppress(zmq.ZMQError):
            self.control.unbind(endpoint)
        self.control.bind(endpoint)  # libzmq unlinks what is there, then binds ours
        self._control_inode = os.stat(self.control_path).st_ino

    def _check_parent(self) -> None:
        """Under a worker, the session must not outlive it: the control plane restarts
        a lost worker's sessions elsewhere, and one loop must never stimulate twice."""
        parent = self.parent_pid
        if parent is not None and os.getppid() != parent:
            self.parent_pid = None
            self._fail(f"the worker that started this session (pid {parent}) is gone")

    def _safe(self, reason: str) -> None:
        """Drive the stimulator safe *now* (not at the next bin) and say so on every channel."""
        self.core.control(Control(ControlOp.SAFE, by="session", reason=reason))
        log.warning("session %s: safe state: %s", self.id, reason)

    def _fail(self, reason: str) -> None:
        self.core.fail(reason)
        log.error("session %s failed: %s", self.id, reason)
        self.stop_requested = True

    # ================================================================== calibration
    def start_fit(self, counts: np.ndarray, truth: np.ndarray, names: list[str]) -> None:
        """Fit in a thread: a fit takes seconds to minutes, the loop must go on."""
        def fit() -> None:
            try:
                self._fitted = fit_calibration(self.cfg, counts, truth, names)
            except Exception as exc:
                self._fit_error = f"{type(exc).__name__}: {exc}"

        self._fit_thread = threading.Thread(target=fit, name="calibration", daemon=True)
        self._fit_thread.start()

    def _check_fit(self) -> None:
        th = self._fit_thread
        if th is None or th.is_alive():
            return
        self._fit_thread = None
        if self._fitted is not None:
            fitted, self._fitted = self._fitted, None
            try:
                self.core.install(fitted)
            except ValueError as exc:  # e.g. the policy cannot read the decoder's outputs
                self._fail(f"calibrated decoder refused: {exc}")
                return
            self._after_install()
        else:
            self.core.calibration_failed(self._fit_error)
            self.stop_requested = True

    # ================================================================== control
    def _on_control(self) -> None:
        while True:
            try:
                ident, raw = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # malformed control message: wrong frame count
            extra: list[bytes] = []
            try:
                req = json.loads(raw)
                reply = self._handle(req, extra)
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.control.send_multipart([ident, json.dumps(reply, default=_jsonable).encode(),
                                         *extra])

    def _handle(self, req: dict[str, Any], extra: list[bytes]) -> dict[str, Any]:
        cmd = req.get("cmd")
        by = str(req.get("by", "api"))
        core = self.core
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "metrics":
            self._redis_counters()
            return {"ok": True, "metrics": self.metrics.summary()
                    | {"realtime": self.layout.to_dict()}}
        if cmd == "latency":
            extra.append(self.metrics.e2e_samples().tobytes())
            return {"ok": True}
        if cmd == "stop":
            self.lifecycle("stop", by)
            self.stop_requested = True
            return {"ok": True}
        if cmd == "arm":
            core.control(Control(ControlOp.ARM, by=by))
            return {"ok": True, "armed": True}
        if cmd == "disarm":
            core.control(Control(ControlOp.DISARM, by=by))
            return {"ok": True, "armed": False}
        if cmd == "limits":
            limits = SafetyLimits(**req["limits"])
            core.control(Control(ControlOp.LIMITS, by=by, limits=limits))
            self.monitor.set_limits(limits)  # it keeps its history, as the guard does
            return {"ok": True, "limits": limits.model_dump()}
        if cmd == "adapt":
            core.control(Control(ControlOp.ADAPT, by=by, enabled=bool(req.get("enabled", True))))
            return {"ok": True, "adapt": core.adapt,
                    "adapting": core.decoder is not None and core.decoder.adapting}
        if cmd == "model":
            core.install(self._load_model(str(req["name"])))
            self._after_install()
            return {"ok": True, "decoder": core.decoder.metadata() if core.decoder else None}
        raise ValueError(f"unknown control command {cmd!r}")

    def status(self) -> dict[str, Any]:
        core = self.core
        guard = core.guard
        dec = core.decoder
        c = core.counters
        redis_ingest, redis_mirror = self._redis_counters()
        return {
            "id": self.id,
            "state": core.state.value,
            "error": core.error,
            "degraded": core.degraded,
            "scheduling": self.layout.text() or "SCHED_OTHER",
            "realtime": self.layout.to_dict(),
            "pid": os.getpid(),
            "output_endpoint": self.output_endpoint,
            "public_key": self.public_key,
            "armed": guard.armed,
            "stim": command_to_dict(guard.current),
            "stim_status": core.stim_status(),
            "limits": guard.limits.model_dump(),
            "bins": c["bins"],
            "frames": c["frames"],
            "gaps": c["gaps"],
            "source_restarts": c["source_restarts"],
            "segments": core.epoch_segments,
            "rejected": dict(core.rejected),
            "unmatched_topics": {t.decode(errors="replace"): n
                                 for t, n in self.unmatched_topics.items()},
            "counters": dict(c),
            "late_events": core.binner.late_events,
            "clock_jumps": core.binner.clock_jumps,
            "calibration": core.calibration_status(),
            "decoder": dec.metadata() if dec is not None else None,
            "outputs": self.output_names,
            "adapt": core.adapt,
            "adapting": dec is not None and dec.adapting,
            "recording": str(self.recording_path) if self.recording_path else None,
            "recording_mirror": self.mirror.stats() if self.mirror is not None else None,
            "latency_e2e": self.metrics.summary()["latency_e2e"],
            "missed": self.deadline.summary(),
            "redis": {"ingest": redis_ingest, "mirror": redis_mirror}
            if self.cfg.redis is not None else None,
        }

    def _redis_counters(self) -> tuple[dict | None, dict | None]:
        """One snapshot of the Redis threads' stats (they run on while we read), copied
        into the loop's counters (and so to /metrics); the same snapshot is returned for
        the status, so both always agree."""
        c = self.metrics.counters
        ing = self.redis_reader.stats() if self.redis_reader is not None else None
        mir = self.redis_mirror.stats() if self.redis_mirror is not None else None
        if ing is not None:
            c["redis_entries"], c["redis_skipped"] = ing["entries"], ing["skipped"]
            c["redis_reader_errors"], c["redis_reconnects"] = ing["errors"], ing["reconnects"]
        if mir is not None:
            c["redis_mirror_sent"], c["redis_mirror_dropped"] = mir["sent"], mir["dropped"]
            c["redis_mirror_failed"], c["redis_mirror_errors"] = mir["failed"], mir["errors"]
        return ing, mir

    def _shutdown(self) -> None:
        try:
            self.core.stop()
        except zmq.ZMQError:
            pass
        rec = self.recorder
        if rec is not None:
            final = rec.close()
            if self.mirror is not None:  # bounded wait; the status says what did not make it
                self.mirror.close(final)
            self.write_status()
        self.audit.close()
        time.sleep(0.05)  # let the last safe command leave the socket
        if self.redis_reader is not None:
            self.redis_reader.stop()
        if self.redis_mirror is not None:
            self.redis_mirror.stop()  # after the last safe command: it is mirrored too
        for s in (self.ingest, self.output, self.control):
            s.close(0)
        if self._auth is not None:
            self._auth.stop()


# ====================================================================== helpers
def _bind(sock: zmq.Socket, endpoint: str) -> str:
    if endpoint.startswith("tcp://") and endpoint.rsplit(":", 1)[1] in ("0", "*"):
        host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
        port = sock.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{host}:{port}"
    sock.bind(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)




def _recording_summary(cfg: SessionConfig) -> dict[str, Any]:
    """What the recordings index says about a recording (the full config is its first record)."""
    return {"session": cfg.name, "bin_ms": cfg.bin_ms, "channels": cfg.source.channels,
            "decoder": cfg.decoder.type, "model": cfg.decoder.model, "stim": cfg.stim.modality}


def _software_versions() -> dict[str, str]:
    import torch

    from service import __version__

    return {"spikeloop": __version__, "python": sys.version.split()[0],
            "numpy": np.__version__, "torch": torch.__version__, "pyzmq": zmq.__version__}


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run one spikeloop session (started by the API).")
    ap.add_argument("--id", required=True)
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--control", required=True)
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--models-dir", type=Path)
    ap.add_argument("--recordings-dir", type=Path)
    ap.add_argument("--keys-dir", type=Path, help="Where the session's CurveZMQ key lives")
    ap.add_argument("--audit-dir", type=Path, help="Where the audit log is appended")
    ap.add_argument("--by", default="", help="Who started it (the API token's name)")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="Drive stim safe and stop when the parent (a worker) is gone")
    a = ap.parse_args(argv)
    os.umask(0o077)  # recordings, audit logs, status files and sockets: this user only
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [session {a.id}] %(name)s: %(message)s")

    import torch

    torch.set_num_threads(1)
    cfg = SessionConfig.model_validate_json(a.config.read_text())
    layout = apply_layout(cfg)  # before any ZeroMQ context: its I/O thread inherits it
    runner = None
    try:
        runner = SessionRunner(a.id, cfg, a.control, a.run_dir, a.models_dir, a.recordings_dir,
                               a.keys_dir, a.audit_dir)
        runner.layout = layout  # its PM QoS fd stays open as long as the process lives
        if a.exit_with_parent:
            runner.parent_pid = os.getppid()

        def _term(signum, frame):  # graceful stop on SIGTERM/SIGINT
            runner.stop_requested = True

        def _disarm(signum, frame):  # the control plane's path when the socket is gone
            runner.disarm_signalled = True

        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, _term)
        signal.signal(signal.SIGUSR1, _disarm)
        # A file-size limit must surface as a write error (the recorder then drives the
        # stimulator safe), not kill the process with SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        runner.start(a.by)
        runner.run()
        return 0 if runner.state is SessionState.STOPPED else 1
    except Exception as exc:
        log.exception("session %s could not run", a.id)
        status = {"id": a.id, "state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        if runner is not None:
            runner.core.state, runner.core.error = SessionState.FAILED, status["error"]
            try:  # the stimulator hears "disarmed, off" rather than only silence
                runner._shutdown()
            except Exception:
                log.exception("session %s: shutdown after the failure failed too", a.id)
            status = runner.status()
        (a.run_dir / f"{a.id}.status.json").write_text(json.dumps(status, default=_jsonable))
        return 1


if __name__ == "__main__":
    sys.exit(main())
