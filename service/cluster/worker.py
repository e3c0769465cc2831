"""``spikeloop worker``: run sessions that the control plane assigns, on any host.

A worker is a :class:`~service.session.manager.SessionManager` of its own (sessions are the
same session processes as on a single machine, with their recordings and audit logs
in the worker's data directory) driven through Redis instead of HTTP:

* it registers (host, capacity, labels) and heartbeats on Redis's clock;
* it serves requests from its request stream (start, get, control, stop, delete) and
  answers each on a per-request list;
* it holds a *lease*: if it cannot heartbeat for ``lease_s`` (Redis gone, network
  partition) it stops its sessions, which drives their stimulation safe, before the
  control plane (which waits longer, see :class:`~service.cluster.registry.Cluster`) may
  restart them elsewhere. Two copies of one closed loop must never stimulate at once.

Sessions it starts exit safe on their own if the worker process dies (they watch
their parent), for the same reason.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from service.cluster.redis_streams import Keys, connect, redact, without_secret
from service.cluster.registry import redis_now_ms
from service.session.config import RedisConfig, SessionConfig
from service.session.control import SessionUnreachable
from service.session.manager import SessionError, SessionManager, SessionNotFound
from service.session.store import Store

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, redis_url: str, data_dir: Path, name: str | None = None,
                 capacity: int = 4, labels: dict[str, str] | None = None,
                 bind_host: str = "127.0.0.1", heartbeat_s: float = 0.5, lease_s: float = 3.0):
        self.redis_url = redis_url
        self.id = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.capacity = capacity
        self.labels = labels or {}
        self.bind_host = bind_host
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        data_dir.mkdir(parents=True, exist_ok=True)
        # The worker's --bind-host is the operator's choice of where its sessions bind.
        self.manager = SessionManager(data_dir, Store(data_dir / "worker.db"),
                                      exit_with_parent=True,
                                      public_outputs=bind_host not in ("127.0.0.1", "::1"))
        self.r = connect(redis_url, socket_timeout=2.0)  # requests (XREAD blocks 0.5 s)
        # Heartbeats on their own connection, with timeouts well inside the lease, so a
        # partition is noticed (and the sessions stopped) before the lease is long gone.
        beat_timeout = max(0.1, lease_s / 4)
        self._hb = connect(redis_url, socket_timeout=beat_timeout,
                           socket_connect_timeout=beat_timeout)
        self._stop = threading.Event()
        self._last_beat = time.monotonic()
        self.fenced = False
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="req")

    # ------------------------------------------------------------------ registry
    def _active(self) -> list[str]:
        """Sessions this worker runs, from its store (no call to them: a hung session
        must not hold up the heartbeat and cost the lease)."""
        return [r["id"] for r in self.manager.store.list_sessions()
                if r["state"] in ("starting", "calibrating", "running")]

    def register(self) -> None:
        self.r.delete(Keys.worker_requests(self.id))  # a fresh id: nothing queued is ours
        self._beat()
        log.info(f"registered: capacity {self.capacity}, labels {self.labels}, "
              f"Redis {redact(self.redis_url)}")

    def _beat(self) -> None:
        pipe = self._hb.pipeline()
        pipe.hset(Keys.worker(self.id), mapping={
            "host": socket.gethostname(), "pid": os.getpid(), "capacity": self.capacity,
            "labels": json.dumps(self.labels), "sessions": json.dumps(self._active())})
        pipe.zadd(Keys.workers, {self.id: redis_now_ms(self._hb)})
        pipe.execute()
        self._last_beat = time.monotonic()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.manager.reconcile()  # the store says which sessions still run
                self._beat()
                if self.fenced:
                    log.info("Redis reachable again; taking new sessions")
                    self.fenced = False
            except Exception as exc:  # Redis down or unreachable: the lease runs out
                if not self.fenced and time.monotonic() - self._last_beat > self.lease_s:
                    self._fence(f"no heartbeat for {self.lease_s:g} s ({exc})")

    def _fence(self, why: str) -> None:
        """The lease ran out: the control plane may restart our sessions elsewhere."""
        self.fenced = True
        sids = self._active()
        log.info(f"{why}: stopping every session (stimulation safe): {sids}")
        t0 = time.monotonic()

        def stop(sid: str) -> None:  # all at once: each one disarms as soon as it is told
            try:
                self.manager.stop(sid)
                log.info(f"{sid} stopped after {time.monotonic() - t0:.2f} s")
            except Exception as exc:
                log.warning(f"stopping {sid} failed: {exc}")

        threads = [threading.Thread(target=stop, args=(sid,)) for sid in sids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # ------------------------------------------------------------------ requests
    def serve(self) -> None:
        """Register, then serve requests until SIGTERM/SIGINT (or :meth:`shutdown`)."""
        self.register()
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        last = "0-0"
        while not self._stop.is_set():
            try:
                got = self.r.xread({Keys.worker_requests(self.id): last}, count=16, block=500)
            except Exception:
                time.sleep(0.2)  # the heartbeat thread owns the lease; just retry
                continue
            for _, entries in got or []:
                for entry_id, fields in entries:
                    last = entry_id
                    self._pool.submit(self._answer, {k.decode(): v.decode()
                                                     for k, v in fields.items()})
                    self.r.xdel(Keys.worker_requests(self.id), entry_id)
        self._shutdown()

    def _answer(self, req: dict[str, str]) -> None:
        try:
            result = self.handle(req["op"], json.loads(req.get("body", "{}")))
            reply = {"ok": True, "result": result}
        except (SessionError, SessionNotFound, SessionUnreachable, ValueError) as exc:
            reply = {"ok": False, "kind": type(exc).__name__, "error": str(exc).strip("'\"")}
        except Exception as exc:  # report, never die on one request
            reply = {"ok": False, "kind": type(exc).__name__,
                     "error": f"worker {self.id}: {type(exc).__name__}: {exc}"}
        key = Keys.reply(req["id"])
        pipe = self.r.pipeline()
        pipe.rpush(key, json.dumps(reply, default=str))
        pipe.expire(key, 60)
        pipe.execute()

    def handle(self, op: str, body: dict[str, Any]) -> Any:
        m = self.manager
        if op == "start":
            if self.fenced:
                raise SessionError(f"worker {self.id} has lost Redis; it takes no session")
            if len(self._active()) >= self.capacity:
                raise SessionError(f"worker {self.id} is full ({self.capacity} sessions)")
            cfg = self._localise(SessionConfig.model_validate(body["config"]))
            sid = body["sid"]
            if m.store.get_session(sid) is None:
                m.create(cfg, sid=sid)
            else:  # a restart on this worker: keep the id, take the new config
                m.store.update_session(sid, config=cfg.model_dump())
            # here: this worker was chosen for it
            out = m.start(sid, local=True, by=str(body.get("by", "")))
            self._beat()
            return out
        if op == "get":
            return m.get(body["sid"])
        if op == "control":
            reply, extra = m.control(body["sid"], body["request"], body.get("timeout_ms", 2000),
                                     with_extra=True)
            return {"reply": reply, "extra": [base64.b64encode(x).decode() for x in extra]}
        if op == "stop":
            out = m.stop(body["sid"], by=str(body.get("by", "")))
            self._beat()
            return out
        if op == "delete":
            m.delete(body["sid"])
            self._beat()
            return {"deleted": body["sid"]}
        raise ValueError(f"unknown worker request {op!r}")

    def _localise(self, cfg: SessionConfig) -> SessionConfig:
        """What this worker adds to a session: its Redis, and its bind address."""
        upd: dict[str, Any] = {}
        if cfg.redis is None:  # mirror outputs and recording so other hosts can read them
            upd["redis"] = RedisConfig(url=without_secret(self.redis_url))
        # a worker that serves other hosts (--bind-host) publishes where they can reach it,
        # unless the session named a TCP port itself
        if cfg.output.endpoint in ("ipc", "tcp://127.0.0.1:0") and \
                self.bind_host != "127.0.0.1":
            upd["output"] = cfg.output.model_copy(update={"endpoint": f"tcp://{self.bind_host}:0"})
        return cfg.model_copy(update=upd) if upd else cfg

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        self._stop.set()

    def _shutdown(self) -> None:
        log.info("shutting down: stopping sessions")
        self.manager.stop_all()
        self._pool.shutdown(wait=True)
        try:  # leave as "lost now", saying why: the control plane fails over what ran here
            pipe = self.r.pipeline()
            pipe.hset(Keys.worker(self.id), "left", "shut down")
            pipe.zadd(Keys.workers, {self.id: 0})
            pipe.delete(Keys.worker_requests(self.id))
            pipe.execute()
        except Exception:
            pass  # Redis gone: the control plane will see the heartbeat stop


def run_worker(redis_url: str, data_dir: Path, **kwargs: Any) -> None:
    w = Worker(redis_url, data_dir, **kwargs)
    signal.signal(signal.SIGTERM, lambda *_: w.shutdown())
    signal.signal(signal.SIGINT, lambda *_: w.shutdown())
    w.serve()
