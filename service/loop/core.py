"""The session core: one closed loop, without sockets, threads or clocks.

Every path that runs a session drives this one object — the live session
process, replay, verify, the in-process simulated session, training from a
recording and (through the session process) the cluster worker — so "replay
reproduces live" holds by construction, not by copies.

The core owns, in order of the data flow:

* **frame acceptance**: wire decoding, stream id, channel count and bin width,
  sequence numbers and timestamps (:class:`~service.wire.protocol.SequenceTracker`),
  and source *epochs* (a restarted source, or a clock that jumped);
* **binning** on the source clock (:class:`~service.loop.binner.Binner`);
* **decode**, **policy** and the **safety guard**, once per bin;
* **calibration**: collecting bins with behaviour, then handing them to the
  shell to fit (:func:`fit_calibration`), and installing the fitted decoder;
* **controls** (arm, disarm, safe, limits, adapt, model swap), each applied at a
  bin boundary and recorded with the bin it precedes;
* the **session state** (:class:`SessionState`).

What happens is told to an injected :class:`CoreSink` as typed calls (publish
a bin, an out-of-band outcome, record an event or a model, the state changed,
calibration data is ready). The live shell turns them into ZeroMQ messages and
log records; verify compares them with a recording; replay counts them.

**Session time.** Decisions use the *session clock*: the source clock of the
first epoch, continued across restarts. When a source restarts (new epoch, its
clock from zero) or its clock jumps, bin indices keep counting and the session
clock keeps going forward from where it was, so nothing downstream (guard,
recording, NWB export, durations) ever sees time go backwards. The guard is
driven to its safe state at once at every such discontinuity, and stimulation
resumes with the new epoch's first decoded bin.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from decoders.base import Decoder, build_decoder
from service.loop.binner import Binner
from service.loop.outcome import outcome_record
from service.session.config import SessionConfig
from service.wire import protocol as P
from stim.guard import Outcome, SafetyGuard
from stim.limits import SafetyLimits
from stim.policies import Policy, build_policy

log = logging.getLogger(__name__)

#: frames whose watermark completes bins (behaviour frames only carry truth)
SPIKE_KINDS = (P.KIND_EVENTS, P.KIND_COUNTS)
#: consecutive frames refused as "timestamp_backwards" after which the source's clock is
#: taken to have been reset (a restart that kept its epoch): a new segment begins
BACKWARDS_RESTART = 20


class SessionState(enum.StrEnum):
    CREATED = "created"
    CALIBRATING = "calibrating"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


class ControlOp(enum.StrEnum):
    ARM = "arm"
    DISARM = "disarm"
    SAFE = "safe"
    LIMITS = "limits"
    ADAPT = "adapt"


@dataclass(frozen=True, slots=True)
class Control:
    """One operator or safety control, validated once, applied at a bin boundary."""

    op: ControlOp
    by: str = ""
    reason: str = ""
    limits: SafetyLimits | None = None
    enabled: bool = True

    def record(self, index: int) -> dict[str, Any]:
        """The recorded form (``bin``: the bin before which it took effect)."""
        ev: dict[str, Any] = {"op": self.op.value}
        if self.op is ControlOp.SAFE:
            ev["reason"] = self.reason
        elif self.op is ControlOp.LIMITS:
            assert self.limits is not None
            ev["limits"] = self.limits.model_dump()
        elif self.op is ControlOp.ADAPT:
            ev["enabled"] = self.enabled
        if self.by:
            ev["by"] = self.by
        ev["bin"] = index
        return ev

    @classmethod
    def from_record(cls, ev: dict[str, Any]) -> Control:
        op = ControlOp(ev["op"])
        return cls(op=op, by=str(ev.get("by", "")), reason=str(ev.get("reason", "")),
                   limits=SafetyLimits(**ev["limits"]) if op is ControlOp.LIMITS else None,
                   enabled=bool(ev.get("enabled", True)))


@dataclass(slots=True)
class BinResult:
    """What happened in one bin. Arrays are views reused for the next bin: copy to keep."""

    index: int = 0
    start_ns: int = 0  # on the session clock
    counts: np.ndarray | None = None
    decoded: np.ndarray | None = None
    truth: np.ndarray | None = None
    outcome: Outcome | None = None
    error: str = ""


class CoreSink:
    """Where the core's actions go. Every method is a no-op here: override what you need."""

    def accepted(self, frames: list[Any], msg: P.Message, recv_ns: int) -> None:
        """A frame passed every check (live: record it)."""

    def rejected(self, frames: list[Any], reason: str, detail: str, recv_ns: int) -> None:
        """A frame was refused (already counted in ``core.rejected``)."""

    def bin(self, r: BinResult, recv_ns: int, in_seq: int) -> None:
        """One bin was decoded and passed the guard: publish, record, audit."""

    def outcome(self, out: Outcome, index: int) -> None:
        """An out-of-band guard decision (disarm, safe, epoch change): publish it now."""

    def event(self, ev: dict[str, Any]) -> None:
        """A control or lifecycle event to record (``bin``: where it took effect)."""

    def model(self, meta: dict[str, Any], state: dict[str, np.ndarray]) -> None:
        """A decoder was installed (``meta["bin"]``: the first bin it decodes)."""

    def state(self, state: SessionState, error: str) -> None:
        """The session state changed."""

    def calibration_ready(self, counts: np.ndarray, truth: np.ndarray,
                          names: list[str]) -> None:
        """Enough calibration bins: fit (:func:`fit_calibration`) and ``core.install`` it."""


