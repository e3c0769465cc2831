"""Recordings listing, safe download paths and the free-space check."""

from __future__ import annotations

import numpy as np
import pytest

from service.recording.recorder import Recorder
from service.recording.storage import (
    InsufficientDisk,
    check_free,
    free_bytes,
    list_recordings,
    resolve_recording,
)

pytestmark = pytest.mark.unit


def _record(path, bins: int, close: bool = True) -> Recorder:
    rec = Recorder(path, flush_interval_s=0.01, fsync=False)
    rec.config({"session_id": "s1", "config": {"name": "demo", "bin_ms": 20.0,
                                               "source": {"channels": 4}}})
    for k in range(bins):
        rec.bin(k, k * 20_000_000, np.zeros(2), {"status": "safe", "command": None,
                                                 "request": None, "reasons": []})
    if close:
        rec.close()
    else:
        rec.flush()
    return rec


def test_list_recordings_clean_and_crashed(tmp_path):
    _record(tmp_path / "a.splog", 50)
    live = _record(tmp_path / "b.splog", 10, close=False)  # crashed / still running
    (tmp_path / "notes.txt").write_text("x")
    infos = {i.name: i for i in list_recordings(tmp_path)}
    assert set(infos) == {"a.splog", "b.splog"}
    a, b = infos["a.splog"], infos["b.splog"]
    assert a.clean and a.bins == 50 and a.duration_s == pytest.approx(1.0)
    assert a.session == "demo" and a.session_id == "s1" and a.channels == 4
    assert b.clean is False and b.bins == 10
    live.close()


def test_resolve_refuses_escapes(tmp_path):
    _record(tmp_path / "a.splog", 1)
    assert resolve_recording(tmp_path, "a.splog") == (tmp_path / "a.splog").resolve()
    for bad in ("../a.splog", "/etc/passwd", "sub/../../x.splog"):
        with pytest.raises((ValueError, FileNotFoundError)):
            resolve_recording(tmp_path, bad)
    with pytest.raises(FileNotFoundError):
        resolve_recording(tmp_path, "missing.splog")


def test_check_free(tmp_path):
    assert free_bytes(tmp_path / "not" / "yet") > 0
    assert check_free(tmp_path, 1) > 0
    with pytest.raises(InsufficientDisk, match="MB free"):
        check_free(tmp_path, 1 << 62)
