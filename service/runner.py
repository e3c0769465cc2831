"""The session process: one closed loop, in its own interpreter.

Run as ``python -m service.runner --config FILE --id ID --control ENDPOINT
--run-dir DIR``. The loop never shares a GIL with the HTTP server; the control
plane talks to it over a ZeroMQ ROUTER socket (JSON requests, JSON replies).

States: created -> calibrating -> running -> stopped | failed. While
calibrating (or whenever the decoder is missing or faulty) every bin drives
the stimulator to its safe state. State transitions are written to
``<run-dir>/<id>.status.json`` so the control plane can tell how a session
ended even after the process is gone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from decoders.base import Decoder, build_decoder
from stim.audit import AuditLog
from stim.commands import command_to_dict
from stim.guard import Outcome
from stim.watchdog import Watchdog

from . import protocol as P
from .config import SessionConfig
from .curve import connect_curve, ensure_cert, public_key, serve_curve
from .metrics import SessionMetrics
from .pipeline import BinResult, LoopPipeline, build_pipeline

now_ns = time.perf_counter_ns


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
        self.state = "created"
        self.error = ""
        self.degraded = False  # the decoder or policy failed at least once: stim went safe
        self.scheduling = "SCHED_OTHER"
        self.metrics = SessionMetrics()
        self.tracker = P.SequenceTracker(int(config.source.timestamp_tolerance_ms * 1e6))
        self.pipeline: LoopPipeline = build_pipeline(config, None)
        self.stop_requested = False
        self.recorder = None
        self.mirror = None  # RecordingMirror, with redis.mirror_recording
        self.recording_path: Path | None = None
        # Every request and outcome, and every control event, in plain JSON lines.
        self.audit = AuditLog((audit_dir or run_dir) / f"{session_id}.audit.jsonl")
        self._cal_counts: list[np.ndarray] = []
        self._cal_truth: list[np.ndarray] = []
        self._truth_names: list[str] = []
        self._fit_thread: threading.Thread | None = None
        self._fitted: Decoder | None = None
        self._fit_error = ""
        # Wall clock (never the source clock): fed by every decoded bin, checked each beat.
        self.watchdog = Watchdog(int(config.stim.limits.watchdog_ms * 1e6))
        self.watchdog.feed(now_ns())
        self._last_cmd_obj: Any = None
        self._last_cmd_dict: dict | None = None
        self._out_seq = 0
        self._heartbeats = 0
        self._stim_bytes_topic = b"stim"
        self._spikes_topic = config.source.spikes_topic.encode()
        self._behavior_topic = config.source.behavior_topic.encode()

        self.ctx = zmq.Context.instance()
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(control_endpoint)
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
        self.output_endpoint = _bind(self.output, config.output.endpoint)
        # Every output message goes through _emit: the PUB alone, or the PUB and then a
        # non-blocking copy to the Redis mirror thread.
        self._emit = self.output.send_multipart
        self.redis_mirror = None
        self.redis_reader = None
        if config.redis is not None and config.redis.mirror_output:
            from .redis_mirror import OutputMirror
            from .redis_streams import Keys

            self.redis_mirror = OutputMirror(
                config.redis.url, Keys.output(session_id), config.redis.output_maxlen,
                self.ctx, f"inproc://redis-mirror-{session_id}",
                config.output.high_water_mark)
            self._emit = self.redis_mirror.tee(self.output.send_multipart)
        if config.source.redis_stream:
            # Frames from Redis reach the loop on an inproc PULL, so the loop below reads
            # this socket exactly as it reads a ZeroMQ source (see service.redis_ingest).
            from .redis_ingest import StreamReader
            from .redis_streams import Keys

            self.ingest = self.ctx.socket(zmq.PULL)
            self.ingest.setsockopt(zmq.LINGER, 0)
            endpoint = f"inproc://redis-ingest-{session_id}"
            self.ingest.bind(endpoint)
            self.redis_reader = StreamReader(
                config.redis.url, Keys.source(config.source.redis_stream), endpoint,
                (self._spikes_topic, self._behavior_topic), self.ctx)
        else:
            self.ingest = self.ctx.socket(zmq.SUB)
            self.ingest.setsockopt(zmq.RCVHWM, 1_000_000)
            self.ingest.setsockopt(zmq.LINGER, 0)
            if sec.source_public_key:
                connect_curve(self.ingest, sec.source_public_key, secret)
            self.ingest.setsockopt(zmq.SUBSCRIBE, self._spikes_topic)
            self.ingest.setsockopt(zmq.SUBSCRIBE, self._behavior_topic)
            self.ingest.connect(config.source.endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.ingest, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)

    # ================================================================== lifecycle
    def start(self) -> None:
        # Redis first: an unreachable server fails the start with its URL in the error.
        if self.redis_mirror is not None:
            self.redis_mirror.start()
        if self.redis_reader is not None:
            self.redis_reader.start()
        if self.cfg.record and self.recordings_dir is not None:
            self._open_recorder()
        if self.cfg.decoder.model:
            dec = self._load_model(self.cfg.decoder.model)
            self._install_decoder(dec)
        else:
            self._set_state("calibrating")

    def _open_recorder(self) -> None:
        from .recorder import Recorder

        stamp = time.strftime("%Y%m%dT%H%M%S")
        self.recording_path = self.recordings_dir / f"{self.id}-{stamp}.splog"
        on_durable = None
        if self.cfg.redis is not None and self.cfg.redis.mirror_recording:
            from .recording_mirror import RecordingMirror

            self.mirror = RecordingMirror(self.cfg.redis.url, self.id, self.recording_path,
                                          _recording_summary(self.cfg))
            on_durable = self.mirror.written
        self.recorder = Recorder(self.recording_path, on_durable=on_durable)
        self.recorder.config({"session_id": self.id, "config": self.cfg.model_dump(),
                              "software": _software_versions()})

    def _load_model(self, name: str) -> Decoder:
        from decoders.store import ModelStore

        return ModelStore(self.models_dir).load(name)

    def _install_decoder(self, dec: Decoder) -> None:
        """Switch to running from the next bin; the recording says at which bin."""
        if dec.n_inputs != self.cfg.source.channels:
            raise ValueError(f"model expects {dec.n_inputs} channels, source has "
                             f"{self.cfg.source.channels}")
        self.pipeline.decoder = dec
        if self.recorder is not None:
            self.recorder.model(dec.metadata() | {"bin": self.pipeline.binner.next_index},
                                dec.state_dict())
        self._set_state("running")

    def _set_state(self, state: str, error: str = "") -> None:
        self.state = state
        if error:
            self.error = error
        self.audit.event("state", self._source_now(), state=state, error=error)
        if self.recorder is not None:
            self.recorder.event({"state": state, "error": error,
                                 "bin": self.pipeline.binner.next_index})
        self._write_status()

    def _write_status(self) -> None:
        path = self.run_dir / f"{self.id}.status.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status(), default=_jsonable))
        os.replace(tmp, path)

    def _source_now(self) -> int:
        """The session's current position on the source clock (0 before the first frame)."""
        b = self.pipeline.binner
        return b.start_of(b.next_index) if b.origin_ns is not None else 0

    # ================================================================== loop
    def run(self) -> None:
        gc.collect()
        if self.cfg.gc_freeze:
            gc.freeze()  # start-up objects are never scanned again: shorter pauses
            gc.disable()  # young garbage is collected at the heartbeat, between bins
        heartbeat_ns = int(self.cfg.output.heartbeat_ms * 1e6)
        next_heartbeat = now_ns()
        poll_ms = 0 if self.cfg.spin else max(1, int(self.cfg.output.heartbeat_ms / 2))
        ingest, control = self.ingest, self.control
        while not self.stop_requested:
            events = dict(self.poller.poll(poll_ms))
            if ingest in events:
                # Drain everything queued before looking at control or timers.
                while True:
                    try:
                        frames = ingest.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        self._on_frames(frames, now_ns())
                    except Exception as exc:  # a bug must not end the loop: safe, and say so
                        self._frame_fault(frames, exc)
            if control in events:
                self._on_control()
            t = now_ns()
            if t >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = t + heartbeat_ns
                self._check_watchdog(t)
                self._check_parent()
                self._check_fit()
                if self.cfg.gc_freeze:
                    self._heartbeats += 1  # young gen each beat; older ones now and then
                    gc.collect(2 if self._heartbeats % 600 == 0 else
                               1 if self._heartbeats % 50 == 0 else 0)
                if self.recorder is not None and self.recorder.error and self.state == "running":
                    self._fail_safe(f"recording failed: {self.recorder.error}")
        self._shutdown()

    def _on_frames(self, frames: list, recv: int) -> None:
        m = self.metrics
        try:
            msg = P.decode(frames)
            h = msg.header
            if self.cfg.source.stream is not None and h.stream != self.cfg.source.stream:
                raise P.ProtocolError("wrong_stream", f"stream {h.stream!r}")
            if h.kind in (P.KIND_EVENTS, P.KIND_COUNTS):
                self.pipeline.check(msg)
                if self.tracker.is_restart(h):
                    # The source restarted: a new stream with its own clock. Re-anchor
                    # the bin grid on it, and count the outage as a gap.
                    self.tracker.reset(h.epoch)
                    self.pipeline.binner.resync()
                    m.counters["source_restarts"] += 1
                    m.counters["gaps"] += 1
                missed = self.tracker.check(h)
                if missed:
                    m.counters["gaps"] += 1
                    m.counters["missing_frames"] += missed
            elif h.kind != P.KIND_BEHAVIOR:
                raise P.ProtocolError("unknown_kind", f"{h.kind} is not an input kind")
        except P.ProtocolError as exc:
            m.rejected[exc.reason] += 1
            if m.rejected[exc.reason] <= 10 or m.rejected[exc.reason] % 1000 == 0:
                print(f"[session {self.id}] rejected frame: {exc}", file=sys.stderr, flush=True)
            if self.recorder is not None:
                self.recorder.rejected(frames, exc.reason, recv)
            return
        t_parsed = now_ns()
        m.stages["parse"].observe_ns(t_parsed - recv)
        if self.recorder is not None:
            self.recorder.input(frames, recv)
        if h.kind == P.KIND_BEHAVIOR:
            if not self._truth_names:
                self._truth_names = list(h.extra.get("names") or
                                         [f"x{i}" for i in range(h.channels)])
            self.pipeline.add(msg)
            return
        m.counters["frames"] += 1
        if h.kind == P.KIND_EVENTS:
            m.counters["events"] += h.n
        self.pipeline.add(msg)
        t_binned = now_ns()
        m.stages["bin"].observe_ns(t_binned - t_parsed)
        for r in self.pipeline.ready(LoopPipeline.watermark(msg)):
            self._on_bin(r, h.seq, recv, t_binned)
            t_binned = now_ns()

    def _on_bin(self, r: BinResult, in_seq: int, recv: int, t0: int) -> None:
        m = self.metrics
        t_done = now_ns()
        m.stages["decode"].observe_ns(t_done - t0)  # decode + policy + guard
        self.watchdog.feed(t_done)
        m.counters["bins"] += 1
        if r.error:
            m.counters["decoder_errors"] += 1
            if self.state == "running":
                self.error = r.error  # kept until an operator restarts the session
                self.degraded = True
                m.counters["degraded_bins"] += 1
        out = r.outcome
        od = self._outcome_dict(out)
        self._publish_stim(od, out.t_ns, r.index, in_seq)
        t_sent = now_ns()
        m.stages["stim"].observe_ns(t_sent - t_done)
        m.e2e(t_sent - recv)
        if t_sent - recv > self.cfg.bin_ns:
            m.counters["missed_bins"] += 1
        if r.decoded is not None:
            truth = r.truth
            self._emit(P.encode_array(
                b"decoded", P.KIND_DECODED, self.id, r.index, r.start_ns, r.decoded,
                self.cfg.bin_ns,
                {"truth": truth.tolist() if truth is not None else None}), copy=False)
        m.stages["publish"].observe_ns(now_ns() - t_sent)
        self.audit.record(out)  # after the command and the decoded vector are out
        if self.recorder is not None:
            od["request"] = (command_to_dict(out.request) if out.request is not None
                             else None)
            self.recorder.bin(r.index, r.start_ns, r.decoded, od)
            for ev in r.controls:
                self.recorder.event(ev | {"bin": r.index})
        if self.state == "calibrating" and r.truth is not None:
            self._collect_calibration(r)

    def _outcome_dict(self, out: Outcome) -> dict[str, Any]:
        """What was decided, as published and recorded (``request`` added when recording)."""
        cmd = out.command
        if cmd is not self._last_cmd_obj:  # commands are immutable once sent: cache the dict
            self._last_cmd_obj = cmd
            self._last_cmd_dict = command_to_dict(cmd) if cmd is not None else None
        # Key order matters: recordings are compared bit for bit by `spikeloop verify`.
        return {"status": out.status, "command": self._last_cmd_dict, "request": None,
                "reasons": out.reasons}

    def _publish_stim(self, od: dict[str, Any], t_ns: int, index: int, in_seq: int) -> None:
        self._out_seq += 1
        self._emit(P.encode_control(
            b"stim", P.KIND_STIM, self.id, self._out_seq, t_ns,
            {"status": od["status"], "cmd": od["command"], "reasons": od["reasons"],
             "bin": index, "in_seq": in_seq, "armed": self.pipeline.guard.armed}))
        self.metrics.counters[f"stim_{od['status']}"] += 1

    def _publish_outcome(self, out: Outcome, index: int) -> None:
        """Out-of-band decisions (disarm, watchdog, stop): published at once, not per bin."""
        self._publish_stim(self._outcome_dict(out), out.t_ns, index, -1)
        self.audit.record(out)

    def _heartbeat(self) -> None:
        self._out_seq += 1
        guard = self.pipeline.guard
        self._emit(P.encode_control(
            b"heartbeat", P.KIND_HEARTBEAT, self.id, self._out_seq,
            self.pipeline.binner.start_of(self.pipeline.binner.next_index)
            if self.pipeline.binner.origin_ns is not None else 0,
            {"state": self.state, "armed": guard.armed,
             "bins": self.metrics.counters["bins"]}))

    # ================================================================== safety
    def _frame_fault(self, frames: list, exc: Exception) -> None:
        """An unexpected error while handling an accepted frame: drive stim safe, keep going."""
        m = self.metrics
        m.counters["frame_errors"] += 1
        self.degraded = True
        self.error = f"internal error on a frame: {type(exc).__name__}: {exc}"
        if m.counters["frame_errors"] <= 10:
            traceback.print_exc()
        if self.recorder is not None:
            self.recorder.rejected(frames, "internal_error", now_ns())
        self._fail_safe(self.error, keep_state=True)


    def _check_watchdog(self, t: int) -> None:
        wd = self.watchdog
        wd.deadline_ns = int(self.pipeline.guard.limits.watchdog_ms * 1e6)  # limits may change
        trips = wd.trips
        if not wd.check(t) or wd.trips == trips:  # not expired, or this expiry already handled
            return
        self.metrics.counters["watchdog_trips"] += 1
        self._fail_safe(f"watchdog: no decoder update for {(t - wd.last_feed_ns) / 1e6:.0f} ms",
                        keep_state=True)

    def _check_parent(self) -> None:
        """Under a worker, the session must not outlive it: the control plane restarts
        a lost worker's sessions elsewhere, and one loop must never stimulate twice."""
        parent = self.parent_pid
        if parent is not None and os.getppid() != parent:
            self.parent_pid = None
            self._fail_safe(f"the worker that started this session (pid {parent}) is gone")

    def _fail_safe(self, reason: str, keep_state: bool = False) -> None:
        """Drive the stimulator safe *now* (not at the next bin) and say so on every channel."""
        binner = self.pipeline.binner
        t = binner.start_of(binner.next_index) if binner.origin_ns is not None else 0
        if keep_state:
            out = self.pipeline.guard.safe_state(t, reason)
            op = "safe"
        else:
            out = self.pipeline.guard.disarm(t)
            out.reasons.append(reason)
            op = "disarm"
        self.audit.event(op, t, reason=reason)
        self._publish_outcome(out, binner.next_index)
        if self.recorder is not None and not self.recorder.error:
            self.recorder.event({"op": op, "reason": reason, "bin": binner.next_index})
        print(f"[session {self.id}] safe state: {reason}", file=sys.stderr, flush=True)
        if not keep_state:
            self._set_state("failed", reason)
            self.stop_requested = True

    # ================================================================== calibration
    def _collect_calibration(self, r: BinResult) -> None:
        if self._fit_thread is not None:
            return
        self._cal_counts.append(r.counts.copy())
        self._cal_truth.append(np.array(r.truth, dtype=float))
        need = int(self.cfg.decoder.calibration_s * 1000 / self.cfg.bin_ms)
        if len(self._cal_counts) >= need:
            self._fit_thread = threading.Thread(target=self._fit, daemon=True)
            self._fit_thread.start()

    def _fit(self) -> None:
        try:
            counts = np.asarray(self._cal_counts)
            truth = np.asarray(self._cal_truth)
            names = self._truth_names or [f"x{i}" for i in range(truth.shape[1])]
            wanted = self.cfg.decoder.outputs
            if wanted:
                missing = [n for n in wanted if n not in names]
                if missing:
                    raise ValueError(f"decoder.outputs {missing} not in behaviour {names}")
                sel = [names.index(n) for n in wanted]
                truth, names = truth[:, sel], list(wanted)
            dec = build_decoder(self.cfg.decoder.type, **self.cfg.decoder.params)
            dec.fit(counts, truth, bin_ms=self.cfg.bin_ms, output_names=names)
            self._fitted = dec
        except Exception as exc:
            self._fit_error = f"calibration failed: {type(exc).__name__}: {exc}"

    def _check_fit(self) -> None:
        if self._fit_thread is None or self._fit_thread.is_alive() or self.state != "calibrating":
            return
        if self._fitted is not None:
            self._install_decoder(self._fitted)
            self._cal_counts.clear()
            self._cal_truth.clear()
        else:
            self._set_state("failed", self._fit_error)
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
        guard = self.pipeline.guard
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "metrics":
            self._redis_counters()
            return {"ok": True, "metrics": self.metrics.summary()}
        if cmd == "latency":
            extra.append(self.metrics.e2e_samples().tobytes())
            return {"ok": True}
        if cmd == "stop":
            self.stop_requested = True
            return {"ok": True}
        if cmd == "arm":
            # Immediate, like disarm, and recorded with the bin it precedes so a replay
            # arms at the same point. (Queueing it instead would let a queued arm
            # re-arm the guard after a later, immediate disarm.)
            guard.arm()
            self.audit.event("arm", self._source_now(), by=req.get("by", "api"))
            if self.recorder is not None:
                self.recorder.event({"op": "arm", "bin": self.pipeline.binner.next_index})
            return {"ok": True, "armed": True}
        if cmd == "disarm":
            binner = self.pipeline.binner
            t = binner.start_of(binner.next_index) if binner.origin_ns is not None else 0
            self.audit.event("disarm", t, by=req.get("by", "api"))
            out = guard.disarm(t)
            self._publish_outcome(out, binner.next_index)
            if self.recorder is not None:
                self.recorder.event({"op": "disarm", "bin": binner.next_index})
            return {"ok": True, "armed": False}
        if cmd == "limits":
            from stim.limits import SafetyLimits

            limits = SafetyLimits(**req["limits"])  # validated before queueing
            self.pipeline.control({"op": "limits", "limits": limits.model_dump()})
            self.audit.event("limits", self._source_now(), limits=limits.model_dump(),
                             by=req.get("by", "api"))
            return {"ok": True, "limits": limits.model_dump()}
        if cmd == "adapt":
            self.pipeline.control({"op": "adapt", "enabled": bool(req.get("enabled", True))})
            return {"ok": True}
        raise ValueError(f"unknown control command {cmd!r}")

    def status(self) -> dict[str, Any]:
        guard = self.pipeline.guard
        dec = self.pipeline.decoder
        c = self.metrics.counters
        redis_ingest, redis_mirror = self._redis_counters()
        return {
            "id": self.id,
            "state": self.state,
            "error": self.error,
            "degraded": self.degraded,
            "scheduling": self.scheduling,
            "pid": os.getpid(),
            "output_endpoint": self.output_endpoint,
            "public_key": self.public_key,
            "armed": guard.armed,
            "stim": command_to_dict(guard.current),
            "limits": guard.limits.model_dump(),
            "bins": c["bins"],
            "frames": c["frames"],
            "gaps": c["gaps"],
            "rejected": dict(self.metrics.rejected),
            "counters": dict(c),
            "late_events": self.pipeline.binner.late_events,
            "clock_jumps": self.pipeline.binner.clock_jumps,
            "calibration": {
                "bins": len(self._cal_counts),
                "needed": int(self.cfg.decoder.calibration_s * 1000 / self.cfg.bin_ms),
            },
            "decoder": dec.metadata() if dec is not None else None,
            "adapt": self.pipeline.adapt,
            "recording": str(self.recording_path) if self.recording_path else None,
            "recording_mirror": self.mirror.stats() if self.mirror is not None else None,
            "latency_e2e": self.metrics.summary()["latency_e2e"],
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
        guard = self.pipeline.guard
        binner = self.pipeline.binner
        t = binner.start_of(binner.next_index) if binner.origin_ns is not None else 0
        out = guard.disarm(t)
        try:
            self._publish_outcome(out, binner.next_index)
        except zmq.ZMQError:
            pass
        if self.state not in ("failed",):
            self._set_state("stopped")
        if self.recorder is not None:
            self.recorder.event({"op": "disarm", "bin": binner.next_index, "reason": "stop"})
            final = self.recorder.close()
            if self.mirror is not None:  # bounded wait; the status says what did not make it
                self.mirror.close(final)
            self._write_status()
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


def set_scheduling(cpu: int | None, rt_priority: int | None) -> str:
    """Pin and/or raise the process before any ZeroMQ context exists.

    Threads inherit both, so libzmq's I/O thread (which carries every send) gets
    them too. Refusal (no CAP_SYS_NICE) is reported, not fatal: the loop still
    runs, and the status says under which policy.
    """
    notes = []
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
            notes.append(f"cpu {cpu}")
        except OSError as exc:
            notes.append(f"cpu {cpu} refused ({exc.strerror})")
    if rt_priority:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt_priority))
            notes.append(f"SCHED_FIFO {rt_priority}")
        except OSError as exc:
            notes.append(f"SCHED_OTHER: SCHED_FIFO {rt_priority} refused ({exc.strerror}); "
                         "grant CAP_SYS_NICE or run as root")
    else:
        notes.append("SCHED_OTHER")
    text = ", ".join(notes)
    print(f"[session] scheduling: {text}", file=sys.stderr, flush=True)
    return text


