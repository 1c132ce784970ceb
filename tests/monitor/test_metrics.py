"""Metric labels are bounded: policy names only, "other" past the cap, codes from a known list."""

from __future__ import annotations

from prometheus_client import generate_latest

from pangate.monitor.metrics import Labels, Metrics, parse_listen
from pangate.policy.model import parse_policy

POLICY = """
version: 1
identities:
  ci: {roles: [r], static_key: {sha256: "sha256:%s", reason: "test only, no issuer here"}}
roles:
  r: {allow: [{destination: api}]}
destinations:
  api: {host: api.example.com}
""" % ("0" * 64)


def test_only_policy_names_become_label_values():
    m = Metrics()
    m.labels.set_policy(parse_policy(POLICY))
    m.flow("ci", "api", "r/0", "allowed", 2, 0.02)
    m.flow("4111111111111111", "/etc/passwd?x=1", "evil", "weird-decision", 0, None)
    m.event({"event": "token_refused", "code": "made-up-code"})
    text = generate_latest(m.registry).decode()
    assert 'identity="ci"' in text and 'rule="r/0"' in text and 'destination="api"' in text
    assert "4111111111111111" not in text and "/etc/passwd" not in text and "evil" not in text
    assert 'decision="other"' in text and 'code="other"' in text


def test_label_cap():
    labels = Labels(cap=2)
    labels.known["identity"] = {"a", "b", "c"}
    assert [labels.value("identity", n) for n in "abca"] == ["a", "b", "other", "a"]
    assert labels.value("identity", None) == "none"


def test_listen_addresses():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("9464", "host:", ":80", "h:99999"):
        try:
            parse_listen(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
