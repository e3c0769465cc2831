"""Test helpers: real servers, Redis and sources on loopback, started and stopped cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (used to find leaked processes)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            pids.append(int(d.name))
    return pids


def wait_for(pred, timeout_s: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@dataclass
class Server:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    port: int

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def bearer(self) -> dict[str, str]:
        """The admin token as a header (reads need a token too, WebSockets included)."""
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, token: str | None = "admin"):
        from clients.control import ControlClient

        return ControlClient(self.url, self.token if token == "admin" else token)


def start_running(c, endpoint: str, channels: int, name: str, calibration_s: float,
                  timeout_s: float, **source) -> tuple[str, dict]:
    """Start a Kalman + speed_to_dbs session on ``endpoint`` through the control client
    ``c``; its id and live status once it runs (calibrated)."""
    cfg = {"name": name, "bin_ms": 20.0,
           "source": {"endpoint": endpoint, "channels": channels, **source},
           "decoder": {"type": "kalman", "calibration_s": calibration_s},
           "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}}}
    sid = c.start(c.create_session(cfg)["id"])["id"]
    return sid, wait_for(lambda: (lambda x: x if x.get("state") == "running" else None)(
        c.session(sid)["live"]), timeout_s, f"session {name} to calibrate and run")


def start_server(data_dir: Path, port: int | None = None, extra: tuple[str, ...] = (),
                 log: Path | None = None, ca_file: Path | None = None) -> Server:
    """``spikeloop serve`` on 127.0.0.1; its stderr to ``log`` when given; https when
    ``extra`` has --tls-cert (then ``ca_file`` checks its certificate)."""
    port = port or free_port()
    err = open(log, "ab") if log is not None else None  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(
        [PY, "-m", "clients.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
         *extra], cwd=REPO, start_new_session=True, stderr=err)
    if err is not None:
        err.close()
    scheme = "https" if "--tls-cert" in extra else "http"
    srv = Server(f"{scheme}://127.0.0.1:{port}", data_dir, proc, port)
    from clients.control import ControlClient

    c = ControlClient(srv.url, ca_file=ca_file)

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            return c.health()
        except Exception:
            return None

    wait_for(up, 60, "the control plane to answer /healthz", 0.1)
    return srv


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 30) -> None:
    """Ask ``proc`` to stop with ``sig``; kill it if it has not within ``wait_s``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_server(srv: Server) -> None:
    stop_process(srv.proc, signal.SIGINT)  # the API stops its sessions on SIGINT


@dataclass
class RedisServer:
    url: str
    port: int
    proc: subprocess.Popen


