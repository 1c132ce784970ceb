"""The monitor stage in a real mitmdump: traffic that trips each detector, and traffic that trips none.

A webhook receiver on loopback collects the alerts; each incident must give
exactly one alert, with its evidence, and the same alerts must be in the
audit trail. The metrics endpoint must count what was sent.
"""

from __future__ import annotations

import base64
import http.client
import re
import time
from datetime import datetime, timezone

import pytest
import requests

from pangate.common.files import create_key_pair

from webhook_receiver import Receiver


def _off_hours() -> str:
    """A one-hour span that excludes now (UTC), every day."""
    h = datetime.now(timezone.utc).hour
    return f"{(h + 2) % 24:02d}:00-{(h + 3) % 24 or 24:02d}:00"


POLICY = """
version: 1
issuers:
  pangate: {{type: pangate, public_key_file: {pubkey}}}
identities:
  calm: {{issuer: pangate, roles: [reader]}}
  denier: {{issuer: pangate, roles: [reader]}}
  bulk: {{issuer: pangate, roles: [reader]}}
  explorer: {{issuer: pangate, roles: [reader, extra]}}
  busy: {{issuer: pangate, roles: [reader]}}
  nightowl: {{issuer: pangate, roles: [reader]}}
  waiter: {{issuer: pangate, roles: [writer]}}
  victim: {{issuer: pangate, roles: [reader]}}
roles:
  reader:
    allow:
      - destination: upstream
        methods: [GET]
        paths: ["/v1/charges", "/public/**"]
  extra:
    allow:
      - {{destination: upstream, methods: [GET], paths: ["/gzip"]}}
  writer:
    allow:
      - {{destination: upstream, methods: [POST], paths: ["/echo"]}}
destinations:
  upstream:
    host: localhost
    port: {port}
    card_data: true
    addresses: [127.0.0.1/32]
approvers:
  alice: {{public_key_file: {approver}}}
approvals:
  export:
    identities: [waiter]
    destination: upstream
    methods: [POST]
    paths: ["/echo"]
    approvers: [alice]
    timeout: 1s
monitor:
  cooldown: 10m
  refusals: {{count: 3, window: 1m}}
  pan_volume: {{count: 20, window: 1m}}
  request_rate: {{count: 25, window: 1m}}
  bad_tokens: {{count: 3, window: 1m, sources: 2}}
  approval_timeouts: {{count: 1, window: 1h}}
  new_access: {{warmup: 0s, warmup_requests: 3}}
  hours:
    timezone: UTC
    identities: {{nightowl: "{hours}"}}
"""


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def _get(s: requests.Session, url: str) -> requests.Response:
    return s.get(url, timeout=20)


def _connect(gw, auth: str, source: str = "127.0.0.1") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15, source_address=(source, 0))
    conn.request("CONNECT", "localhost:443", headers={"Host": "localhost:443", "Proxy-Authorization": auth})
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.fixture(scope="module")
def run(start_gateway, upstream, mint, token_key, receiver, tmp_path_factory):
    keys = tmp_path_factory.mktemp("approver")
    create_key_pair(str(keys / "alice.key"))
    policy = POLICY.format(pubkey=token_key + ".pub", port=upstream.port, approver=keys / "alice.key.pub",
                           hours=_off_hours())
    gw = start_gateway(policy, options={"pangate_alert_webhook": receiver.url,
                                        "pangate_metrics_listen": "127.0.0.1:0", "pangate_control_listen": ""})
    metrics_url = gw.log.wait_for(r"pangate metrics listening at (http://\S+)").group(1)
    base = f"https://localhost:{upstream.port}"
    s = {name: gw.session(name, mint(name)) for name in
         ("calm", "denier", "bulk", "explorer", "busy", "nightowl", "waiter")}
    sent: dict[str, list[int]] = {}

    def get(who, path):
        r = _get(s[who], base + path)
        sent.setdefault(who, []).append(r.status_code)
        return r

    # Harmless: a few allowed requests, one denial, a few PANs.
    for path in ("/public/a", "/v1/charges", "/public/b", "/v1/charges", "/admin"):
        get("calm", path)
    for _ in range(5):
        get("denier", "/admin")  # refusal burst at the third
    for _ in range(7):
        get("bulk", "/v1/charges")  # 3 PANs each: 21 >= 20 at the seventh
    for _ in range(4):
        get("explorer", "/public/x")
    get("explorer", "/gzip")  # a rule it never used, after its warm-up
    for i in range(26):
        get("busy", f"/public/{i}")  # rate: 25 a minute
    get("nightowl", "/public/late")
    r = s["waiter"].post(base + "/echo", json={"x": 1}, timeout=20)  # held, then times out after 1s
    assert r.status_code == 403 and r.json()["code"] == "approval_timed_out", r.text
    for _ in range(3):
        assert _connect(gw, "Bearer not-a-token") == 407  # one source: bad tokens
    bad = "Basic " + base64.b64encode(b"victim:forged").decode()
    assert _connect(gw, bad, "127.0.0.1") == 407
    assert _connect(gw, bad, "127.0.0.2") == 407  # the same name from a second source
    last = get("calm", "/public/end")
    gw.decision(last.headers["X-Pangate-Request-Id"])
    metrics = _scrape_until(metrics_url, 'pangate_requests_total{decision="allowed",destination="upstream",'
                                         'identity="calm",rule="reader/0"} 5.0')
    # A control failure: a broken policy file is rejected (the last good one stays).
    gw.policy_path.write_text(gw.policy_path.read_text() + "\nbogus: [\n")
    gw.log.wait_for(r"policy NOT reloaded")
    gw.log.wait_for(r"pangate alert \S+ control_failure")
    assert gw.stop() == 0
    return gw, sent, metrics


