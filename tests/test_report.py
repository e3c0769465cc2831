"""``spikeloop report``: a figure of a recorded session, from the log alone."""

from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest

from service.session.config import SessionConfig
from service.session.simsession import run_sim_session
from sources.motor import MotorCortexSim
from tests.helpers import PY, REPO

pytest.importorskip("matplotlib", reason="pip install -e '.[ui]'")

from clients.report import load  # noqa: E402

SECONDS = 16.0
EVENTS = [(300, {"op": "arm"}), (500, {"op": "disarm"}), (600, {"op": "arm"}),
          (650, {"op": "limits", "limits": {"max_amplitude_ma": 1.0}})]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "session.splog"
    cfg = SessionConfig(name="report", bin_ms=20.0, source={"channels": 40},
                        decoder={"type": "kalman", "calibration_s": 4.0},
                        stim={"policy": {"type": "speed_to_dbs", "gain_ma_per_cm_s": 0.2}})
    run_sim_session(cfg, MotorCortexSim(units=40, seed=2), SECONDS, path, frame_ms=5.0,
                    events=EVENTS, flush_interval_s=0.05)
    return path


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_report_command_writes_a_figure_and_a_page(recording, tmp_path):
    out = tmp_path / "figs" / "session.png"
    proc = subprocess.run([PY, "-m", "clients.cli", "report", str(recording), "--out", str(out),
                           "--html", "--quiet"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.exists() and out.stat().st_size > 50_000
    assert _png_size(out) == (1400, 1200)  # 14 x 12 in at 100 dpi
    page = out.with_suffix(".html").read_text()
    assert "data:image/png;base64," in page and "R² vx" in page


def test_report_data_follow_the_log(recording):
    d = load(recording, raster_s=5.0)
    assert d.bin_t.size == int(SECONDS * 1000 / 20)
    assert d.decoder == "kalman" and d.output_names == ["x", "y", "vx", "vy"]
    assert d.spike_t.size > 0 and d.spike_t.min() >= d.bin_t[-1] - 5.0 - 0.02
    assert d.spike_ch.max() < 40
    # Armed between the recorded arm/disarm bins, and stimulation only while armed.
    assert [(round(a, 2), round(b, 2)) for a, b in d.armed_spans] == [(6.0, 10.0), (12.0, 15.98)]
    armed = np.zeros(d.bin_t.size, bool)
    for a, b in d.armed_spans:
        armed |= (d.bin_t >= a) & (d.bin_t < b)
    assert d.amplitude[~armed].max() == 0.0 and d.amplitude[armed].max() > 0.0
    assert d.amplitude[d.bin_t >= 13.0].max() <= 1.0  # the recorded limits change
    # Decoded velocity tracks the truth the bins were scored against.
    r2 = d.r2()
    assert r2["vx"] > 0.1 and r2["vy"] > 0.1, r2
    # The simulated source ran faster than real time: no arrival-delay histogram is invented.
    assert d.arrival_delay_ms.size == 0 and "real time" in d.arrival_note
