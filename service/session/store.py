"""SQLite persistence: session configs and states, and hashed API tokens.

The control plane is the only writer. Sessions outlive an API restart because
their config, state, pid and control endpoint are here.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    control TEXT,
    output TEXT,
    recording TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
"""

#: columns added to ``tokens`` after the first release: added to an older database on open
TOKEN_COLUMNS_ADDED = (("expires_at", "REAL"), ("revoked_at", "REAL"))
TOKEN_FIELDS = ("name", "scopes", "created_at", "expires_at", "revoked_at")

SESSION_FIELDS = ("id", "name", "config", "state", "error", "pid", "control", "output",
                  "recording", "created_at", "updated_at")


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Token hashes and session configs: this user only, whoever's umask opens it first
        # (SQLite gives its -wal and -shm files the database file's mode).
        path.touch(mode=0o600, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(tokens)")}
        for col, kind in TOKEN_COLUMNS_ADDED:
            if col not in have:
                self._db.execute(f"ALTER TABLE tokens ADD COLUMN {col} {kind}")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ sessions
    def insert_session(self, sid: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
        t = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO sessions (id, name, config, state, created_at, updated_at) "
                "VALUES (?, ?, ?, 'created', ?, ?)", (sid, name, json.dumps(config), t, t))
        row = self.get_session(sid)
        assert row is not None
        return row

    def update_session(self, sid: str, **fields: Any) -> None:
        bad = set(fields) - set(SESSION_FIELDS)
        if bad:
            raise KeyError(f"unknown session fields {sorted(bad)}")
        if "config" in fields and not isinstance(fields["config"], str):
            fields["config"] = json.dumps(fields["config"])  # the store owns its encoding
        fields["updated_at"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE sessions SET {cols} WHERE id = ?", (*fields.values(), sid))

    def get_session(self, sid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(SESSION_FIELDS)} FROM sessions WHERE id = ?", (sid,)
            ).fetchone()
        return _session_row(row) if row else None

    def list_sessions(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(SESSION_FIELDS)} FROM sessions ORDER BY created_at"
            ).fetchall()
        return [_session_row(r) for r in rows]

    def delete_session(self, sid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id = ?", (sid,))

    # ------------------------------------------------------------------ tokens
    def insert_token(self, token_hash: str, name: str, scopes: list[str],
                     expires_at: float | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT INTO tokens (hash, name, scopes, created_at, expires_at) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (token_hash, name, ",".join(scopes), time.time(), expires_at))

    def get_token(self, token_hash: str) -> dict[str, Any] | None:
        """The token's name, scopes (a list) and times, revoked or expired ones included."""
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(TOKEN_FIELDS)} FROM tokens "
                                   "WHERE hash = ?", (token_hash,)).fetchone()
        return _token_row(row) if row else None

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token ever created, oldest first (never the hash)."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(TOKEN_FIELDS)} FROM tokens "
                                    "ORDER BY created_at").fetchall()
        return [_token_row(r) for r in rows]

    def revoke_tokens(self, name: str) -> int:
        """Revoke every unrevoked token called ``name``; returns how many."""
        with self._lock:
            cur = self._db.execute("UPDATE tokens SET revoked_at = ? "
                                   "WHERE name = ? AND revoked_at IS NULL", (time.time(), name))
        return cur.rowcount

    def count_tokens(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]


def _token_row(row: tuple) -> dict[str, Any]:
    d = dict(zip(TOKEN_FIELDS, row, strict=True))
    d["scopes"] = d["scopes"].split(",") if d["scopes"] else []
    return d


def _session_row(row: tuple) -> dict[str, Any]:
    d = dict(zip(SESSION_FIELDS, row, strict=True))
    d["config"] = json.loads(d["config"])
    return d