def _scrape_until(url: str, line: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        s = requests.Session()
        s.trust_env = False
        text = s.get(url, timeout=5).text
        if line in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


EXPECTED = {("refusal_burst", "denier"), ("pan_volume", "bulk"), ("new_access", "explorer"),
            ("request_rate", "busy"), ("outside_hours", "nightowl"), ("approval_timeouts", "waiter"),
            ("bad_tokens", None), ("bad_tokens", "victim"), ("control_failure", None)}


def test_one_alert_per_incident_with_evidence(run, receiver):
    gw, sent, _ = run
    trail = [r for r in gw.audit_records() if r.get("event") == "alert"]
    assert trail, "no alert records in the audit trail"
    hooks = receiver.wait(len(trail))
    got = sorted(((b["detector"], b["identity"]) for b in hooks), key=str)
    assert got == sorted(EXPECTED, key=str), got
    assert len(hooks) == len(EXPECTED) == len(trail), (hooks, trail)
    assert {b["alert_id"] for b in hooks} == {r["alert_id"] for r in trail}
    by = {(b["detector"], b["identity"]): b for b in hooks}
    assert by[("refusal_burst", "denier")]["evidence"]["count"] == 3
    assert by[("refusal_burst", "denier")]["evidence"]["window_seconds"] == 60
    bulk_pans = sum(r.get("pans_masked") or 0 for r in gw.audit_records()
                    if r.get("event") == "request" and r["identity"]["name"] == "bulk")
    assert 20 <= by[("pan_volume", "bulk")]["evidence"]["count"] <= bulk_pans
    assert by[("new_access", "explorer")]["evidence"]["rule"] == "extra/0"
    assert by[("request_rate", "busy")]["evidence"]["count"] == 25
    assert by[("approval_timeouts", "waiter")]["evidence"]["rule"] == "export"
    assert by[("bad_tokens", "victim")]["evidence"]["sources"] == 2
    assert by[("control_failure", None)]["evidence"]["event"] == "policy_rejected"
    assert by[("control_failure", None)]["severity"] in ("high", "critical")
    for b in hooks:  # Slack-compatible, and each says what happened
        assert b["text"].startswith(":") and b["detector"] in b["text"], b
    assert not [b for b in hooks if b["identity"] == "calm"]
    assert all(r["alert"] is True and r["severity"] for r in trail)


def test_metrics_match_the_traffic(run):
    gw, sent, text = run

    def value(name: str, **labels) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        m = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    assert value("pangate_requests_total", identity="busy", destination="upstream", rule="reader/0",
                 decision="allowed") == 26
    assert value("pangate_requests_total", identity="denier", destination="upstream", rule="none",
                 decision="denied") == 5
    assert value("pangate_requests_total", identity="calm", destination="upstream", rule="reader/0",
                 decision="allowed") == 5
    bulk_pans = sum(r.get("pans_masked") or 0 for r in gw.audit_records()
                    if r.get("event") == "request" and r["identity"]["name"] == "bulk")
    assert bulk_pans >= 21 and value("pangate_pans_masked_total", identity="bulk", destination="upstream") == bulk_pans
    refused: dict[str, int] = {}
    for r in gw.audit_records():
        if r.get("event") == "token_refused":
            refused[r["code"]] = refused.get(r["code"], 0) + 1
    assert sum(refused.values()) >= 5, refused
    assert {c: value("pangate_token_failures_total", code=c) for c in refused} == refused, text
    assert value("pangate_approvals_total", outcome="pending") == 1
    assert value("pangate_approvals_total", outcome="timed_out") == 1
    assert value("pangate_held_flows") == 0
    assert value("pangate_alerts_total", detector="refusal_burst", severity="high") == 1
    assert "pangate_request_duration_seconds_bucket" in text and "pangate_audit_write_seconds_count" in text
    # Label values come from the policy only: no paths, hosts or raw input.
    labels = set(re.findall(r'="([^"]*)"', text))
    assert not [v for v in labels if "/" in v and v not in {"reader/0", "extra/0", "writer/0"}], labels
    assert "localhost" not in labels and "victim:forged" not in text

