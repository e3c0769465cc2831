"""API tokens: named, scoped (``read``, ``control``, ``stim``), expiring and revocable.

Tokens are random strings shown once; only their SHA-256 is stored (in the data
directory's SQLite store, mode 0600), with the token's name, scopes, expiry and
revocation time. The name is who acted: it is written with every control and
stimulation event in the audit log and the session recording.

On first start an admin token with every scope is created and written to
``<data-dir>/admin.token`` (mode 0600), which the CLI reads.

Repeated failed authentications (a token that is unknown, expired or revoked)
from one client address are answered 429 for a while, and logged
(:class:`FailedAuthLimiter`).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.session.store import Store

log = logging.getLogger(__name__)


class Scope(enum.StrEnum):
    READ = "read"  # sessions, configs, recordings, audit, metrics, the live stream
    CONTROL = "control"  # create, start, stop, delete sessions; models; replay
    STIM = "stim"  # arm, disarm, safety limits


SCOPES = tuple(s.value for s in Scope)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request acts as: the token's name and what it may do."""

    name: str
    scopes: frozenset[str]


#: requests served without a token: ``--no-auth``, or reads with ``--public-read``
ANONYMOUS = Identity("anonymous", frozenset(SCOPES))

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``; ValueError names the form."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"duration {text!r}: write a positive number and a unit, "
                         "s, m, h, d or w (e.g. 30d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(store: Store, name: str, scopes: list[str],
              expires_in_s: float | None = None) -> str:
    """Create a token called ``name``; returns it (it is never stored, only its hash)."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"unknown scopes {bad}; use any of {list(SCOPES)}")
    if not scopes:
        raise ValueError(f"a token needs at least one scope of {list(SCOPES)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", name):
        raise ValueError(f"token name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-' "
                         "(it is written in the audit log)")
    if any(_active(t, time.time()) and t["name"] == name for t in store.list_tokens()):
        raise ValueError(f"a token called {name!r} is in use: revoke it first "
                         f"(spikeloop token revoke {name}) or choose another name")
    token = "slp_" + secrets.token_urlsafe(32)
    expires_at = time.time() + expires_in_s if expires_in_s is not None else None
    store.insert_token(hash_token(token), name, list(scopes), expires_at)
    return token


def _active(row: dict[str, Any], now: float) -> bool:
    return row["revoked_at"] is None and (row["expires_at"] is None or row["expires_at"] > now)


def authenticate(store: Store, token: str, now: float | None = None) -> Identity | None:
    """The identity of a valid token; None for an unknown, expired or revoked one."""
    row = store.get_token(hash_token(token))
    if row is None or not _active(row, time.time() if now is None else now):
        return None
    return Identity(row["name"], frozenset(row["scopes"]))


def token_list(store: Store, now: float | None = None) -> list[dict[str, Any]]:
    """Every token with its state: ``active``, ``expired`` or ``revoked``."""
    now = time.time() if now is None else now
    out = []
    for t in store.list_tokens():
        state = "revoked" if t["revoked_at"] is not None else \
            "active" if _active(t, now) else "expired"
        out.append(t | {"state": state})
    return out


def ensure_admin_token(store: Store, data_dir: Path) -> Path:
    """Create the admin token on first start (or when it was revoked); return where it is."""
    path = data_dir / "admin.token"
    if path.exists() and authenticate(store, path.read_text().strip()) is not None:
        return path
    store.revoke_tokens("admin")  # a lost or expired admin file: its token goes too
    token = new_token(store, "admin", list(SCOPES))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def read_admin_token(data_dir: Path) -> str | None:
    path = data_dir / "admin.token"
    return path.read_text().strip() if path.exists() else None


class FailedAuthLimiter:
    """At most ``max_failures`` failed authentications per client in ``window_s``; beyond
    that the client is refused (429) until its oldest failure leaves the window.

    A failure is a token that was presented and is unknown, expired or revoked (a request
    without any token is not an attempt). Each failure is logged with the client address.
    """

    def __init__(self, max_failures: int = 10, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()  # routes run in a thread pool
        self.refused = 0  # requests answered 429

    def _recent(self, client: str, now: float) -> deque[float]:
        q = self._failures.setdefault(client, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        with self._lock:
            now = self.clock()
            q = self._recent(client, now)
            if len(q) < self.max_failures:
                if not q:
                    self._failures.pop(client, None)
                return 0.0
            self.refused += 1
            return max(0.0, q[0] + self.window_s - now)

    def failed(self, client: str, path: str, why: str) -> None:
        with self._lock:
            q = self._recent(client, self.clock())
            q.append(self.clock())
            n = len(q)
        log.warning("authentication failed from %s on %s: %s (%d in %.0f s)",
                    client, path, why, n, self.window_s)


def refusal(store: Store, token: str, now: float | None = None) -> str:
    """Why ``token`` is refused, in words for the caller (never the token itself)."""
    row = store.get_token(hash_token(token))
    if row is None:
        return "unknown token"
    if row["revoked_at"] is not None:
        return f"token {row['name']!r} was revoked at {_utc(row['revoked_at'])}"
    if row["expires_at"] is not None and row["expires_at"] <= (now or time.time()):
        return f"token {row['name']!r} expired at {_utc(row['expires_at'])}"
    return "token accepted"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
