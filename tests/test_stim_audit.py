"""Audit log and watchdog: the records and deadlines the safety model relies on."""

from __future__ import annotations

import pytest

from stim.audit import AuditLog, read_audit
from stim.commands import DBSCommand, OptoCommand, command_from_dict
from stim.guard import SafetyGuard
from stim.limits import SafetyLimits
from stim.watchdog import FailsafeStimulator, Watchdog

pytestmark = pytest.mark.unit

MS = 1_000_000


def test_audit_log_records_every_outcome_and_event(tmp_path):
    g = SafetyGuard(SafetyLimits(), "dbs")
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.record(g.process(DBSCommand(amplitude_ma=1.0), 0))  # refused: disarmed
        g.arm()
        log.event("arm", 1, user="tester")
        for k in range(1, 50):
            log.record(g.process(DBSCommand(amplitude_ma=9.0) if k == 1 else None, k * MS))
        log.record(g.disarm(50 * MS))
    rows = read_audit(path)
    statuses = [r.get("status", r.get("event")) for r in rows]
    assert statuses[0] == "refused" and rows[0]["reasons"] == ["disarmed"]
    assert statuses[1] == "arm"
    assert "clamped" in statuses and statuses[-1] == "safe"
    assert "hold" not in statuses
    sent = [r for r in rows if r.get("status") == "clamped"]
    assert all(command_from_dict(r["command"]).amplitude_ma <= 3.5 for r in sent)
    assert any("amplitude_ma 9 clamped to 3.5" in x for r in sent for x in r["reasons"])


def test_audit_log_collapses_repeats_and_writes_off_the_caller(tmp_path):
    g = SafetyGuard(SafetyLimits(), "dbs")
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, flush_interval_s=0.05)
    for k in range(1000):  # disarmed: the same refusal every bin
        log.record(g.process(DBSCommand(amplitude_ma=1.0), k * MS))
    log.event("arm", 1000 * MS)
    log.close()
    rows = read_audit(path)
    assert [r.get("status", r.get("event")) for r in rows] == ["refused", "refused", "arm"]
    assert rows[1]["repeated"] == 999 and rows[1]["t_ns"] == 999 * MS
    assert read_audit(path, last=2) == rows[1:]
    assert read_audit(path, last=10) == rows


def test_watchdog_edges():
    wd = Watchdog(10 * MS)
    assert not wd.expired(10**12)  # never fed: nothing to guard yet
    wd.feed(0)
    assert not wd.check(10 * MS)
    assert wd.check(10 * MS + 1) and wd.check(11 * MS)
    assert wd.trips == 1
    wd.feed(12 * MS)
    assert not wd.expired(20 * MS)


def test_stimulator_fails_safe_without_heartbeats():
    stim = FailsafeStimulator(50 * MS, off=OptoCommand())
    on = OptoCommand(targets=[1], power_mw=1.0)
    stim.on_command(on, 0)
    stim.on_heartbeat(40 * MS)
    assert stim.effective(80 * MS) == on
    assert stim.effective(91 * MS).is_off
