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
    created_at REAL NOT NULL
);
"""

SESSION_FIELDS = ("id", "name", "config", "state", "error", "pid", "control", "output",
                  "recording", "created_at", "updated_at")


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
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
    def insert_token(self, token_hash: str, name: str, scopes: list[str]) -> None:
        with self._lock:
            self._db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?)",
                             (token_hash, name, ",".join(scopes), time.time()))

    def token_scopes(self, token_hash: str) -> list[str] | None:
        with self._lock:
            row = self._db.execute("SELECT scopes FROM tokens WHERE hash = ?",
                                   (token_hash,)).fetchone()
        return row[0].split(",") if row else None

    def count_tokens(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]


def _session_row(row: tuple) -> dict[str, Any]:
    d = dict(zip(SESSION_FIELDS, row, strict=True))
    d["config"] = json.loads(d["config"])
    return d
