"""A one-page figure of a recorded session: raster, decoded vs true, stimulation, arrival delays.

Everything comes from the session log (``service.recording.recorder.read_log``): spikes and
behaviour from INPUT frames, decoded outputs and stimulation outcomes from BIN
records, arm/disarm from EVENT records. The log holds no processing times, so
the last panel shows what it can measure honestly: how late each spike frame
arrived relative to the earliest one (receive clock minus source clock). That is
transport and source-pacing jitter, not the loop's end-to-end latency, and the
figure says so.
"""

from __future__ import annotations

import base64
import html
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.recording.recorder import BinRecord, InputFrames, RecordType, read_log
from service.wire import protocol as P

Progress = Callable[[int, int], None]
FLAGGED = ("clamped", "refused", "safe")  # outcome statuses marked on the timeline


@dataclass
class SessionData:
    """What the figure needs, as arrays on the source clock (seconds from the first bin)."""

    path: Path
    session_id: str = ""
    decoder: str = ""
    bin_ms: float = 0.0
    channels: int = 0
    clean: bool = False
    output_names: list[str] = field(default_factory=list)
    truth_names: list[str] = field(default_factory=list)
    spike_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    spike_ch: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bin_t: np.ndarray = field(default_factory=lambda: np.zeros(0))
    decoded: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # NaN rows: none
    truth: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # per bin, NaN: none
    amplitude: np.ndarray = field(default_factory=lambda: np.zeros(0))  # mA (DBS) or mW (light)
    amplitude_unit: str = "mA"
    status: np.ndarray = field(default_factory=lambda: np.zeros(0, "U8"))
    armed_spans: list[tuple[float, float]] = field(default_factory=list)
    arrival_delay_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    arrival_note: str = ""  # why arrival delays are not shown, when they are not

    @property
    def duration_s(self) -> float:
        return float(self.bin_t[-1] - self.bin_t[0]) if self.bin_t.size > 1 else 0.0

    def r2(self) -> dict[str, float]:
        """R² of each decoded output against its truth, over bins that have both."""
        out = {}
        for i, name in enumerate(self.output_names):
            if i >= self.truth.shape[1] or i >= self.decoded.shape[1]:
                continue
            d, t = self.decoded[:, i], self.truth[:, i]
            ok = np.isfinite(d) & np.isfinite(t)
            ss = ((t[ok] - t[ok].mean()) ** 2).sum() if ok.sum() > 2 else 0.0
            if ss > 0:
                out[name] = float(1 - ((t[ok] - d[ok]) ** 2).sum() / ss)
        return out


def load(path: str | Path, raster_s: float = 10.0,
         progress: Progress | None = None) -> SessionData:
    """Read a session log; only the last ``raster_s`` seconds of spikes are kept."""
    path = Path(path)
    data = SessionData(path)
    size = max(path.stat().st_size, 1)
    spikes: deque[tuple[int, np.ndarray, np.ndarray]] = deque()
    newest = None
    beh_t: list[int] = []
    beh_v: list[np.ndarray] = []
    bins: list[BinRecord] = []
    controls: list[tuple[int, str]] = []
    delays: list[tuple[int, int]] = []
    reader = read_log(path, {RecordType.CONFIG, RecordType.MODEL, RecordType.INPUT,
                             RecordType.BIN, RecordType.EVENT})
    for n, rec in enumerate(reader):
        if progress is not None and n % 2000 == 0:
            progress(rec.offset, size)
        v = rec.value
        if rec.type == RecordType.INPUT:
            newest = _add_input(v, spikes, beh_t, beh_v, delays, data, newest, raster_s)
        elif rec.type == RecordType.BIN:
            bins.append(v)
        elif rec.type == RecordType.CONFIG:
            cfg = v.get("config", {})
            cfg = cfg.get("config", cfg)  # the session process wraps it with its id
            data.session_id = v.get("session_id") or v.get("config", {}).get("session_id", "")
            data.bin_ms = float(cfg.get("bin_ms", 0.0))
            data.channels = int(cfg.get("source", {}).get("channels", 0))
            data.amplitude_unit = "mW" if cfg.get("stim", {}).get("modality") == "opto" else "mA"
        elif rec.type == RecordType.MODEL:
            meta = v[0]
            data.decoder = str(meta.get("type", ""))
            data.output_names = list(meta.get("output_names") or [])
        elif rec.type == RecordType.EVENT and v.get("op") in ("arm", "disarm"):
            controls.append((int(v.get("bin", 0)), v["op"]))  # "safe" keeps the guard armed
    if progress is not None:
        progress(size, size)
    data.clean = reader.clean
    _fill_bins(data, bins, beh_t, beh_v, controls)
    if spikes:
        t0 = bins[0].start_ns if bins else 0
        data.spike_t = (np.concatenate([t for _, t, _ in spikes]) - t0) / 1e9
        data.spike_ch = np.concatenate([c for _, _, c in spikes])
    data.arrival_delay_ms, data.arrival_note = _arrival_delays(delays, data.duration_s)
    return data


