"""The control plane's settings (``service.api.app`` re-exports ``Settings``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Settings:
    data_dir: Path
    auth: bool = True
    public_read: bool = False  # reads without a token (serve --public-read, loopback only)
    auth_max_failures: int = 10  # failed authentications per client and minute, then 429
    stop_sessions_on_shutdown: bool = True
    redis_url: str | None = None  # sessions run on workers registered in this Redis
    worker_timeout_s: float = 5.0  # heartbeat age after which a worker is lost
    max_body_bytes: int = 1 << 20  # request bodies (configs, limits) are small
    max_websockets: int = 64  # live streams at once, all sessions together
    public_outputs: bool = False  # let sessions bind their output beyond loopback
    max_sessions: int = 16  # session processes on this host at once
