"""The detectors on their own, with a clock the test moves: thresholds, baselines, cooldowns."""

from __future__ import annotations

import pytest

from pangate.monitor.config import MonitorConfig, Threshold, parse_hours
from pangate.monitor.detectors import Detectors, FlowFacts
from pangate.monitor.store import MemoryStore
from pangate.policy.errors import PolicyError
from pangate.policy.model import parse_policy


class Clock:
    def __init__(self, t: float = 1_700_000_000.0):  # a Tuesday, 22:13 UTC
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(**kw) -> tuple[Detectors, Clock]:
    clock = Clock()
    base = dict(cooldown=60, warmup=0, warmup_requests=3)
    return Detectors(MonitorConfig(**{**base, **kw}), MemoryStore(), clock), clock


def allowed(who="reader", rule="r/0", dest="upstream", pans=0) -> FlowFacts:
    return FlowFacts(who, "allowed", "127.0.0.1", rule=rule, destination=dest, pans=pans)


def test_refusal_burst_fires_once_per_incident_then_again_after_cooldown():
    d, clock = make(refusals=Threshold(3, 60))
    denied = FlowFacts("reader", "denied", "127.0.0.1", code="no_rule")
    alerts = [a for _ in range(10) for a in d.observe_flow(denied)]
    assert [a.detector for a in alerts] == ["refusal_burst"]
    assert alerts[0].evidence["count"] == 3 and alerts[0].evidence["window_seconds"] == 60
    assert alerts[0].identity == "reader" and alerts[0].severity == "high"
    clock.t += 61
    assert [a.detector for _ in range(3) for a in d.observe_flow(denied)] == ["refusal_burst"]


def test_refusals_spread_over_time_do_not_fire():
    d, clock = make(refusals=Threshold(3, 60))
    for _ in range(10):
        assert d.observe_flow(FlowFacts("reader", "denied")) == []
        clock.t += 31


def test_pan_volume_threshold_and_jump_over_usual():
    d, clock = make(pan_volume=Threshold(1000, 60, factor=5, floor=50), request_rate=None, new_access=False)
    for _ in range(4):  # usual: 10 PANs per minute
        assert d.observe_flow(allowed(pans=10)) == []
        clock.t += 60
    alerts = d.observe_flow(allowed(pans=80))
    assert [a.detector for a in alerts] == ["pan_volume"] and alerts[0].evidence["usual"] == pytest.approx(10)
    d2, _ = make(pan_volume=Threshold(100, 60), request_rate=None, new_access=False)
    assert d2.observe_flow(allowed(pans=60)) == []
    assert [a.detector for a in d2.observe_flow(allowed(pans=60))] == ["pan_volume"]


def test_new_access_only_after_warmup():
    d, clock = make(request_rate=None)
    for _ in range(3):
        assert d.observe_flow(allowed()) == []
    assert d.observe_flow(allowed()) == []  # known destination and rule
    alerts = d.observe_flow(allowed(rule="w/0"))
    assert [a.detector for a in alerts] == ["new_access"] and alerts[0].evidence["new"] == ["rule"]
    assert d.observe_flow(allowed(rule="w/0")) == []  # learned


def test_bad_tokens_per_source_and_across_sources():
    d, _ = make(bad_tokens=Threshold(3, 60), bad_token_sources=2)
    bad = [FlowFacts(None, "token_refused", "10.0.0.1", claimed="reader", code="bad_signature")] * 3
    out = [a for f in bad for a in d.observe_flow(f)]
    assert [a.evidence.get("source") for a in out] == ["10.0.0.1"]
    out = d.observe_flow(FlowFacts(None, "token_refused", "10.0.0.2", claimed="reader", code="expired"))
    assert [a.evidence.get("sources") for a in out] == [2]
    assert d.observe_flow(FlowFacts(None, "token_refused", "10.0.0.9", code="missing_token")) == []


def test_outside_hours():
    d, clock = make(hours={"reader": parse_hours("Mon-Fri 08:00-18:00")}, request_rate=None, new_access=False)
    out = d.observe_flow(allowed())  # Tue 22:13
    assert [a.detector for a in out] == ["outside_hours"] and out[0].evidence["declared"] == "Mon-Fri 08:00-18:00"
    clock.t += 10 * 3600 + 60  # Wed 08:14
    d.store.release("cooldown:outside_hours:reader")
    assert d.observe_flow(allowed()) == []
    night = parse_hours("Mon-Fri 22:00-02:00")
    assert night.allows(5, 60) and not night.allows(6, 60)  # Sat 01:00 belongs to Friday's shift


def test_control_failures_and_recovery_and_backlog():
    d, _ = make()
    first = d.observe_event({"event": "audit_write_failed", "reason": "ENOSPC"})
    assert [a.severity for a in first] == ["critical"] and first[0].evidence["detail"] == "ENOSPC"
    assert d.observe_event({"event": "audit_write_failed", "reason": "ENOSPC"}) == []
    d.observe_event({"event": "audit_write_recovered"})
    assert len(d.observe_event({"event": "audit_write_failed", "reason": "EIO"})) == 1
    assert d.observe_backlog(5, {"x": 20000}) == []  # first sight
    assert [a.evidence["backlog"] for a in d.observe_backlog(5, {"x": 20500})] == ["export:x"]
    assert d.observe_backlog(5, {"x": 20600}) == []  # cooldown
    timeouts = d.observe_event({"event": "approval_timed_out", "requester": "writer", "rule": "big"})
    assert [a.detector for a in timeouts] == ["approval_timeouts"]


def test_monitor_section_parses_and_errors_name_the_line():
    p = parse_policy("version: 1\nmonitor:\n  refusals: {count: 3, window: 30s}\n  pan_volume: false\n")
    assert p.monitor.refusals == Threshold(3, 30) and p.monitor.pan_volume is None
    assert parse_policy("version: 1\n").monitor.refusals.count == 20
    with pytest.raises(PolicyError, match=r":3: monitor.hours.identities.ghost: unknown identity"):
        parse_policy("version: 1\nmonitor:\n  hours: {identities: {ghost: 'Mon 08:00-09:00'}}\n")
    with pytest.raises(PolicyError, match="monitor.refusals.count"):
        parse_policy("version: 1\nmonitor:\n  refusals: {count: lots}\n")