def _arrival_delays(delays: list[tuple[int, int]], duration_s: float) -> tuple[np.ndarray, str]:
    """Receive minus source time per spike frame, minimum subtracted; empty unless real time.

    A replayed or as-fast-as-possible source runs its clock faster than the receiver's, so
    the difference grows with time and says nothing about delivery: omit it then.
    """
    if len(delays) < 10:
        return np.zeros(0), "too few frames to show arrival delays"
    a = np.asarray(delays, np.int64)
    recv, src = a[:, 0], a[:, 1]
    rate = (src[-1] - src[0]) / max(recv[-1] - recv[0], 1)
    if not 0.95 <= rate <= 1.05:
        return np.zeros(0), (f"not shown: the source ran at {rate:.3g}x real time, so receive "
                             "minus source time measures the pacing, not delivery")
    d = recv - src
    return (d - d.min()) / 1e6, ""



def _add_input(v: InputFrames, spikes: deque, beh_t: list[int], beh_v: list[np.ndarray],
               delays: list[tuple[int, int]], data: SessionData, newest: int | None,
               raster_s: float) -> int | None:
    try:
        msg = P.decode(v.frames)
    except P.ProtocolError:
        return newest
    h = msg.header
    if h.kind == P.KIND_BEHAVIOR:
        beh_t.append(h.t_ns)
        beh_v.append(np.array(msg.values, float))
        if not data.truth_names and h.extra.get("names"):
            data.truth_names = list(h.extra["names"])
        return newest
    if h.kind == P.KIND_EVENTS:
        times, ids = np.array(msg.times, np.int64), np.array(msg.ids, np.int64)
    elif h.kind == P.KIND_COUNTS:
        ids = np.flatnonzero(msg.array())
        times = np.full(ids.size, h.t_ns, np.int64)
    else:
        return newest
    delays.append((v.recv_ns, h.t_ns))
    newest = h.t_ns if newest is None else max(newest, h.t_ns)
    spikes.append((h.t_ns, times, ids))
    while spikes and spikes[0][0] < newest - raster_s * 1e9:  # t_ns is the frame's watermark
        spikes.popleft()
    return newest


def _fill_bins(data: SessionData, bins: list[BinRecord], beh_t: list[int],
               beh_v: list[np.ndarray], controls: list[tuple[int, str]]) -> None:
    if not bins:
        return
    start = np.array([b.start_ns for b in bins], np.int64)
    t0 = start[0]
    data.bin_t = (start - t0) / 1e9
    n_out = max((b.decoded.size for b in bins if b.decoded is not None), default=0)
    dec = np.full((len(bins), n_out), np.nan)
    for i, b in enumerate(bins):
        if b.decoded is not None:
            dec[i, :b.decoded.size] = b.decoded
    data.decoded = dec
    if not data.output_names:
        data.output_names = [f"out{i}" for i in range(n_out)]
    data.truth = _truth_per_bin(data, start, beh_t, beh_v)
    amp, status = np.zeros(len(bins)), []
    for i, b in enumerate(bins):
        cmd = b.outcome.get("command") or {}
        amp[i] = cmd.get("amplitude_ma", cmd.get("power_mw", 0.0)) or 0.0
        status.append(b.outcome.get("status", ""))
    data.amplitude, data.status = amp, np.array(status)
    index = np.array([b.index for b in bins], np.int64)
    armed_at = None
    for k, op in sorted(controls):
        t = float(data.bin_t[min(int(np.searchsorted(index, k)), len(index) - 1)])
        if op == "arm" and armed_at is None:
            armed_at = t
        elif op == "disarm" and armed_at is not None:
            data.armed_spans.append((armed_at, t))
            armed_at = None
    if armed_at is not None:
        data.armed_spans.append((armed_at, float(data.bin_t[-1])))


def _truth_per_bin(data: SessionData, start: np.ndarray, beh_t: list[int],
                   beh_v: list[np.ndarray]) -> np.ndarray:
    """The latest behaviour sample at or before each bin's end (the pipeline's rule)."""
    n_out = data.decoded.shape[1]
    truth = np.full((start.size, n_out), np.nan)
    if not beh_t or not n_out:
        return truth
    bt = np.asarray(beh_t, np.int64)
    bv = np.asarray(beh_v)
    names = data.truth_names or [f"x{i}" for i in range(bv.shape[1])]
    cols = [names.index(n) if n in names else i for i, n in enumerate(data.output_names)]
    cols = [c if c < bv.shape[1] else -1 for c in cols]
    end = start + int(round(data.bin_ms * 1e6))
    k = np.searchsorted(bt, end, side="right") - 1
    ok = k >= 0
    for j, c in enumerate(cols):
        if c >= 0:
            truth[ok, j] = bv[k[ok], c]
    return truth


