"""Lab Streaming Layer bridges: LSL streams into a session, session outputs back out to LSL.

* :class:`LslSource` pulls an LSL spike stream (and optionally a behaviour
  stream) and republishes it on the wire protocol, so a session can use any
  LSL-capable acquisition system as its source. A regular-rate stream of N
  channels is taken as spike counts per sample interval (``spikes.counts``); an
  irregular one-channel stream as one spike per sample whose value is the unit id
  (``spikes.events``). Times stay on the LSL clock (after LSL's clock-offset
  correction), so the session's source clock is the lab's LSL clock.
* :class:`LslSink` subscribes to a session's output and offers two LSL outlets a
  recorder such as LabRecorder can record next to the raw data: the decoded
  vector per bin, and a JSON marker each time the stimulation outcome changes.

Needs the ``lsl`` extra (``pylsl``, whose wheel ships liblsl). Discovery follows
liblsl's own configuration (``LSLAPICFG``); tests keep it on the loopback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from service.wire import protocol as P

from .publisher import SpikePublisher

LOCAL_CLOCK_NOTE = "local"  # outlet timestamps: receive time on this machine's LSL clock
SOURCE_CLOCK_NOTE = "source"  # outlet timestamps: the bin's source time (an LSL-fed session)


def _pylsl():
    try:
        import pylsl
    except ImportError as exc:  # the extra is optional
        raise RuntimeError("the LSL bridge needs pylsl: pip install -e '.[lsl]'") from exc
    return pylsl


def resolve(name: str, timeout_s: float) -> Any:
    """The first LSL stream called ``name`` (a StreamInfo), or a clear error."""
    pylsl = _pylsl()
    found = pylsl.resolve_byprop("name", name, 1, timeout_s)
    if not found:
        raise RuntimeError(f"no LSL stream named {name!r} found within {timeout_s:g} s "
                           "(same LSL SessionID and discovery scope?)")
    return found[0]


@dataclass
class SourceStats:
    spike_samples: int = 0
    behavior_samples: int = 0
    frames: int = 0


class LslSource:
    """LSL inlet(s) -> wire-protocol PUB (what a session's ``source.endpoint`` points at)."""

    def __init__(self, spikes: str, endpoint: str, behavior: str | None = None,
                 channels: int | None = None, timeout_s: float = 10.0, stream: str = "lsl"):
        pylsl = _pylsl()
        flags = pylsl.proc_clocksync | pylsl.proc_monotonize
        info = resolve(spikes, timeout_s)
        self.events = info.nominal_srate() == 0 and info.channel_count() == 1
        if self.events and not channels:
            raise ValueError(f"{spikes!r} is an event stream (unit ids): give --channels")
        self.channels = int(channels or info.channel_count())
        self.bin_ns = 0 if self.events else int(round(1e9 / info.nominal_srate()))
        self.spikes = pylsl.StreamInlet(info, max_buflen=30, processing_flags=flags)
        self.behavior = None
        self.names: list[str] = []
        if behavior:
            binfo = resolve(behavior, timeout_s)
            self.behavior = pylsl.StreamInlet(binfo, max_buflen=30, processing_flags=flags)
            self.names = _channel_labels(self.behavior.info()) or [
                f"x{i}" for i in range(binfo.channel_count())]
        self.pub = SpikePublisher(endpoint, self.channels, stream=stream)
        self.endpoint = self.pub.endpoint
        self.stats = SourceStats()
        self._clock = pylsl.local_clock

    def step(self, timeout_s: float = 0.05) -> int:
        """Forward what has arrived; behaviour first (it is the truth for the bins it precedes)."""
        sent = 0
        if self.behavior is not None:
            values, stamps = self.behavior.pull_chunk(timeout=0.0)
            for v, t in zip(values, stamps, strict=True):
                self.pub.send_behavior(v, _ns(t), self.names)
                self.stats.behavior_samples += 1
        samples, stamps = self.spikes.pull_chunk(timeout=timeout_s)
        if self.events:
            # Watermark: spikes up to now on the LSL clock have been pulled.
            wm = _ns(self._clock() + self.spikes.time_correction(timeout=1.0))
            if stamps:
                ids = np.asarray(samples, np.int64).reshape(-1)
                ok = (ids >= 0) & (ids < self.channels)
                times = np.array([_ns(t) for t in stamps], np.int64)
                wm = max(wm, int(times.max()))
                self.pub.send_events(ids[ok].astype("<u4" if self.channels > 65535 else "<u2"),
                                     times[ok], wm)
                self.stats.spike_samples += len(stamps)
                sent += 1
        else:
            for counts, t in zip(samples, stamps, strict=True):
                c = np.asarray(counts, np.float64)
                self.pub.send_counts(np.maximum(np.round(c), 0).astype("<u2"), _ns(t),
                                     self.bin_ns)
                self.stats.spike_samples += 1
                sent += 1
        self.stats.frames += sent
        return sent

    def run(self, should_stop: Callable[[], bool]) -> SourceStats:
        while not should_stop():
            self.step()
        return self.stats

    def close(self) -> None:
        self.spikes.close_stream()
        if self.behavior is not None:
            self.behavior.close_stream()
        self.pub.close()


@dataclass
class SinkStats:
    decoded: int = 0
    markers: int = 0


class LslSink:
    """A session's output PUB -> LSL outlets ``<prefix>-decoded`` and ``<prefix>-stim``."""

    def __init__(self, output_endpoint: str, prefix: str, n_outputs: int,
                 output_names: list[str] | None = None, bin_ms: float = 0.0,
                 timestamps: str = LOCAL_CLOCK_NOTE):
        if timestamps not in (LOCAL_CLOCK_NOTE, SOURCE_CLOCK_NOTE):
            raise ValueError("timestamps must be 'local' or 'source'")
        pylsl = _pylsl()
        self.timestamps = timestamps
        self._clock = pylsl.local_clock
        rate = 1000.0 / bin_ms if bin_ms > 0 else pylsl.IRREGULAR_RATE
        dinfo = pylsl.StreamInfo(f"{prefix}-decoded", "Decoded", n_outputs, rate,
                                 pylsl.cf_double64, f"{prefix}-decoded")
        chans = dinfo.desc().append_child("channels")
        for name in output_names or [f"out{i}" for i in range(n_outputs)]:
            chans.append_child("channel").append_child_value("label", name)
        dinfo.desc().append_child_value("timestamps", timestamps)
        sinfo = pylsl.StreamInfo(f"{prefix}-stim", "Markers", 1, pylsl.IRREGULAR_RATE,
                                 pylsl.cf_string, f"{prefix}-stim")
        sinfo.desc().append_child_value("timestamps", timestamps)
        self.decoded = pylsl.StreamOutlet(dinfo)
        self.stim = pylsl.StreamOutlet(sinfo)
        self.sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for topic in (b"decoded", b"stim"):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.connect(output_endpoint)
        self._last_marker: tuple | None = None
        self.stats = SinkStats()

    def _stamp(self, t_ns: int) -> float:
        return t_ns / 1e9 if self.timestamps == SOURCE_CLOCK_NOTE else self._clock()

    def step(self, timeout_ms: int = 50) -> None:
        if not self.sub.poll(timeout_ms):
            return
        while True:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = P.decode(frames)
            except P.ProtocolError:
                continue
            h = msg.header
            if h.kind == P.KIND_DECODED:
                self.decoded.push_sample(np.asarray(msg.values, np.float64).tolist(),
                                         self._stamp(h.t_ns))
                self.stats.decoded += 1
            elif h.kind == P.KIND_STIM:
                self._marker(h)

    def _marker(self, h: P.Header) -> None:
        """One marker per change of outcome (a session sends one per bin, mostly "hold")."""
        x = h.extra
        key = (x.get("status"), json.dumps(x.get("cmd"), sort_keys=True),
               tuple(x.get("reasons") or ()), x.get("armed"))
        if x.get("status") == "hold" or key == self._last_marker:
            return
        self._last_marker = key
        self.stim.push_sample([json.dumps({k: x.get(k) for k in
                                           ("status", "cmd", "reasons", "bin", "armed")})],
                              self._stamp(h.t_ns))
        self.stats.markers += 1

    def run(self, should_stop: Callable[[], bool]) -> SinkStats:
        while not should_stop():
            self.step()
        return self.stats

    def close(self) -> None:
        self.sub.close(0)
        del self.decoded, self.stim  # liblsl withdraws the outlets when they are destroyed


def _ns(t_s: float) -> int:
    return int(round(t_s * 1e9))


def _channel_labels(info: Any) -> list[str]:
    labels = []
    ch = info.desc().child("channels").child("channel")
    while not ch.empty():
        labels.append(ch.child_value("label"))
        ch = ch.next_sibling()
    return [lab for lab in labels if lab]
