"""One closed loop without sockets: binner -> decoder -> policy -> safety guard.

The live session process and offline replay/verify both drive this same
object, which is why replay reproduces a live session bit for bit: every
decision depends only on the frames (source clock) and on control events
applied at recorded bin boundaries, never on the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from decoders.base import Decoder
from stim.guard import Outcome, SafetyGuard
from stim.limits import SafetyLimits
from stim.policies import Policy

from .binner import Binner
from .protocol import KIND_BEHAVIOR, KIND_COUNTS, KIND_EVENTS, Message, ProtocolError


@dataclass(slots=True)
class BinResult:
    """What happened in one bin. Arrays are views reused for the next bin: copy to keep."""

    index: int = 0
    start_ns: int = 0
    counts: np.ndarray | None = None
    decoded: np.ndarray | None = None
    truth: np.ndarray | None = None
    outcome: Outcome | None = None
    controls: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


class LoopPipeline:
    def __init__(self, binner: Binner, decoder: Decoder | None, policy: Policy | None,
                 guard: SafetyGuard, adapt: bool = False):
        self.binner = binner
        self.decoder = decoder
        self.policy = policy
        self.guard = guard
        self.adapt = adapt
        self.truth: np.ndarray | None = None
        self.truth_t_ns = -1
        self._pending: list[dict[str, Any]] = []
        self._result = BinResult()
        self.decoder_errors = 0
        self.last_error = ""

    # ------------------------------------------------------------------ control
    def control(self, event: dict[str, Any]) -> None:
        """Queue ``{"op": "arm"|"disarm"|"safe"|"limits"|"adapt", ...}`` for the next bin.

        Applying controls only at bin boundaries is what lets a replay apply
        them at exactly the same point as the live run did.
        """
        self._pending.append(dict(event))

    def _apply(self, ev: dict[str, Any], t_ns: int) -> Outcome | None:
        op = ev.get("op")
        if op == "arm":
            self.guard.arm()
        elif op == "disarm":
            return self.guard.disarm(t_ns)
        elif op == "safe":
            return self.guard.safe_state(t_ns, str(ev.get("reason", "safe state")))
        elif op == "limits":
            self.guard.set_limits(SafetyLimits(**ev["limits"]))
        elif op == "adapt":
            self.adapt = bool(ev.get("enabled", True))
        return None

    # ------------------------------------------------------------------ input
    def check(self, msg: Message) -> None:
        """Refuse spike frames this session cannot bin (raises ProtocolError)."""
        h = msg.header
        if h.channels != self.binner.channels:
            raise ProtocolError("channel_mismatch", f"frame has {h.channels} channels, "
                                                    f"session expects {self.binner.channels}")
        if h.kind == KIND_COUNTS and h.bin_ns > self.binner.bin_ns:
            raise ProtocolError("bin_mismatch", f"counts bin {h.bin_ns} ns is wider than the "
                                                f"session bin {self.binner.bin_ns} ns")

    def add(self, msg: Message) -> None:
        """Feed one validated frame (events, counts or behaviour)."""
        h = msg.header
        if h.kind == KIND_EVENTS:
            self.binner.add_events(msg.ids, msg.times, h.t_ns)
        elif h.kind == KIND_COUNTS:
            self.binner.add_counts(h.t_ns, msg.values)
        elif h.kind == KIND_BEHAVIOR:
            self.truth = msg.values
            self.truth_t_ns = h.t_ns

    @staticmethod
    def watermark(msg: Message) -> int:
        h = msg.header
        return h.t_ns + h.bin_ns if h.kind == KIND_COUNTS else h.t_ns

    # ------------------------------------------------------------------ bins
    def ready(self, watermark_ns: int) -> Iterator[BinResult]:
        """Decode, ask the policy and pass the guard for every completed bin."""
        r = self._result
        for index, start_ns, counts in self.binner.ready(watermark_ns):
            end_ns = start_ns + self.binner.bin_ns
            r.index, r.start_ns, r.counts, r.error = index, start_ns, counts, ""
            r.controls = self._pending
            safe_outcome = None
            if self._pending:
                for ev in self._pending:
                    safe_outcome = self._apply(ev, end_ns) or safe_outcome
                self._pending = []
            r.truth = self.truth if 0 <= self.truth_t_ns <= end_ns else None
            r.decoded = None
            if self.decoder is not None:
                r.decoded = self._decode(counts, r)
            if r.decoded is None:
                r.outcome = safe_outcome or self.guard.safe_state(end_ns, r.error or "no decoder")
            else:
                request = None
                if self.policy is not None:
                    try:
                        request = self.policy.step(r.decoded, end_ns)
                    except Exception as exc:  # a policy bug must not reach the stimulator
                        r.error = f"policy error: {type(exc).__name__}: {exc}"
                        self.last_error = r.error
                if r.error:
                    r.outcome = self.guard.safe_state(end_ns, r.error)
                else:
                    r.outcome = self.guard.process(request, end_ns)
            yield r

    def _decode(self, counts: np.ndarray, r: BinResult) -> np.ndarray | None:
        try:
            out = self.decoder.step(counts)
            if not np.isfinite(out).all():
                raise FloatingPointError("decoder output is not finite")
            if self.adapt and r.truth is not None:
                self.decoder.adapt(r.truth)
            return out
        except Exception as exc:  # a faulty decoder drives the stimulator safe, not the loop down
            self.decoder_errors += 1
            r.error = f"decoder error: {type(exc).__name__}: {exc}"
            self.last_error = r.error
            return None


def build_pipeline(config: Any, decoder: Decoder | None) -> LoopPipeline:
    """The pipeline a :class:`service.config.SessionConfig` describes, around ``decoder``.

    Live sessions and replay/verify both call this, so they build identical loops.
    """
    from stim.policies import build_policy

    binner = Binner(config.source.channels, config.bin_ns,
                    int(config.source.reorder_tolerance_ms * 1e6))
    policy = build_policy(config.stim.policy) if config.stim.policy else None
    guard = SafetyGuard(config.stim.limits, config.stim.modality)
    return LoopPipeline(binner, decoder, policy, guard, adapt=config.decoder.adapt)
