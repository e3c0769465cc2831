"""The real-time layout of a session process: what the host permits is applied at start.

A session process applies, before its ZeroMQ context exists (so libzmq's I/O thread,
which carries every send and receive, inherits the policy and the CPU):

* **scheduling**: ``SCHED_FIFO`` at ``rt_priority`` (default :data:`DEFAULT_RT_PRIORITY`);
* **cpu_dma_latency**: the kernel's PM QoS request (default 0 µs: idle CPUs poll instead of
  entering deep idle states or, in a VM, halting the vCPU), held while the process lives;
* **cpu**: affinity to one core (the control plane picks one per session, spreading
  sessions over the cores, see :func:`pick_cpu`);
* **zmq_io_thread**: libzmq's I/O thread at the same policy (set on the shared context
  before its first socket). Every *other* thread the process starts afterwards (audit and
  recorder writers, calibration, Redis) is an ordinary SCHED_OTHER thread
  (``SCHED_RESET_ON_FORK``): on the loop's own core it runs only while the loop waits, and
  a calibration fit can never hold the loop off its CPU.

Each item is *applied*, *refused* (with one line on how to grant it) or *off* (not asked
for, or ``realtime: false`` in the session config: the explicit opt-out). A refusal never
stops a session: it runs as an ordinary process and its status, ``/metrics`` and
``spikeloop doctor`` say what is missing.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: SCHED_FIFO priority of a session loop when the config does not name one: above
#: ordinary threaded IRQ handlers' default (50 is theirs; equal is fine for a 1 ms loop),
#: below the platform probe of bench/ (95) and the kernel's watchdogs (99)
DEFAULT_RT_PRIORITY = 50
#: the PM QoS request a real-time session holds when the config does not name one
DEFAULT_CPU_DMA_LATENCY_US = 0

GRANT_RT = ("grant CAP_SYS_NICE and an rtprio limit: systemd LimitRTPRIO=99 and "
            "AmbientCapabilities=CAP_SYS_NICE; docker compose cap_add: [SYS_NICE] and "
            "ulimits: {rtprio: 99}; or run as root")
GRANT_DMA = ("let the service open /dev/cpu_dma_latency for writing: run as root, or a udev "
             "rule giving its group write access (compose: devices: [/dev/cpu_dma_latency])")
GRANT_CPU = ("allow the CPU in the process's affinity mask (taskset, systemd CPUAffinity=, "
             "compose cpuset:)")


class ItemState(enum.StrEnum):
    APPLIED = "applied"
    REFUSED = "refused"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class LayoutItem:
    name: str
    state: ItemState
    detail: str
    grant: str = ""  # one line on how to grant it (refused items)

    def to_dict(self) -> dict[str, str]:
        d = {"item": self.name, "state": self.state.value, "detail": self.detail}
        if self.grant:
            d["grant"] = self.grant
        return d


@dataclass(slots=True)
class Layout:
    items: list[LayoutItem] = field(default_factory=list)
    qos_fd: int | None = None  # held open: closing it lifts the PM QoS request

    @property
    def refused(self) -> list[LayoutItem]:
        return [i for i in self.items if i.state is ItemState.REFUSED]

    def text(self) -> str:
        """One line, e.g. ``SCHED_FIFO 50, cpu 1, cpu_dma_latency 0 us``."""
        return ", ".join(i.detail for i in self.items if i.state is not ItemState.OFF or
                         i.name == "scheduling")

    def to_dict(self) -> dict[str, Any]:
        return {"items": [i.to_dict() for i in self.items],
                "refused": [i.name for i in self.refused]}


def apply_layout(cfg: Any) -> Layout:
    """Apply the layout ``cfg`` (a SessionConfig) asks for, or the best the host permits.

    Call it first thing in the session process, before any ZeroMQ context exists.
    """
    auto = bool(getattr(cfg, "realtime", True))
    prio = cfg.rt_priority
    if prio is None and auto and not cfg.spin:  # spin at FIFO would starve its CPU
        prio = DEFAULT_RT_PRIORITY
    dma = cfg.cpu_dma_latency_us
    if dma is None and auto:
        dma = DEFAULT_CPU_DMA_LATENCY_US
    layout = Layout()
    layout.items.append(_pin(cfg.cpu))
    layout.items.append(_fifo(prio, "" if auto or cfg.rt_priority else "realtime: false"))
    qos_fd, item = hold_cpu_dma_latency(dma)
    layout.qos_fd = qos_fd
    layout.items.append(item)
    fifo = layout.items[1].state is ItemState.APPLIED
    layout.items.append(_zmq_io_thread(prio) if fifo and prio else LayoutItem(
        "zmq_io_thread", ItemState.OFF, "zmq I/O thread SCHED_OTHER"))
    for i in layout.refused:
        log.warning("real-time layout: %s refused (%s); %s", i.name, i.detail, i.grant)
    log.info("real-time layout: %s", layout.text())
    return layout


def _pin(cpu: int | None) -> LayoutItem:
    if cpu is None:
        return LayoutItem("cpu", ItemState.OFF, "no CPU pinning")
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        return LayoutItem("cpu", ItemState.REFUSED, f"cpu {cpu} refused ({exc.strerror})",
                          GRANT_CPU)
    return LayoutItem("cpu", ItemState.APPLIED, f"cpu {cpu}")


def _fifo(priority: int | None, why_off: str) -> LayoutItem:
    if not priority:
        return LayoutItem("scheduling", ItemState.OFF,
                          "SCHED_OTHER" + (f" ({why_off})" if why_off else ""))
    try:
        # this (the loop's) thread only: threads started later are SCHED_OTHER
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                              os.sched_param(priority))
    except OSError as exc:
        return LayoutItem("scheduling", ItemState.REFUSED,
                          f"SCHED_OTHER: SCHED_FIFO {priority} refused ({exc.strerror})",
                          GRANT_RT)
    return LayoutItem("scheduling", ItemState.APPLIED, f"SCHED_FIFO {priority}")


def _zmq_io_thread(priority: int) -> LayoutItem:
    """libzmq's I/O thread (it carries every send and receive) at the loop's priority: set
    on the shared context before its first socket starts the thread."""
    import zmq

    try:
        ctx: zmq.Context = zmq.Context.instance()
        ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_FIFO)
        ctx.set(zmq.THREAD_PRIORITY, priority)
    except (zmq.ZMQError, AttributeError) as exc:
        return LayoutItem("zmq_io_thread", ItemState.REFUSED,
                          f"zmq I/O thread SCHED_OTHER ({exc}); libzmq >= 4.1 sets its "
                          "priority", "upgrade libzmq (pyzmq wheels bundle a recent one)")
    return LayoutItem("zmq_io_thread", ItemState.APPLIED,
                      f"zmq I/O thread at SCHED_FIFO {priority}")


def hold_cpu_dma_latency(us: int | None) -> tuple[int | None, LayoutItem]:
    """Keep idle CPUs out of deep idle states for as long as the returned fd stays open.

    A deep idle state (or, in a VM, a halted vCPU) can take tens to hundreds of µs to
    wake, and every ZeroMQ hop wakes a thread. 0 makes idle CPUs poll. Closing the fd
    (or the process ending) lifts the request.
    """
    if us is None:
        return None, LayoutItem("cpu_dma_latency", ItemState.OFF, "no PM QoS request")
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError as exc:
        return None, LayoutItem("cpu_dma_latency", ItemState.REFUSED,
                                f"cpu_dma_latency {us} us refused ({exc.strerror})", GRANT_DMA)
    os.write(fd, struct.pack("i", us))
    return fd, LayoutItem("cpu_dma_latency", ItemState.APPLIED, f"cpu_dma_latency {us} us")


def pick_cpu(allowed: Iterable[int], taken: Iterable[int | None]) -> int | None:
    """The core for one more real-time session: sessions spread over the cores.

    With one core there is nothing to choose (None: no pinning). Otherwise the core with
    the fewest sessions already pinned to it; on a tie the highest-numbered, so the first
    session gets a core away from CPU 0, where the control plane, interrupts and
    housekeeping usually run.
    """
    cpus = sorted(set(allowed))
    if len(cpus) < 2:
        return None
    load = Counter(c for c in taken if c is not None)
    return min(reversed(cpus), key=lambda c: load[c])


def probe_host() -> list[LayoutItem]:
    """What a session process started from here would be granted (for ``spikeloop doctor``).

    Tries each item on this process and puts it back at once.
    """
    items = []
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(DEFAULT_RT_PRIORITY))
        os.sched_setscheduler(0, policy, param)
        items.append(LayoutItem("scheduling", ItemState.APPLIED,
                                f"SCHED_FIFO {DEFAULT_RT_PRIORITY} permitted"))
    except OSError as exc:
        items.append(LayoutItem("scheduling", ItemState.REFUSED,
                                f"SCHED_FIFO refused ({exc.strerror})", GRANT_RT))
    fd, item = hold_cpu_dma_latency(DEFAULT_CPU_DMA_LATENCY_US)
    if fd is not None:
        os.close(fd)
        item = LayoutItem(item.name, item.state, item.detail + " permitted")
    items.append(item)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        items.append(LayoutItem("cpu", ItemState.APPLIED,
                                f"{len(cpus)} usable CPUs {cpus}: sessions are spread and "
                                "pinned over them"))
    else:
        items.append(LayoutItem("cpu", ItemState.REFUSED,
                                f"{len(cpus)} usable CPU: no core of its own for a session",
                                GRANT_CPU))
    return items
