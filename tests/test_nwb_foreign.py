"""NWB files written by other labs' tools: inspect, train, replay into a session that decodes.

The files are written here with pynwb in other tools' layouts (tests/foreign_nwb.py),
never with spikeloop's own exporter.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynwb", reason="NWB support needs the optional 'nwb' extra (pynwb)")

from decoders.store import ModelStore  # noqa: E402
from service.recording.recorder import RecordType, read_log  # noqa: E402
from service.recording.replay import open_recording  # noqa: E402
from service.recording.training import (  # noqa: E402
    nwb_config,
    recording_bins,
    score_on_test,
    train_nwb,
)
from sources.nwb import inventory  # noqa: E402
from sources.readers import NwbUnitsReader  # noqa: E402
from tests.foreign_nwb import (  # noqa: E402
    write_head_direction_file,
    write_no_units_file,
    write_position_file,
)
from tests.helpers import PY, REPO, wait_for  # noqa: E402

BIN_MS = 50.0


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("foreign")
    return {"position": write_position_file(d / "sub-rat07_ses-pos.nwb"),
            "hd": write_head_direction_file(d / "sub-rat07_ses-hd.nwb"),
            "no_units": write_no_units_file(d / "sub-rat07_ses-lfp.nwb")}


@pytest.mark.unit
def test_inventory_says_what_each_file_holds_and_can_decode(files):
    pos = inventory(files["position"])
    assert pos.units == 24 and pos.obs_intervals and pos.trials == 24 and not pos.missing
    (led,) = pos.series
    assert led.path == "acquisition/Position/led" and led.columns == ["led_x", "led_y"]
    assert not led.angular and pos.metadata["subject"]["species"] == "Rattus norvegicus"
    hd = inventory(files["hd"])
    (head,) = hd.series
    assert head.path == "processing/behavior/CompassDirection/head_direction"
    assert head.angular and head.columns == ["head_direction_cos", "head_direction_sin"]
    none = inventory(files["no_units"])
    assert none.units is None and "no Units table" in none.missing


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "clients.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_inspect_and_a_file_without_units_is_one_line(files, tmp_path):
    out = _cli("inspect", str(files["hd"]))
    assert out.returncode == 0, out.stderr
    assert "head_direction_cos, head_direction_sin" in out.stdout
    assert "can decode: spikeloop train" in out.stdout
    out = _cli("inspect", str(files["no_units"]))
    assert out.returncode == 0 and "cannot decode" in out.stdout and "no Units" in out.stdout
    out = _cli("train", str(files["no_units"]), "--behavior", "lfp_like", "--name", "x",
               "--data-dir", str(tmp_path))
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no Units table" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.unit
def test_obs_intervals_drop_spikes_and_bins_where_units_were_not_observed(files):
    r = NwbUnitsReader(files["position"])
    assert r.dropped_unobserved > 0  # units 0-3 spiked in [1060, 1090) s, unobserved there
    t = r._t[np.isin(r._ids, [0, 1, 2, 3])] / 1e9
    assert not np.any((t >= 1060.0) & (t < 1090.0))
    rec = open_recording(files["position"], bin_ms=BIN_MS, behavior="led")
    bins = recording_bins(rec, nwb_config(rec.channels, BIN_MS))
    t0 = bins.start_ns / 1e9
    lost = (t0 >= 1060.0) & (t0 < 1090.0)
    assert lost.sum() == 600 and not bins.has_truth[lost].any()
    assert bins.has_truth[~lost].mean() > 0.99  # elsewhere the tracking covers every bin


@pytest.mark.unit
def test_train_position_prints_r2_beside_ridge_on_the_same_bins(files):
    dec, meta = train_nwb(files["position"], "led", "wiener", BIN_MS)
    m, ridge = meta["metrics"], meta["ridge"]
    assert dec.output_names == ["led_x", "led_y"]
    assert m["test_bins"] == ridge["test_bins"] > 700
    assert m["r2_mean"] > 0.5 and m["r2_mean"] >= ridge["r2_mean"] - 1e-12
    dec, meta = train_nwb(files["position"], "led", "kalman", BIN_MS, interval=(1100, 1240))
    assert meta["metrics"]["r2_mean"] > 0.3
    assert meta["nwb"]["test_intervals_s"][0][0] >= 1100 + 0.8 * 140 - 1


@pytest.mark.unit
def test_split_by_trials_tests_on_the_last_trials(files):
    _, meta = train_nwb(files["position"], "led", "wiener", BIN_MS, split="trials")
    iv = meta["nwb"]["test_intervals_s"]
    assert len(iv) == 24 - round(0.8 * 24) and iv[0][0] == pytest.approx(1000 + 190.5)
    assert meta["metrics"]["r2_mean"] > 0.5


@pytest.mark.unit
def test_head_direction_is_decoded_as_cos_sin_and_scored_as_angle(files):
    _, meta = train_nwb(files["hd"], "head_direction", "wiener", BIN_MS)
    m = meta["metrics"]
    assert meta["nwb"]["angular"] and len(m["r2"]) == 2
    assert m["r2_mean"] > 0.6 and 0 < m["angle_error_deg"] < 30


@pytest.mark.unit
def test_replay_into_a_session_core_from_the_stored_model_gives_train_r2(files, tmp_path):
    dec, meta = train_nwb(files["hd"], "head_direction", "kalman", BIN_MS)
    store = ModelStore(tmp_path)
    store.save("hd", dec, meta)
    stored = store.load("hd")
    rec = open_recording(files["hd"], bin_ms=BIN_MS, behavior="head_direction")
    bins = recording_bins(rec, nwb_config(rec.channels, BIN_MS), decoder=stored)
    assert bins.decoded is not None and not np.isnan(bins.decoded).any()
    got = score_on_test(bins, bins.decoded, store.meta("hd")["nwb"])
    assert got["test_bins"] == meta["metrics"]["test_bins"]
    np.testing.assert_allclose(got["r2"], meta["metrics"]["r2"], rtol=1e-9, atol=1e-12)
    assert got["angle_error_deg"] == pytest.approx(meta["metrics"]["angle_error_deg"], rel=1e-9)


def _finished(c, sid: str, bins: int):
    live = c.session(sid)["live"] or {}
    return live.get("bins", 0) >= bins and live


def test_live_replay_of_a_foreign_file_calibrates_and_decodes_with_train_r2(server, files):
    """POST /models trains on a stored foreign file; replaying it into a session started
    from that model decodes the same test bins with the same R²; another session
    calibrates on the replayed behaviour; the file's subject reaches the export."""
    c = server.client()
    rec_dir = server.data_dir / "recordings"
    rec_dir.mkdir(parents=True, exist_ok=True)
    name = files["position"].name
    shutil.copy(files["position"], rec_dir / name)
    c._call("POST", "/models", json={"name": "rat-led", "source": name, "kind": "wiener",
                                     "behavior": "led", "bin_ms": BIN_MS})
    wait_for(lambda: c._call("GET", "/models/rat-led")["state"] != "training", 120, "training")
    model = c._call("GET", "/models/rat-led")
    assert model["state"] == "ready", model
    offline = model["metrics"]

    rec = open_recording(rec_dir / name, bin_ms=BIN_MS, behavior="led")
    bins = recording_bins(rec, nwb_config(rec.channels, BIN_MS))
    s = c._call("POST", f"/recordings/{name}/replay", json={
        "speed": None, "behavior": "led",
        "session": {"bin_ms": BIN_MS, "decoder": {"model": "rat-led"}}})
    sid = s["id"]
    live = wait_for(lambda: _finished(c, sid, len(bins.index)), 120, "every bin replayed")
    assert live["rejected"] == {} and live["counters"]["behavior_frames"] > 0
    final = c.stop(sid)
    assert final["config"]["metadata"]["subject"]["subject_id"] == "rat07"
    log = Path(final["recording"])
    recorded = {b.index: b.decoded for b in (r.value for r in read_log(log, {RecordType.BIN}))}
    decoded = np.stack([recorded[i] for i in bins.index])
    got = score_on_test(bins, decoded, model["nwb"])
    assert got["test_bins"] == offline["test_bins"]
    np.testing.assert_allclose(got["r2"], offline["r2"], rtol=1e-9, atol=1e-12)

    nwb = log.with_suffix(".nwb")
    wait_for(nwb.exists, 60, "the NWB export at session stop")
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(nwb), "r") as io:
        f = io.read()
        assert f.subject.subject_id == "rat07" and f.subject.species == "Rattus norvegicus"
        assert list(f.experimenter) == ["Doe, Jane"]

    cal = c._call("POST", f"/recordings/{name}/replay", json={
        "speed": None, "behavior": "led",
        "session": {"bin_ms": BIN_MS, "decoder": {"type": "wiener", "calibration_s": 20}}})
    wait_for(lambda: c.session(cal["id"])["state"] == "running", 120, "calibration on replay")
    assert c.stop(cal["id"])["state"] == "stopped"