class OnBin(CoreSink):
    """A sink that only hands each bin to ``fn`` (offline tools, tests)."""

    def __init__(self, fn: Callable[[BinResult], None]):
        self.fn = fn

    def bin(self, r: BinResult, recv_ns: int, in_seq: int) -> None:
        self.fn(r)


def fit_calibration(cfg: SessionConfig, counts: np.ndarray, truth: np.ndarray,
                    names: list[str]) -> Decoder:
    """The decoder a session config calibrates, fitted on the collected block."""
    wanted = cfg.decoder.outputs
    if wanted:
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ValueError(f"decoder.outputs {missing} are not in the behaviour {names}: "
                             "name outputs the source publishes on its behaviour topic")
        sel = [names.index(n) for n in wanted]
        truth, names = truth[:, sel], list(wanted)
    dec = build_decoder(cfg.decoder.type, **cfg.decoder.params)
    dec.fit(counts, truth, bin_ms=cfg.bin_ms, output_names=list(names))
    return dec


def rebuild_decoder(meta: dict[str, Any], state: dict[str, np.ndarray]) -> Decoder:
    """A decoder from its metadata and state arrays, exactly as verify rebuilds it."""
    cls = Decoder._registry.get(meta.get("type", ""))
    if cls is None:
        raise ValueError(f"unknown decoder type {meta.get('type')!r}; "
                         f"known: {sorted(Decoder._registry)}")
    dec = cls.__new__(cls)
    dec.load_state_dict(state, meta)
    return dec


