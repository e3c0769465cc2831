"""Pieces every live benchmark shares: a real control plane, endpoints, pacing, the floor.

Live benchmarks measure the real thing (uvicorn server, session processes
started over REST, ZeroMQ on loopback), so they all need the same plumbing:
start and reliably stop a server, pick endpoints on one transport, pace a
source in real time, compute exact percentiles, and measure the raw ZeroMQ
round trip that every latency is compared with.

This file is also the entry point of the helper processes it starts
(``--echo`` for the floor, ``--load`` for REST load, ``--sink`` for the raw
PUB->SUB rate, ``--probe`` for the platform's own wake-up stalls), so that they
run in their own interpreter, as a real peer would.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

now_ns = time.perf_counter_ns
HERE = str(Path(__file__).resolve())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(samples_ns: np.ndarray, prefix: str = "") -> dict[str, float]:
    """p50/p99/p99.9/max in microseconds (NaN when there are no samples)."""
    keys = [f"{prefix}{k}" for k in ("p50_us", "p99_us", "p999_us", "max_us")]
    samples_ns = np.asarray(samples_ns)
    if samples_ns.size == 0:
        return dict.fromkeys(keys, float("nan"))
    p = np.percentile(samples_ns, [50, 99, 99.9]) / 1e3
    vals = [float(p[0]), float(p[1]), float(p[2]), float(samples_ns.max()) / 1e3]
    return {k: round(v, 1) for k, v in zip(keys, vals, strict=True)}


def sleep_until(t: float) -> None:
    """Sleep to ``t`` (perf_counter seconds), spinning only the last 0.2 ms for precision."""
    d = t - time.perf_counter()
    if d > 0.0003:
        time.sleep(d - 0.0002)
    while time.perf_counter() < t:
        pass


def report(res: dict, print_table, json_path: Path | None) -> int:
    """The end of every benchmark: the table for people, the JSON for the checks."""
    print_table(res)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(res, indent=2))
    return 0


def wait_for(fn, timeout_s: float, what: str = "condition"):
    """Call ``fn`` until it returns without raising (and truthy); its value is returned."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}" + (f": {last}" if last else ""))


class Endpoints:
    """Fresh endpoints on one transport: ``tcp`` (127.0.0.1, free ports) or ``ipc`` (a temp dir).

    The same object names the source, output and floor endpoints, so a run compares
    like with like.
    """

    def __init__(self, transport: str = "tcp"):
        if transport not in ("tcp", "ipc"):
            raise ValueError(f"transport must be tcp or ipc, not {transport!r}")
        self.transport = transport
        self._dir = tempfile.mkdtemp(prefix="slb-") if transport == "ipc" else None
        self._n = 0

    def new(self, name: str = "ep") -> str:
        self._n += 1
        if self.transport == "tcp":
            return f"tcp://127.0.0.1:{free_port()}"
        return f"ipc://{self._dir}/{name}{self._n}"

    def close(self) -> None:
        """Remove the ipc socket files' directory (sockets must be closed by then)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def output(self, name: str = "out") -> str:
        """For a session's output: the session picks a free port, or the server an ipc path
        in the session's own directory (callers may not name socket paths)."""
        return "tcp://127.0.0.1:0" if self.transport == "tcp" else "ipc"


