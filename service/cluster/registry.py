"""The control plane's view of the workers: registry, placement and requests, in Redis.

Workers (``spikeloop worker``, see :mod:`service.cluster.worker`) register themselves in Redis
and heartbeat; the control plane never talks to a worker's host directly. It picks
a live worker with room and matching labels, and sends it requests on the worker's
request stream; the worker answers on a per-request list. So the only thing both
sides must reach is Redis, and a worker that is gone only makes one request time out.

Liveness uses Redis's own clock (``TIME``), never a host's, so skewed clocks on
different machines cannot make a live worker look dead or the reverse.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from service.cluster.redis_streams import Keys, connect

#: The longest control-plane -> worker request (a session start waits up to 60 s, plus 5).
MAX_REQUEST_S = 65.0


class NoWorker(RuntimeError):
    """No live worker can take the session (HTTP 409: add a worker or change placement)."""


class WorkerUnreachable(RuntimeError):
    """A worker did not answer a request in time."""


@dataclass
class WorkerInfo:
    id: str
    host: str = ""
    pid: int = 0
    capacity: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    sessions: list[str] = field(default_factory=list)
    last_seen_ms: int = 0
    age_ms: int = 0
    alive: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def redis_now_ms(r) -> int:
    sec, usec = r.time()
    return int(sec) * 1000 + int(usec) // 1000


def labels_match(labels: dict[str, str], placement: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in placement.items())


class Cluster:
    """Workers as the control plane sees them. ``timeout_s``: heartbeat age that means lost."""

    def __init__(self, url: str, timeout_s: float = 5.0):
        self.url = url
        self.timeout_ms = int(timeout_s * 1000)
        # BLPOP waits up to MAX_REQUEST_S: the socket must outlast it (see connect()).
        self.r = connect(url, socket_timeout=MAX_REQUEST_S + 5.0)

    # ------------------------------------------------------------------ registry
    def workers(self) -> list[WorkerInfo]:
        now = redis_now_ms(self.r)
        out = []
        for wid, score in self.r.zrange(Keys.workers, 0, -1, withscores=True):
            wid = wid.decode()
            h = {k.decode(): v.decode() for k, v in self.r.hgetall(Keys.worker(wid)).items()}
            age = now - int(score)
            out.append(WorkerInfo(
                id=wid, host=h.get("host", ""), pid=int(h.get("pid", 0) or 0),
                capacity=int(h.get("capacity", 0) or 0),
                labels=json.loads(h.get("labels", "{}")),
                sessions=json.loads(h.get("sessions", "[]")),
                last_seen_ms=int(score), age_ms=age, alive=age <= self.timeout_ms))
        return out

    def alive(self, wid: str) -> bool:
        score = self.r.zscore(Keys.workers, wid)
        return score is not None and redis_now_ms(self.r) - int(score) <= self.timeout_ms

    def registered(self) -> set[str]:
        return {w.decode() for w in self.r.zrange(Keys.workers, 0, -1)}

    def lost(self) -> list[str]:
        """Registered workers whose last heartbeat is older than the timeout."""
        cutoff = redis_now_ms(self.r) - self.timeout_ms
        return [w.decode() for w in self.r.zrangebyscore(Keys.workers, "-inf", f"({cutoff}")]

    def why_lost(self, wid: str) -> str:
        left = self.r.hget(Keys.worker(wid), "left")
        if left:
            return f"worker {wid} {left.decode()}"
        return f"worker {wid} lost: no heartbeat for {self.timeout_ms / 1000:g} s"

    def forget(self, wid: str) -> None:
        """Drop a lost worker, once its sessions have been dealt with."""
        self.r.zrem(Keys.workers, wid)
        self.r.delete(Keys.worker(wid), Keys.worker_requests(wid))

    def pick(self, placement: dict[str, str], assigned: dict[str, int],
             exclude: tuple[str, ...] = ()) -> str:
        """The least-loaded live worker with room whose labels include ``placement``.

        ``assigned``: sessions the control plane has placed per worker, which may be
        ahead of what the workers' last heartbeats report.
        """
        known = self.workers()
        fits = []
        for w in known:
            if not w.alive or w.id in exclude or not labels_match(w.labels, placement):
                continue
            load = max(len(w.sessions), assigned.get(w.id, 0))
            if load < w.capacity:
                fits.append((load / max(w.capacity, 1), load, w.id))
        if not fits:
            alive = [w for w in known if w.alive and w.id not in exclude]
            want = f" with labels {placement}" if placement else ""
            raise NoWorker(f"no live worker{want} has room ({len(alive)} live of {len(known)} "
                           "registered); start a worker (spikeloop worker --redis URL) or "
                           "change the session's placement")
        return min(fits)[2]

    # ------------------------------------------------------------------ requests
    def request(self, wid: str, op: str, timeout_s: float = 5.0, **payload: Any) -> Any:
        """Send ``op`` to worker ``wid`` and wait for its answer; its error is re-raised."""
        timeout_s = min(max(timeout_s, 0.01), MAX_REQUEST_S)
        rid = uuid.uuid4().hex
        self.r.xadd(Keys.worker_requests(wid), {
            "id": rid, "op": op, "body": json.dumps(payload)}, maxlen=10_000, approximate=True)
        got = self.r.blpop([Keys.reply(rid)], timeout=timeout_s)
        if got is None:
            self.r.delete(Keys.reply(rid))
            raise WorkerUnreachable(f"worker {wid} did not answer {op!r} within {timeout_s:g} s")
        reply = json.loads(got[1])
        if not reply.get("ok"):
            raise WorkerError(reply.get("kind", ""), reply.get("error", f"worker {wid} refused "
                                                                         f"{op!r}"))
        return reply.get("result")

    def close(self) -> None:
        self.r.close()


class WorkerError(RuntimeError):
    """The worker ran the request and it failed; ``kind`` names the failure class."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
