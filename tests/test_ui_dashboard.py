"""The operator dashboard in headless Chromium, against a real server and a simulated session.

One server, source, session and browser serve the whole module (start-up and
calibration dominate the cost). Chromium is Debian's (``scripts/test.sh``
installs it); Playwright only drives it, so no browser is ever downloaded.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    Server,
    SimThread,
    processes_mentioning,
    start_server,
    stop_server,
    wait_for,
)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[ui]'")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} missing: scripts/test.sh installs Debian's chromium",
                allow_module_level=True)


@dataclass
class Live:
    server: Server
    sid: str
    page: object  # playwright Page


def _armed(live: Live) -> bool:
    return live.server.client().session(live.sid)["live"]["armed"]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("dashboard")
    srv = start_server(tmp / "data")
    try:
        with SimThread(units=64, seed=11) as sim:
            c = srv.client()
            sid = c.start(c.create_session({
                "name": "dashboard", "bin_ms": 20.0,
                "source": {"endpoint": sim.endpoint, "channels": 64},
                "decoder": {"type": "kalman", "calibration_s": 8.0},
                "stim": {"modality": "dbs", "policy": {"type": "speed_to_dbs"}}})["id"])["id"]
            wait_for(lambda: c.session(sid)["live"]["state"] == "running", 60, "running")
            errors: list[str] = []
            with sync_api.sync_playwright() as pw:
                browser = pw.chromium.launch_persistent_context(
                    str(tmp / "chromium-profile"), executable_path=CHROMIUM,
                    args=CHROMIUM_ARGS, headless=True, viewport={"width": 1400, "height": 1000})
                try:
                    page = browser.new_page()
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.goto(srv.url + "/")
                    page.fill("#token", srv.token)  # reads need a token with the read scope
                    yield Live(srv, sid, page)
                finally:
                    # Close the page while the session still publishes: the server's stream
                    # handler only notices a closed socket when it next sends.
                    browser.close()
            assert not errors, f"JavaScript errors on the page: {errors}"
            c.stop(sid)
    finally:
        stop_server(srv)
        leaked = processes_mentioning(str(tmp))
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert not leaked, f"processes left behind: {leaked}"


def _data(page, selector: str, key: str) -> int:
    return int(page.eval_on_selector(selector, f"c => c.dataset.{key} || '0'"))


def test_dashboard_lists_the_session_and_its_raster_and_trajectory_update(live: Live):
    page = live.page
    page.wait_for_selector(f"#sessions tr[data-sid='{live.sid}'].selected")
    assert "running" in page.inner_text("#state")
    page.wait_for_function("document.querySelector('#raster').dataset.updates >= 3",
                           timeout=20_000)
    page.wait_for_function("document.querySelector('#trajectory').dataset.points >= 10",
                           timeout=20_000)
    spikes0, points0 = _data(page, "#raster", "spikes"), _data(page, "#trajectory", "points")
    pixels0 = page.eval_on_selector("#raster", "c => c.toDataURL()")
    traj0 = page.eval_on_selector("#trajectory", "c => c.toDataURL()")
    page.wait_for_function(f"document.querySelector('#raster').dataset.spikes > {spikes0} && "
                           f"document.querySelector('#trajectory').dataset.points > {points0}",
                           timeout=20_000)
    page.wait_for_timeout(300)  # one more draw
    assert page.eval_on_selector("#raster", "c => c.toDataURL()") != pixels0
    assert page.eval_on_selector("#trajectory", "c => c.toDataURL()") != traj0
    assert _data(page, "#raster", "drawn") > 0
    page.wait_for_function("document.querySelector('#latency-pct').textContent.includes('p99')",
                           timeout=20_000)


def test_dashboard_arming_needs_confirmation_and_a_token(live: Live):
    page = live.page
    dialog = page.locator("#confirm")
    ok = page.locator("#confirm-ok")
    page.fill("#token", "")
    page.click("#arm")
    assert dialog.is_visible()
    assert ok.is_disabled()  # neither confirmed nor a token
    page.check("#confirm-check")
    assert ok.is_disabled()  # confirmed, still no token
    page.fill("#confirm-token", "slp_wrong_token")
    assert ok.is_enabled()
    ok.click()
    page.wait_for_selector("#confirm-error:has-text('401')")
    assert dialog.is_visible() and not _armed(live)
    page.click("#confirm-cancel")
    assert not dialog.is_visible() and not _armed(live)

    page.click("#arm")
    page.fill("#confirm-token", live.server.token)
    assert ok.is_disabled()  # a token alone is not a confirmation
    page.check("#confirm-check")
    ok.click()
    page.wait_for_selector("#armed[data-armed='true']")
    assert not dialog.is_visible() and _armed(live)

    page.click("#disarm")
    page.fill("#confirm-token", live.server.token)
    page.click("#confirm-ok")
    page.wait_for_selector("#armed[data-armed='false']")
    assert not _armed(live)
    page.fill("#token", live.server.token)  # the other tests read with it


def test_dashboard_limits_editor_applies_checked_limits(live: Live):
    page = live.page
    page.wait_for_selector("#lim-max_amplitude_ma")
    page.fill("#lim-max_amplitude_ma", "2.5")
    page.click("#limits button[type=submit]")
    assert "max_amplitude_ma 3.5 → 2.5" in page.inner_text("#confirm-body")
    page.fill("#confirm-token", live.server.token)
    page.check("#confirm-check")
    page.click("#confirm-ok")
    page.wait_for_selector("#notice:has-text('limits applied')")
    assert live.server.client().limits(live.sid)["max_amplitude_ma"] == 2.5


def test_dashboard_screenshot_is_saved(live: Live):
    """Armed, so the amplitude trace moves; the picture is the README's when asked for."""
    page = live.page
    c = live.server.client()
    c.arm(live.sid)
    page.wait_for_selector("#armed[data-armed='true']")
    page.wait_for_timeout(4000)  # let the plots fill with armed stimulation
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(out), full_page=True)
    c.disarm(live.sid)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    if os.environ.get("SPIKELOOP_UPDATE_DOCS") == "1":
        shutil.copyfile(out, REPO / "docs" / "img" / "dashboard.png")


def test_dashboard_page_is_served_without_a_build_step(live: Live):
    import httpx

    for path in ("/ui/", "/ui/static/app.js", "/ui/static/plot.js", "/ui/static/style.css"):
        r = httpx.get(live.server.url + path)
        assert r.status_code == 200, path
