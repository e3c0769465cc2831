"""Disk-space checks: a session that cannot record must not start."""

from __future__ import annotations

import shutil
from pathlib import Path


class InsufficientDisk(RuntimeError):
    pass


def free_bytes(path: str | Path) -> int:
    return shutil.disk_usage(path).free


def check_free(path: str | Path, min_bytes: int) -> int:
    """Raise :class:`InsufficientDisk` (naming the numbers) if ``path`` has too little space."""
    free = free_bytes(path)
    if free < min_bytes:
        raise InsufficientDisk(
            f"only {free / 1e6:.0f} MB free under {path}; need {min_bytes / 1e6:.0f} MB to "
            "record a session: free space or point --data-dir elsewhere")
    return free