def hold_cpu_dma_latency(us: int | None) -> tuple[int | None, str]:
    """Keep idle CPUs out of deep idle states for as long as the returned fd stays open.

    The kernel's PM QoS interface: a deep idle state (or, in a VM, a halted vCPU) can take
    tens to hundreds of µs to wake, and every ZeroMQ hop wakes a thread. Writing 0 makes
    idle CPUs poll instead. Closing the fd (or the process ending) lifts the request.
    """
    if us is None:
        return None, ""
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError as exc:
        return None, f"cpu_dma_latency {us} us refused ({exc.strerror}); needs root"
    os.write(fd, struct.pack("i", us))
    return fd, f"cpu_dma_latency {us} us"


def _recording_summary(cfg: SessionConfig) -> dict[str, Any]:
    """What the recordings index says about a recording (the full config is its first record)."""
    return {"session": cfg.name, "bin_ms": cfg.bin_ms, "channels": cfg.source.channels,
            "decoder": cfg.decoder.type, "model": cfg.decoder.model, "stim": cfg.stim.modality}


def _software_versions() -> dict[str, str]:
    import torch

    from . import __version__

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
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="Drive stim safe and stop when the parent (a worker) is gone")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    cfg = SessionConfig.model_validate_json(a.config.read_text())
    scheduling = set_scheduling(cfg.cpu, cfg.rt_priority)
    _qos_fd, qos_note = hold_cpu_dma_latency(cfg.cpu_dma_latency_us)  # held until exit
    if qos_note:
        scheduling += ", " + qos_note
    runner = None
    try:
        runner = SessionRunner(a.id, cfg, a.control, a.run_dir, a.models_dir, a.recordings_dir,
                               a.keys_dir, a.audit_dir)
        runner.scheduling = scheduling
        if a.exit_with_parent:
            runner.parent_pid = os.getppid()

        def _term(signum, frame):  # graceful stop on SIGTERM/SIGINT
            runner.stop_requested = True

        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, _term)
        # A file-size limit must surface as a write error (the recorder then drives the
        # stimulator safe), not kill the process with SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        runner.start()
        runner.run()
        return 0 if runner.state == "stopped" else 1
    except Exception as exc:
        traceback.print_exc()
        status = {"id": a.id, "state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        if runner is not None:
            runner.state, runner.error = "failed", status["error"]
            try:  # the stimulator hears "disarmed, off" rather than only silence
                runner._shutdown()
            except Exception:
                traceback.print_exc()
            status = runner.status()
        (a.run_dir / f"{a.id}.status.json").write_text(json.dumps(status, default=_jsonable))
        return 1


if __name__ == "__main__":
    sys.exit(main())
