"""The event bus: what is raised before the audit trail listens still reaches it."""

from __future__ import annotations

from pangate.common import events


def test_events_raised_before_the_recorder_subscribes_reach_it():
    early, recorded = [], []
    events.subscribe(early.append)  # another listener (approvals) was there first
    try:
        events.emit("policy_loaded", path="policies.yaml")
        events.subscribe(recorded.append, records=True)
        events.emit("policy_reloaded", path="policies.yaml")
        assert [e["event"] for e in early] == ["policy_loaded", "policy_reloaded"]
        assert [e["event"] for e in recorded if e["event"].startswith("policy_")] == ["policy_loaded",
                                                                                      "policy_reloaded"]
    finally:
        events.unsubscribe(early.append)
        events.unsubscribe(recorded.append)