def test_cli_session_create_takes_metadata_from_options_and_from_an_nwb_file(server, files):
    out = _cli("session", "create", "--api", server.url, "--data-dir", str(server.data_dir),
               "--channels", "24", "--metadata-from", str(files["position"]),
               "--species", "Rattus norvegicus domestica", "--description", "day 3", "--json")
    assert out.returncode == 0, out.stderr
    import json

    meta = json.loads(out.stdout)["config"]["metadata"]
    assert meta["subject"]["subject_id"] == "rat07"  # from the file
    assert meta["subject"]["species"] == "Rattus norvegicus domestica"  # the option wins
    assert meta["experimenter"] == ["Doe, Jane"] and meta["session_description"] == "day 3"
    assert meta["origin"]["identifier"] == "foreign-position"

    from clients.control import ControlError

    rec_dir = server.data_dir / "recordings"
    rec_dir.mkdir(parents=True, exist_ok=True)
    for f in (files["position"], files["no_units"]):
        shutil.copy(f, rec_dir / f.name)
    c = server.client()
    for name, behavior, says in ((files["position"].name, "speed", "no behaviour series"),
                                 (files["no_units"].name, None, "no Units table")):
        with pytest.raises(ControlError) as err:
            c._call("POST", f"/recordings/{name}/replay", json={"behavior": behavior})
        assert err.value.status == 422 and says in str(err.value.detail)
