"""API tokens with scopes: ``read``, ``control`` (sessions) and ``stim`` (arming, limits).

Tokens are random strings shown once; only their SHA-256 is stored. On first
start an admin token with every scope is created and written to
``<data-dir>/admin.token`` (mode 0600), which the CLI reads.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from service.session.store import Store

SCOPES = ("read", "control", "stim")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(store: Store, name: str, scopes: list[str]) -> str:
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ValueError(f"unknown scopes {bad}; use any of {list(SCOPES)}")
    token = "slp_" + secrets.token_urlsafe(32)
    store.insert_token(hash_token(token), name, scopes)
    return token


def ensure_admin_token(store: Store, data_dir: Path) -> Path:
    """Create the admin token on first start; return where it is kept."""
    path = data_dir / "admin.token"
    if path.exists() and store.token_scopes(hash_token(path.read_text().strip())):
        return path
    token = new_token(store, "admin", list(SCOPES))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def read_admin_token(data_dir: Path) -> str | None:
    path = data_dir / "admin.token"
    return path.read_text().strip() if path.exists() else None
