"""The control plane's SQLite store owns its encoding."""

from __future__ import annotations

import pytest

from service.session.config import SessionConfig
from service.session.store import Store

pytestmark = pytest.mark.unit


def test_update_session_takes_a_config_dict_as_insert_does(tmp_path):
    """A worker restarting a session it ran stores the new config as a dict (this raised
    sqlite3.ProgrammingError: type 'dict' is not supported)."""
    store = Store(tmp_path / "s.db")
    try:
        cfg = SessionConfig().model_dump()
        store.insert_session("s1", "one", cfg)
        new = SessionConfig(bin_ms=5.0).model_dump()
        store.update_session("s1", config=new, state="starting")
        row = store.get_session("s1")
        assert row is not None and row["config"] == new and row["state"] == "starting"
    finally:
        store.close()