# ----------------------------------------------------------------------------- figure
def render(data: SessionData, out: str | Path, raster_s: float = 10.0) -> Path:
    """Draw the report to ``out`` (PNG, or any format matplotlib knows by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    n_out = max(1, min(4, data.decoded.shape[1]))
    fig = plt.figure(figsize=(14, 12), dpi=100, layout="constrained")
    grid = fig.add_gridspec(4, n_out, height_ratios=[1.2, 1, 1, 1])
    fig.suptitle(_title(data), fontsize=11)

    ax = fig.add_subplot(grid[0, :])
    if data.spike_t.size:
        ax.scatter(data.spike_t, data.spike_ch, s=1, marker="|", color="k", linewidths=0.5)
    ax.set(title=f"Spike raster, last {raster_s:g} s of the session", xlabel="source time (s)",
           ylabel="channel")

    r2 = data.r2()
    for i in range(n_out):
        ax = fig.add_subplot(grid[1, i])
        if i < data.decoded.shape[1]:
            t, d, tr = _thin(data.bin_t, data.decoded[:, i], data.truth[:, i])
            ax.plot(t, tr, color="tab:orange", lw=0.8, label="true")
            ax.plot(t, d, color="tab:blue", lw=0.8, label="decoded")
            name = data.output_names[i]
            ax.set_title(f"{name}" + (f"  R² {r2[name]:.2f}" if name in r2 else ""))
        ax.set_xlabel("source time (s)")
        if i == 0:
            ax.legend(loc="upper right", fontsize=8)

    ax = fig.add_subplot(grid[2, :])
    for a, b in data.armed_spans:
        ax.axvspan(a, b, color="tab:red", alpha=0.08, lw=0)
    t, amp = _thin(data.bin_t, data.amplitude)
    ax.step(t, amp, where="post", color="tab:red", lw=0.9, label="command in force")
    counts = Counter(data.status.tolist())
    for status, color in zip(FLAGGED, ("tab:orange", "tab:gray", "tab:green"), strict=True):
        sel = data.status == status
        if sel.any():
            ts, amp_sel = _thin(data.bin_t[sel], data.amplitude[sel])
            ax.plot(ts, amp_sel, ".", ms=3, color=color, label=f"{status} ({counts[status]} bins)")
    ax.set(title="Stimulation (shaded: armed)", xlabel="source time (s)",
           ylabel=f"amplitude ({data.amplitude_unit})")
    ax.legend(loc="upper right", fontsize=8)

    ax = fig.add_subplot(grid[3, :])
    if data.arrival_delay_ms.size:
        d = data.arrival_delay_ms
        ax.hist(d, bins=min(100, max(10, d.size // 50)), color="tab:purple")
        p50, p99 = np.percentile(d, [50, 99])
        ax.set_xlabel(f"ms after the earliest frame's delay  (p50 {p50:.2f}, p99 {p99:.2f}, "
                      f"max {d.max():.2f}; n={d.size})")
        ax.set_ylabel("frames")
    else:
        ax.text(0.5, 0.5, data.arrival_note, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("Spike-frame arrival delay (receive clock − source clock, minimum subtracted): "
                 "transport and pacing jitter, NOT end-to-end latency — the log records no "
                 "processing times; see /metrics for those", fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _title(data: SessionData) -> str:
    counts = Counter(data.status.tolist())
    parts = [f"session {data.session_id or data.path.stem}", f"decoder {data.decoder or '-'}",
             f"{data.channels} channels", f"{data.bin_ms:g} ms bins",
             f"{data.bin_t.size} bins = {data.duration_s:.1f} s",
             "log " + ("clean" if data.clean else "open/torn"),
             "stim " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    return "  ·  ".join(parts)


def _thin(t: np.ndarray, *ys: np.ndarray, limit: int = 20_000) -> tuple[np.ndarray, ...]:
    """Every k-th point so long sessions plot quickly (the picture is the same at this size)."""
    k = max(1, t.size // limit)
    return (t[::k], *(y[::k] for y in ys))


def write_html(data: SessionData, png: Path, out: str | Path) -> Path:
    """A self-contained page: the figure inline plus the numbers behind it."""
    out = Path(out)
    img = base64.b64encode(png.read_bytes()).decode()
    rows: list[tuple[str, Any]] = [
        ("recording", data.path.name), ("session", data.session_id), ("decoder", data.decoder),
        ("channels", data.channels), ("bin (ms)", data.bin_ms), ("bins", data.bin_t.size),
        ("duration (s)", f"{data.duration_s:.1f}"), ("log", "clean" if data.clean else "torn"),
        *((f"R² {k}", f"{v:.3f}") for k, v in data.r2().items()),
        *((f"stim {k}", v) for k, v in sorted(Counter(data.status.tolist()).items())),
    ]
    table = "\n".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                      for k, v in rows)
    out.write_text(f"<!doctype html><meta charset=utf-8><title>spikeloop report "
                   f"{html.escape(data.path.name)}</title><table>{table}</table>"
                   f'<img alt="session report" src="data:image/png;base64,{img}" '
                   f'style="max-width:100%">\n')
    return out