def start_redis(workdir: Path, bind: tuple[str, ...] = ("127.0.0.1",),
                password: str | None = None, port: int | None = None) -> RedisServer:
    """A real redis-server (Debian's) on 127.0.0.1 (and ``bind``), no persistence, in
    ``workdir`` (on ``port``: e.g. the port of one that was stopped, to restart it empty).

    Off loopback, Redis only serves clients that authenticate: give a ``password``.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs Debian's)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", *bind, "--save", "",
                             "--appendonly", "no", "--dir", str(workdir),
                             *(["--requirepass", password] if password else [])],
                            stdout=subprocess.DEVNULL, start_new_session=True)
    import redis

    client = redis.Redis(port=port, password=password)

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {proc.returncode}")
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    wait_for(up, 20, "redis-server to answer PING")
    client.close()
    cred = f":{password}@" if password else ""
    return RedisServer(f"redis://{cred}127.0.0.1:{port}/0", port, proc)


def stop_redis(srv: RedisServer) -> None:
    stop_process(srv.proc, wait_s=10)


class SimThread:
    """A simulated motor source published from a thread of the test process.

    ``inject(step) -> list[frames]`` may return extra (e.g. malformed) frames to send
    on the same socket after a given step. ``publisher``: publish through this one (e.g.
    to a Redis stream) instead of a SpikePublisher on a free port. ``motor``: options of
    the motor source (``sources.motor.MotorConfig``, e.g. ``drift_at_s``, as
    ``spikeloop sim --drift-at``). ``realtime=False`` publishes as fast as it can
    (``spikeloop sim --fast``), ``step_ms`` is the frame period on the source clock,
    ``seconds``: stop after that much source time.

    ``subscribers``: publish nothing before that many subscribers joined (counted on an
    XPUB socket), so a fast source cannot run ahead of the sessions that read it.
    ``hold_at_s``: source times at which the source stops (``holds_reached`` counts them)
    until :meth:`resume`, so a test acts at known points of the source clock however
    slow the machine is.
    """

    def __init__(self, units: int = 96, seed: int = 0, inject=None, port: int | None = None,
                 source=None, stim_endpoint: str | None = None, host: str = "127.0.0.1",
                 publisher=None, realtime: bool = True, step_ms: float = 1.0,
                 subscribers: int = 0, hold_at_s: tuple[float, ...] = (),
                 seconds: float | None = None, **motor):
        from clients.publisher import SpikePublisher
        from sources.motor import MotorCortexSim

        self.port = port or free_port()
        self.endpoint = f"tcp://{host}:{self.port}"
        self.sim = source or MotorCortexSim(units=units, seed=seed, **motor)
        units = self.sim.channels
        self.stim_endpoint = stim_endpoint  # set before __enter__ to close the loop
        self.subscribers = subscribers
        self._xpub = None
        if subscribers and publisher is None:
            self._xpub = _XPub(self.endpoint)
            publisher = SpikePublisher(None, units, sink=self._xpub)
        self.pub = publisher or SpikePublisher(self.endpoint, units)
        self.inject = inject
        self.realtime, self.step_ms, self.seconds = realtime, step_ms, seconds
        self._holds = sorted(int(round(t * 1e9)) for t in hold_at_s)
        self.holds_reached = 0
        self._resumed = 0
        self._cv = threading.Condition()
        self.steps = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def resume(self) -> None:
        """Go on from the hold the source is waiting at."""
        with self._cv:
            self._resumed += 1
            self._cv.notify_all()

    def _on_step(self, step: int) -> None:
        if self.inject is not None:
            for frames in self.inject(step) or ():
                self.pub.socket.send_multipart(frames)
        if self._holds and self.sim.t_ns >= self._holds[0]:
            self._holds.pop(0)
            with self._cv:
                self.holds_reached += 1
                self._cv.wait_for(lambda: self._resumed >= self.holds_reached
                                  or self._stop.is_set())

    def _run(self) -> None:
        from clients.simrunner import run_source

        if self._xpub is not None and not self._xpub.wait_subscribers(self.subscribers,
                                                                      self._stop):
            return
        self.steps = run_source(self.sim, self.pub, self.step_ms, realtime=self.realtime,
                                duration_s=self.seconds, should_stop=self._stop.is_set,
                                on_step=self._on_step,
                                stim_endpoint=self.stim_endpoint)

    def __enter__(self) -> SimThread:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._cv:
            self._stop.set()
            self._cv.notify_all()
        self.thread.join(5)
        self.pub.close()


class _XPub:
    """A PUB that also sees its subscriptions (an XPUB): the sink of a SpikePublisher."""

    def __init__(self, endpoint: str):
        import zmq

        self.socket = zmq.Context.instance().socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's, not only the first
        self.socket.setsockopt(zmq.SNDHWM, 100_000)
        self.socket.setsockopt(zmq.LINGER, 500)
        self.socket.bind(endpoint)
        self.endpoint = endpoint
        self.joined = 0

    def wait_subscribers(self, n: int, stop: threading.Event) -> bool:
        """Block until ``n`` subscriptions arrived (False: ``stop`` was set first)."""
        while self.joined < n:
            if stop.is_set():
                return False
            if self.socket.poll(100):
                if self.socket.recv()[:1] == b"\x01":
                    self.joined += 1
        return True

    def send_multipart(self, frames, copy: bool = True) -> None:
        self.socket.send_multipart(frames, copy=copy)

    def close(self) -> None:
        self.socket.close()