class SessionCore:
    """One session's loop, sans I/O. See the module docstring."""

    def __init__(self, cfg: SessionConfig, sink: CoreSink | None = None,
                 stage_clock: Callable[[], int] | None = None,
                 observe: Callable[[str, int], None] | None = None):
        self.cfg = cfg
        self.sink = sink or CoreSink()
        self.bin_ns = cfg.bin_ns
        self.binner = Binner(cfg.source.channels, cfg.bin_ns,
                             int(cfg.source.reorder_tolerance_ms * 1e6))
        self.tracker = P.SequenceTracker(int(cfg.source.timestamp_tolerance_ms * 1e6))
        self.policy: Policy | None = build_policy(cfg.stim.policy) if cfg.stim.policy else None
        self.guard = SafetyGuard(cfg.stim.limits, cfg.stim.modality)
        self.decoder: Decoder | None = None
        self.adapt = cfg.decoder.adapt
        self.state = SessionState.CREATED
        self.error = ""
        self.degraded = False  # the decoder or policy failed at least once: stim went safe
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.epoch_segments = 1
        self.last_outcome: Outcome | None = None
        self.truth: np.ndarray | None = None
        self.truth_t_ns = -1
        self.truth_names: list[str] = []
        self.schedule: dict[int, list[Control | tuple[dict[str, Any], dict]]] = {}
        self.calibration_needed = max(1, int(round(cfg.decoder.calibration_s * 1000
                                                   / cfg.bin_ms)))
        self._cal_counts: list[np.ndarray] = []
        self._cal_truth: list[np.ndarray] = []
        self._cal_handed = False
        self._base_ns: int | None = None  # session clock = base + index * bin
        self._backwards_run = 0
        self._adapt_cols: np.ndarray | None = None  # behaviour columns, decoder's order
        self._clock_jumps_seen = 0
        self._result = BinResult()
        self._stream = cfg.source.stream
        self._channels = cfg.source.channels
        self._now = stage_clock
        self._observe = observe

    # ================================================================== time
    def session_ns(self, index: int | None = None) -> int:
        """The session clock at the start of bin ``index`` (default: the next bin)."""
        k = self.binner.next_index if index is None else index
        return (self._base_ns or 0) + k * self.bin_ns

    def source_offset_ns(self) -> int:
        """Session clock minus the current segment's source clock (0 in the first segment;
        0 before any frame anchored the bin grid)."""
        b = self.binner
        if b.origin_ns is None:
            return 0
        return (self._base_ns if self._base_ns is not None else b.origin_ns) - b.origin_ns

    @property
    def next_index(self) -> int:
        return self.binner.next_index

    # ================================================================== lifecycle
    def begin(self, decoder: Decoder | None = None) -> None:
        """Start: with a decoder (a stored model), or calibrating."""
        if decoder is not None:
            self.install(decoder)
        else:
            self._set_state(SessionState.CALIBRATING)

    def stop(self, reason: str = "stop") -> Outcome:
        """Disarm and end (state stopped, unless the session already failed)."""
        out = self.guard.disarm(self.session_ns())
        out.reasons.append(reason)
        self._out_of_band(out)
        # by the session itself, as it stops (the stop's own event names who asked)
        self.sink.event({"op": "disarm", "bin": self.next_index, "reason": reason,
                         "by": "session"})
        if self.state is not SessionState.FAILED:
            self._set_state(SessionState.STOPPED)
        return out

    def fail(self, reason: str) -> Outcome:
        """Drive stimulation safe and end the session as failed."""
        out = self.control(Control(ControlOp.SAFE, reason=reason))
        self._set_state(SessionState.FAILED, reason)
        assert out is not None
        return out

    def _set_state(self, state: SessionState, error: str = "") -> None:
        self.state = state
        if error:
            self.error = error
        self.sink.event({"state": state.value, "error": error, "bin": self.next_index})
        self.sink.state(state, error)

    # ================================================================== controls
    def control(self, c: Control) -> Outcome | None:
        """Apply ``c`` now, at the boundary before bin ``next_index``, and record it there.

        The loop is single-threaded, so "now" is always between two bins; the
        recording names that bin, and verify applies it at the same boundary.
        """
        out = self._apply(c, self.next_index)
        self.sink.event(c.record(self.next_index))
        return out

    def _apply(self, c: Control, index: int) -> Outcome | None:
        """Apply ``c`` at the boundary before bin ``index``."""
        t = self.session_ns(index)
        out: Outcome | None = None
        if c.op is ControlOp.ARM:
            self.guard.arm()
        elif c.op is ControlOp.DISARM:
            out = self.guard.disarm(t)
        elif c.op is ControlOp.SAFE:
            out = self.guard.safe_state(t, c.reason or "safe state")
        elif c.op is ControlOp.LIMITS:
            assert c.limits is not None
            self.guard.set_limits(c.limits)
        elif c.op is ControlOp.ADAPT:
            self.adapt = c.enabled
            self._set_adaptation()
        if out is not None:
            self._out_of_band(out, index)
        return out

    def install(self, decoder: Decoder) -> None:
        """Install ``decoder`` from the next bin on (calibration result or model swap).

        The installed object is rebuilt from the decoder's state, exactly as verify
        rebuilds it from the recording, so live and replay decode with the same object.
        Raises ValueError when the decoder does not fit the source or the policy.
        """
        if decoder.n_inputs != self._channels:
            raise ValueError(f"the model expects {decoder.n_inputs} channels, the source has "
                             f"{self._channels}: pick a model trained on this array")
        meta, state = decoder.metadata(), decoder.state_dict()
        dec = rebuild_decoder(meta, state)
        if self.policy is not None:
            self.policy.bind(list(dec.output_names) or [f"x{i}" for i in range(dec.n_outputs)])
        self.sink.model(meta | {"bin": self.next_index}, state)
        self._use(dec)

    def _use(self, dec: Decoder) -> None:
        self.decoder = dec
        self._set_adaptation()
        self._cal_counts.clear()
        self._cal_truth.clear()
        if self.state is not SessionState.RUNNING:
            self._set_state(SessionState.RUNNING)

    def _set_adaptation(self) -> None:
        """Adaptation on/off at the decoder, with the behaviour columns it learns from."""
        dec = self.decoder
        if dec is None:
            return
        dec.set_adaptation(self.adapt)
        names = list(dec.output_names)
        if self.truth_names and names and all(n in self.truth_names for n in names):
            self._adapt_cols = np.array([self.truth_names.index(n) for n in names])
        else:  # unnamed: the behaviour's columns in order, when the count matches
            self._adapt_cols = None

    def _apply_scheduled(self, k: int) -> None:
        """Verify/simulation: what the recording says happened before bin ``k``."""
        for item in self.schedule.pop(k, ()):
            if isinstance(item, Control):
                self._apply(item, k)
            else:  # a recorded model install
                meta, state = item
                dec = rebuild_decoder(meta, state)
                if self.policy is not None:
                    self.policy.bind(list(dec.output_names))
                self.sink.model(meta, state)
                self._use(dec)

    # ================================================================== frames
    def accept(self, frames: list[Any], recv_ns: int = 0) -> None:
        """One received multipart frame: check, record, bin, and run every completed bin."""
        try:
            msg = P.decode(frames)
            h = msg.header
            if self._stream is not None and h.stream != self._stream and \
                    h.stream != f"{self._stream}.behavior":
                raise P.ProtocolError("wrong_stream", f"stream {h.stream!r} is not "
                                                      f"{self._stream!r}")
            if h.kind in SPIKE_KINDS:
                self._check_spikes(h)
            elif h.kind != P.KIND_BEHAVIOR:
                raise P.ProtocolError("unknown_kind", f"{h.kind} is not an input kind")
        except P.ProtocolError as exc:
            self._reject(frames, exc, recv_ns)
            return
        self.sink.accepted(frames, msg, recv_ns)
        if h.kind == P.KIND_BEHAVIOR:
            if not self.truth_names:
                self.truth_names = list(h.extra.get("names") or
                                        [f"x{i}" for i in range(h.channels)])
                self._set_adaptation()  # the names map behaviour onto decoder outputs
            self.counters["behavior_frames"] += 1
            if msg.values is None or msg.values.size == 0:
                # An empty behaviour frame: "no behaviour from here on" (a gap, outside the
                # trials): the bins that follow get no truth, so they are neither calibrated
                # nor adapted on, and a stale value is never taken for the truth.
                self.truth, self.truth_t_ns = None, -1
                self.counters["behavior_gaps"] += 1
                return
            self.truth = msg.values
            self.truth_t_ns = h.t_ns
            return
        self.counters["frames"] += 1
        if h.kind == P.KIND_EVENTS:
            self.counters["events"] += h.n
            self.binner.add_events(*msg.events(), h.t_ns)
            watermark = h.t_ns
        else:
            self.binner.add_counts(h.t_ns, msg.array())
            watermark = h.t_ns + h.bin_ns
        self._run_bins(watermark, recv_ns, h.seq)

    def _check_spikes(self, h: P.Header) -> None:
        if h.channels != self._channels:
            raise P.ProtocolError("channel_mismatch", f"frame has {h.channels} channels, "
                                                      f"session expects {self._channels}")
        if h.kind == P.KIND_COUNTS and h.bin_ns > self.bin_ns:
            raise P.ProtocolError("bin_mismatch", f"counts bin {h.bin_ns} ns is wider than the "
                                                  f"session bin {self.bin_ns} ns")
        tr = self.tracker
        if tr.is_restart(h):
            self.new_segment(f"source restarted (epoch {tr.epoch} -> {h.epoch})", h.epoch,
                             restart=True)
        try:
            missed = tr.check(h)
        except P.ProtocolError as exc:
            if exc.reason == "timestamp_backwards":
                self._backwards_run += 1
                if self._backwards_run >= BACKWARDS_RESTART:
                    # The source's clock was reset without a new epoch: follow it.
                    self.new_segment(f"source clock went back {self._backwards_run} frames "
                                     "in a row: taken as a restart", h.epoch, restart=True)
                    missed = tr.check(h)
                    self._backwards_run = 0
                    self._count_missed(missed)
                    return
            raise
        self._backwards_run = 0
        self._count_missed(missed)

    def _count_missed(self, missed: int) -> None:
        if missed:
            self.counters["gaps"] += 1
            self.counters["missing_frames"] += missed

    def _reject(self, frames: list[Any], exc: P.ProtocolError, recv_ns: int) -> None:
        self.rejected[exc.reason] += 1
        n = self.rejected[exc.reason]
        if n <= 10 or n % 1000 == 0:
            log.warning("rejected frame (%s, %d so far): %s", exc.reason, n, exc)
        self.sink.rejected(frames, exc.reason, str(exc), recv_ns)

    def new_segment(self, reason: str, epoch: int = 0, restart: bool = False) -> None:
        """A discontinuity of the source clock: safe at once, then a fresh bin grid.

        Bin indices and the session clock continue; the next frame anchors the grid.
        """
        if restart:
            self.tracker.reset(epoch)
            self.counters["source_restarts"] += 1
            self.counters["gaps"] += 1
        else:
            self.counters["clock_jumps"] += 1
        self.binner.resync()
        self._clock_jumps_seen = self.binner.clock_jumps
        self.truth, self.truth_t_ns = None, -1
        self.epoch_segments += 1
        if self.state is SessionState.CALIBRATING and not self._cal_handed and \
                self._cal_counts:
            # A new source (or a stranger on the old endpoint): never fit one decoder on
            # two sources' data. Calibration starts over, counted and visible.
            self._cal_counts.clear()
            self._cal_truth.clear()
            self.counters["calibration_restarts"] += 1
        log.warning("new source segment at bin %d: %s", self.next_index, reason)
        # Not a recorded control: verify meets the same frames and does the same.
        self.sink.event({"segment": self.epoch_segments, "epoch": epoch, "reason": reason,
                         "bin": self.next_index})
        if self._base_ns is not None:
            self._out_of_band(self.guard.safe_state(self.session_ns(), reason))

    # ================================================================== bins
    def _run_bins(self, watermark_ns: int, recv_ns: int, in_seq: int) -> None:
        b = self.binner
        now = self._now
        t0 = now() if now is not None else 0
        for index, _start, counts in b.ready(watermark_ns):
            if b.clock_jumps != self._clock_jumps_seen:
                self._jumped()
            if self._base_ns is None:
                self._base_ns = b.origin_ns  # the session clock is the first epoch's clock
            if self.schedule:
                self._apply_scheduled(index)
            r = self._step(index, counts, b.start_of(index) + self.bin_ns)
            self.sink.bin(r, recv_ns, in_seq)
            if now is not None and self._observe is not None:
                t1 = now()
                self._observe("bin", t1 - t0)  # the whole bin: decode to audit
                t0 = t1
        if b.clock_jumps != self._clock_jumps_seen:
            self._jumped()

    def _jumped(self) -> None:
        """The binner re-anchored on a clock jump inside an epoch."""
        self._clock_jumps_seen = self.binner.clock_jumps
        self.counters["clock_jumps"] += 1
        self.epoch_segments += 1
        self.truth, self.truth_t_ns = None, -1
        reason = "source clock jumped: new segment"
        log.warning("%s at bin %d", reason, self.next_index)
        self.sink.event({"segment": self.epoch_segments, "reason": reason,
                         "bin": self.next_index})
        if self._base_ns is not None:
            self._out_of_band(self.guard.safe_state(self.session_ns(), reason))

    def _step(self, index: int, counts: np.ndarray, src_end_ns: int) -> BinResult:
        r = self._result
        start = self.session_ns(index)
        end = start + self.bin_ns
        r.index, r.start_ns, r.counts, r.error = index, start, counts, ""
        r.truth = self.truth if 0 <= self.truth_t_ns <= src_end_ns else None
        r.decoded = self._decode(counts, r) if self.decoder is not None else None
        if r.decoded is None:
            r.outcome = self.guard.safe_state(end, r.error or self._why_no_decoder())
        else:
            request = None
            if self.policy is not None:
                try:
                    request = self.policy.step(r.decoded, end)
                except Exception as exc:  # a policy bug must not reach the stimulator
                    r.error = f"policy error: {type(exc).__name__}: {exc}"
            if r.error:
                r.outcome = self.guard.safe_state(end, r.error)
            else:
                r.outcome = self.guard.process(request, end)
        self.last_outcome = r.outcome
        c = self.counters
        c["bins"] += 1
        c["stim_" + r.outcome.status] += 1
        if r.error:
            c["decoder_errors"] += 1
            if self.state is SessionState.RUNNING:
                self.error = r.error  # kept until an operator restarts the session
                self.degraded = True
                c["degraded_bins"] += 1
        if self.state is SessionState.CALIBRATING and r.truth is not None:
            self._collect(r)
        return r

    def _why_no_decoder(self) -> str:
        if self.state is SessionState.CALIBRATING:
            return "calibrating"
        return "no decoder"

    def _decode(self, counts: np.ndarray, r: BinResult) -> np.ndarray | None:
        dec = self.decoder
        assert dec is not None
        now = self._now
        try:
            if now is not None and self._observe is not None:
                t0 = now()
                out = dec.step(counts)
                self._observe("decode", now() - t0)  # the decoder's step alone
            else:
                out = dec.step(counts)
            if not np.isfinite(out).all():
                raise FloatingPointError("decoder output is not finite")
            if self.adapt and r.truth is not None:
                cols = self._adapt_cols
                dec.adapt(r.truth if cols is None else r.truth[cols])
            return out
        except Exception as exc:  # a faulty decoder drives the stimulator safe, not the loop down
            r.error = f"decoder error: {type(exc).__name__}: {exc}"
            return None

    def _out_of_band(self, out: Outcome, index: int | None = None) -> None:
        self.last_outcome = out
        self.counters["stim_" + out.status] += 1
        self.sink.outcome(out, self.next_index if index is None else index)

    # ================================================================== calibration
    def _collect(self, r: BinResult) -> None:
        if self._cal_handed or r.counts is None or r.truth is None:
            return
        self._cal_counts.append(r.counts.copy())
        self._cal_truth.append(np.array(r.truth, dtype=float))
        if len(self._cal_counts) >= self.calibration_needed:
            self._cal_handed = True
            names = self.truth_names or [f"x{i}" for i in range(len(self._cal_truth[0]))]
            self.sink.calibration_ready(np.asarray(self._cal_counts),
                                        np.asarray(self._cal_truth), names)

    def calibration_failed(self, error: str) -> None:
        self.fail(f"calibration failed: {error}")

    # ================================================================== status
    def stim_status(self) -> dict[str, Any]:
        """Why stimulation is, or is not, going out — in one place for the status."""
        out = self.last_outcome
        if not self.guard.armed:
            why = "disarmed: arm the session (stim scope) to stimulate"
        elif self.state is SessionState.CALIBRATING:
            why = (f"calibrating: {len(self._cal_counts)} of {self.calibration_needed} bins "
                   "with behaviour collected")
            waiting = self.calibration_waiting()
            if waiting:
                why += f"; {waiting}"
        elif out is not None and out.status in ("refused", "safe"):
            why = "; ".join(out.reasons) or out.status
        else:
            why = ""
        return {"armed": self.guard.armed,
                "last_status": out.status if out is not None else None,
                "why_not_stimulating": why}

    def calibration_waiting(self) -> str:
        """Why calibration is not progressing ("" when it is, or is not running)."""
        if self.state is not SessionState.CALIBRATING or self._cal_counts:
            return ""
        c = self.counters
        seconds = c["bins"] * self.cfg.bin_ms / 1000
        if c["behavior_frames"] == 0:
            return (f"no behaviour frames in {seconds:.0f} s of input on topic "
                    f"{self.cfg.source.behavior_topic!r}: calibration needs them (replay an "
                    "NWB file with --behavior NAME), or start the session with a stored model "
                    "(decoder.model)")
        if c["behavior_frames"] == c["behavior_gaps"]:
            return (f"{c['behavior_frames']} behaviour frames in {seconds:.0f} s, all empty "
                    "(no behaviour): no bin to calibrate on yet")
        return ""

    def calibration_status(self) -> dict[str, Any]:
        return {"bins": len(self._cal_counts), "needed": self.calibration_needed,
                "behavior_frames": self.counters["behavior_frames"],
                "restarts": self.counters["calibration_restarts"],
                "waiting": self.calibration_waiting()}


__all__ = ["BinResult", "Control", "ControlOp", "CoreSink", "OnBin", "SessionCore", "SessionState",
           "SPIKE_KINDS", "fit_calibration", "outcome_record", "rebuild_decoder"]