# ---------------------------------------------------------------------------- server
class Server:
    """The real control plane in its own process group; ``stop()`` always leaves nothing behind.

        with Server() as srv:
            c = srv.client()          # ControlClient with the admin token
    """

    def __init__(self, data_dir: Path | None = None, extra: tuple[str, ...] = ()):
        self.extra = extra  # more `spikeloop serve` options, e.g. ("--redis", URL)
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="spikeloop-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.session_pids: list[int] = []

    def start(self, timeout_s: float = 60) -> Server:
        from clients.control import ControlClient

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clients.cli", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir), *self.extra], cwd=REPO, start_new_session=True,
            stderr=subprocess.DEVNULL)
        probe = ControlClient(self.url)

        def up():
            if self.proc.poll() is not None:
                raise SystemExit("the control plane exited during start-up")
            return probe.health()

        try:
            wait_for(up, timeout_s, "the control plane")
        finally:
            probe.close()
        return self

    def token(self) -> str:
        """The operator (admin) token the control plane wrote at start-up."""
        return (self.data_dir / "admin.token").read_text().strip()

    def client(self):
        from clients.control import ControlClient

        return ControlClient(self.url, self.token())

    def start_session(self, c, config: dict) -> dict:
        """Create and start a session; its pid is remembered so ``stop()`` can reap it.

        Sessions run in their own process group (they outlive an API restart by design),
        so killing the server's group alone would not stop them.
        """
        s = c.start(c.create_session(config)["id"])
        if s.get("pid"):
            self.session_pids.append(int(s["pid"]))
        return s

    def stop(self) -> None:
        """SIGINT (the API stops its sessions), then SIGKILL whatever is left."""
        self._stop_server()
        for pid in self.session_pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"service.session.runner" in cmd:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.session_pids.clear()

    def _stop_server(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:  # session processes are in the server's group: none may outlive the bench
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SimFeeder:
    """A simulated motor cortex published one bin at a time: behaviour, then spikes.

    ``send()`` returns the send time of the spike frame (``now_ns``), which is
    what client-view latencies are measured from.
    """

    NAMES = ["x", "y", "vx", "vy"]

    def __init__(self, pub: zmq.Socket, channels: int, bin_ns: int, seed: int = 1):
        from service.wire import protocol as P
        from sources.motor import MotorCortexSim

        self._P = P
        self.pub = pub
        self.channels = channels
        self.bin_ns = bin_ns
        self.sim = MotorCortexSim(units=channels, seed=seed)
        self.seq = 0

    def send(self) -> int:
        P, step = self._P, self.sim.advance(self.bin_ns)
        self.pub.send_multipart(P.encode_array(b"behavior", P.KIND_BEHAVIOR, "bench", self.seq,
                                               step.t_ns, step.truth,
                                               extra={"names": self.NAMES}))
        frames = P.encode_events(b"spikes", "bench", self.seq, step.t_ns, self.channels,
                                 step.ids, step.times)
        t0 = now_ns()
        self.pub.send_multipart(frames, copy=False)
        self.seq += 1
        return t0


class StimWaiter:
    """The stimulator side of a latency measurement: a SUB on a session's ``stim`` topic."""

    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"stim")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def wait(self, for_seq: int, timeout_ns: int) -> int | None:
        """``now_ns()`` when the command for input frame ``for_seq`` arrives; None if it
        does not within ``timeout_ns``."""
        from service.wire import protocol as P

        deadline = now_ns() + timeout_ns
        while True:
            # poll() takes whole ms but returns as soon as a message is there
            left_ms = max(1, -(-(deadline - now_ns()) // 1_000_000))
            if not self.sock.poll(left_ms):
                return None
            msg = P.decode(self.sock.recv_multipart())
            if msg.header.extra.get("in_seq") == for_seq:
                return now_ns()
            if now_ns() > deadline:
                return None

    def close(self) -> None:
        self.sock.close(0)


class RedisProcess:
    """A redis-server of our own on 127.0.0.1 (no persistence), or an existing one by URL.

        with RedisProcess() as r:    # r.url: redis://127.0.0.1:PORT/0
    """

    def __init__(self, url: str | None = None):
        self.url = url
        self.proc: subprocess.Popen | None = None
        self._dir: str | None = None

    def start(self) -> RedisProcess:
        from service.cluster.redis_streams import connect

        if self.url is None:
            exe = shutil.which("redis-server")
            if exe is None:
                raise SystemExit("redis-server not found: install it (apt-get install "
                                 "redis-server) or pass --redis URL")
            port = free_port()
            self._dir = tempfile.mkdtemp(prefix="spikeloop-redis-")
            self.proc = subprocess.Popen(
                [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self._dir], stdout=subprocess.DEVNULL,
                start_new_session=True)
            self.url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: connect(self.url, socket_timeout=5).ping(), 20, f"Redis at {self.url}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_running(c, sid: str, keep_feeding, timeout_s: float = 120) -> None:
    """Call ``keep_feeding()`` (send a bin, pace) until the session has calibrated."""
    deadline = time.monotonic() + timeout_s
    check = 0.0
    while time.monotonic() < deadline:
        keep_feeding()
        if time.monotonic() - check > 0.5:
            check = time.monotonic()
            st = c.session(sid)
            if st["state"] == "failed":
                raise RuntimeError(f"session failed: {st['error']}")
            if st["state"] == "running":
                return
    raise RuntimeError(f"session {sid} did not reach running in {timeout_s} s")


def stage_means(metrics: dict) -> dict[str, float]:
    """Mean microseconds per loop stage from a ``/sessions/{id}/metrics`` reply."""
    return {k: round(v["sum_us"] / max(v["count"], 1), 2) for k, v in metrics["stages"].items()}


# ---------------------------------------------------------------------------- floor
def set_fifo(priority: int, children_too: bool) -> None:
    """SCHED_FIFO for this process (needs root or CAP_SYS_NICE), its ZeroMQ I/O thread
    included. Without ``children_too`` the processes it starts later (server, sessions,
    load) keep the normal policy.

    SCHED_RESET_ON_FORK also resets *threads* created afterwards, and libzmq's I/O thread
    (which carries every send and receive) is one: so the shared context is started while
    the plain policy is set, and the reset flag is added to the calling thread only after.
    """
    param = os.sched_param(priority)
    os.sched_setscheduler(0, os.SCHED_FIFO, param)
    ctx = zmq.Context.instance()
    ctx.socket(zmq.PUB).close(0)  # libzmq starts its I/O and reaper threads here
    if not children_too:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, param)


def _echo(in_ep: str, out_ep: str, rt_priority: int = 0) -> None:
    """Echo process for the floor: SUB everything on ``in_ep``, PUB it back on ``out_ep``."""
    if rt_priority:  # the floor runs under the same policy as the session it is compared to
        set_fifo(rt_priority, children_too=True)
    ctx = zmq.Context.instance()
    sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.PUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(in_ep)
    pub.bind(out_ep)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        pub.send_multipart(sub.recv_multipart(copy=False), copy=False)


def measure_floor(frames: list[bytes], n: int = 3000, transport: str = "tcp",
                  rt_priority: int = 0) -> np.ndarray:
    """Raw ZeroMQ round trips (PUB -> echo process -> PUB) of ``frames``, in ns.

    The same hop count as a session (source -> process -> stimulator) with zero work
    in the middle: the physical limit of this transport on this machine, right now.
    """
    ctx = zmq.Context.instance()
    eps = Endpoints(transport)
    a, b = eps.new("fa"), eps.new("fb")
    pub = ctx.socket(zmq.PUB)
    pub.bind(a)
    proc = subprocess.Popen([sys.executable, HERE, "--echo", a, b, str(rt_priority)])
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(b)
    try:
        # Wait until the echo path is up (slow joiner), then ping-pong.
        deadline = time.monotonic() + 20
        while not sub.poll(0):
            if time.monotonic() > deadline:
                raise RuntimeError("echo process did not come up")
            pub.send_multipart(frames)
            time.sleep(0.05)
        while sub.poll(100):
            sub.recv_multipart()
        out = np.empty(n, np.int64)
        for i in range(n):
            t0 = now_ns()
            pub.send_multipart(frames)
            sub.recv_multipart()
            out[i] = now_ns() - t0
            time.sleep(0.0002)
        return out
    finally:
        proc.terminate()
        proc.wait(5)
        pub.close(0)
        sub.close(0)
        eps.close()


# ---------------------------------------------------------------------------- raw rate
def _sink(endpoint: str, seconds: float) -> None:
    """Count messages and bytes from a PUB until ``seconds`` of silence or a b"end" topic."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1_000_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    n = 0
    t_first = t_last = None
    while sub.poll(int(seconds * 1000)):
        msg = sub.recv_multipart(copy=False)
        if msg[0].bytes == b"end":
            break
        t_last = time.perf_counter()
        if t_first is None:
            t_first = t_last
        n += 1
    print(json.dumps({"messages": n, "seconds": (t_last or 0) - (t_first or 0)}), flush=True)


def raw_pubsub_rate(frames: list, seconds: float = 2.0, transport: str = "tcp") -> dict:
    """Frames/s that this process can push through PUB -> SUB (another process), no loss.

    The sink counts what arrived; the sender blocks on nothing (PUB drops at the high-water
    mark), so ``delivered < sent`` means the raw transport itself lost frames at that rate.
    """
    ctx = zmq.Context.instance()
    eps = Endpoints(transport)
    ep = eps.new("raw")
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 1_000_000)
    pub.bind(ep)
    proc = subprocess.Popen([sys.executable, HERE, "--sink", ep, "2"], stdout=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(1.0)  # slow joiner: the SUB must be connected before we count
        sent = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(100):
                pub.send_multipart(frames, copy=False)
            sent += 100
        elapsed = time.perf_counter() - t0
        time.sleep(0.5)
        pub.send_multipart([b"end"])
        out = json.loads(proc.communicate(timeout=30)[0].strip().splitlines()[-1])
        return {"sent": sent, "delivered": out["messages"], "send_s": elapsed,
                "frames_per_s": out["messages"] / max(out["seconds"], elapsed, 1e-9)}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        pub.close(0)
        eps.close()


# ---------------------------------------------------------------------------- load
def _api_load(url: str, rps: float, seconds: float) -> None:
    """A separate process polling ``url`` at ``rps`` for ``seconds`` (bounded), with the
    token in ``SPIKELOOP_TOKEN`` (reads need one)."""
    import httpx

    n_ok = n_err = 0
    period = 1.0 / rps
    token = os.environ.get("SPIKELOOP_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=5, headers=headers) as c:
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds:
            try:
                n_ok += c.get(url).status_code == 200
            except httpx.HTTPError:
                n_err += 1
            k += 1
            delay = t0 + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print(json.dumps({"requests": n_ok + n_err, "ok": n_ok,
                      "rps": (n_ok + n_err) / max(time.monotonic() - t0, 1e-9)}))


def _hostile_load(base: str, sid: str, sockets: int, seconds: float) -> None:
    """Unauthenticated pressure on the control plane (the security probe's): ``sockets``
    idle WebSocket attempts held open, and 1 MiB+ bodies without a token, for ``seconds``;
    meanwhile the slowest /healthz answer and, with the operator's token
    (``SPIKELOOP_TOKEN``), how long ``disarm`` takes. Prints one JSON line."""
    import httpx
    from websockets.sync.client import connect

    ws_url = base.replace("http://", "ws://") + f"/sessions/{sid}/stream"
    held, refused = [], 0
    for _ in range(sockets):
        try:
            # idle viewers: the library takes in everything, the program never reads
            held.append(connect(ws_url, open_timeout=5, ping_interval=None, max_queue=None))
        except Exception:
            refused += 1
    print("ready", flush=True)  # the sockets are open: the measured bins may start
    big = b"x" * (2 << 20)
    worst = 0.0
    bodies = 0
    disarm_s: list[float] = []
    operator = {"Authorization": f"Bearer {os.environ['SPIKELOOP_TOKEN']}"} \
        if os.environ.get("SPIKELOOP_TOKEN") else None
    t_end = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=10) as h:
        while time.monotonic() < t_end:
            h.post("/sessions", content=big, headers={"content-type": "application/json"})
            bodies += 1
            t0 = time.monotonic()
            h.get("/healthz")
            worst = max(worst, time.monotonic() - t0)
            if operator is not None:
                t0 = time.monotonic()
                r = h.post(f"/sessions/{sid}/disarm", headers=operator)
                if r.status_code == 200:
                    disarm_s.append(time.monotonic() - t0)
            time.sleep(0.05)
    for ws in held:
        ws.close()
    d = np.asarray(disarm_s)
    print(json.dumps({"websockets_open": len(held), "websockets_refused": refused,
                      "oversize_bodies": bodies, "healthz_worst_s": worst,
                      "disarms": int(d.size),
                      "disarm_p50_s": float(np.median(d)) if d.size else None,
                      "disarm_worst_s": float(d.max()) if d.size else None}))


def start_hostile_load(base: str, sid: str, sockets: int, seconds: float,
                       token: str | None = None) -> subprocess.Popen:
    """``token``: the operator's, to time ``disarm`` under the load. Returns once the
    sockets are open (each attempt is bounded by its 5 s open timeout)."""
    env = os.environ | ({"SPIKELOOP_TOKEN": token} if token else {})
    proc = subprocess.Popen([sys.executable, HERE, "--hostile", base, sid, str(sockets),
                             str(seconds)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("the hostile load process ended before opening its sockets")
    return proc


def start_api_load(url: str, rps: float, seconds: float,
                   token: str | None = None) -> subprocess.Popen:
    env = os.environ | ({"SPIKELOOP_TOKEN": token} if token else {})
    return subprocess.Popen([sys.executable, HERE, "--load", url, str(rps), str(seconds)],
                            stdout=subprocess.PIPE, text=True, env=env)


# ---------------------------------------------------------------------------- platform
def _platform_probe(cpu: int, priority: int, period_us: int, out: str) -> None:
    """cyclictest in miniature: a SCHED_FIFO thread pinned to ``cpu`` wakes every period
    and notes each wake-up later than 200 µs as (intended time, lateness), both ns.

    It runs above everything spikeloop runs, so a late wake-up here is time the CPU was
    not given to the guest at all (hypervisor, SMIs) or spent in the kernel: a stall no
    process in this machine can avoid. Runs until SIGTERM, then writes ``out`` (.npy).
    """
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    stalls: list[tuple[int, int]] = []
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    period = period_us * 1000
    gc.disable()
    target = now_ns() + period
    while not stop:
        d = target - now_ns()
        if d > 0:
            time.sleep(d / 1e9)
        late = now_ns() - target
        if late > 200_000:
            stalls.append((target, late))
        target += period
        if late > period:  # skip the periods that were lost, as cyclictest does
            target += (late // period) * period
    np.save(out, np.asarray(stalls, np.int64).reshape(-1, 2))


class PlatformProbe:
    """One ``_platform_probe`` process per CPU for the length of a measurement."""

    def __init__(self, priority: int = 95, period_us: int = 1000):
        self.priority, self.period_us = priority, period_us
        self._tmp = Path(tempfile.mkdtemp(prefix="spikeloop-probe-"))
        self._procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self) -> PlatformProbe:
        for cpu in sorted(os.sched_getaffinity(0)):
            out = self._tmp / f"cpu{cpu}.npy"
            self._procs.append((subprocess.Popen(
                [sys.executable, HERE, "--probe", str(cpu), str(self.priority),
                 str(self.period_us), str(out)]), out))
        return self

    def stop(self) -> list[np.ndarray]:
        """Per CPU, an (n, 2) array of (intended wake-up ns, lateness ns)."""
        result = []
        for proc, out in self._procs:
            proc.terminate()
            proc.wait(10)
            result.append(np.load(out) if out.exists() else np.zeros((0, 2), np.int64))
        shutil.rmtree(self._tmp, ignore_errors=True)
        return result


def overlaps_stall(start_ns: np.ndarray, end_ns: np.ndarray, stalls: list[np.ndarray],
                   min_ns: int) -> np.ndarray:
    """For each [start, end], whether a CPU stalled for >= ``min_ns`` inside it."""
    hit = np.zeros(len(start_ns), bool)
    for s in stalls:
        s = s[s[:, 1] >= min_ns]
        for t, late in s:
            hit |= (start_ns <= t + late) & (end_ns >= t)
    return hit


def helper_main(argv: list[str]) -> bool:
    """Run a helper process if ``argv`` asks for one; True when it did."""
    if argv[:1] == ["--echo"]:
        _echo(argv[1], argv[2], int(argv[3]) if len(argv) > 3 else 0)
    elif argv[:1] == ["--load"]:
        _api_load(argv[1], float(argv[2]), float(argv[3]))
    elif argv[:1] == ["--hostile"]:
        _hostile_load(argv[1], argv[2], int(argv[3]), float(argv[4]))
    elif argv[:1] == ["--probe"]:
        _platform_probe(int(argv[1]), int(argv[2]), int(argv[3]), argv[4])
    elif argv[:1] == ["--sink"]:
        _sink(argv[1], float(argv[2]))
    else:
        return False
    return True


if __name__ == "__main__":
    sys.exit(0 if helper_main(sys.argv[1:]) else 2)
