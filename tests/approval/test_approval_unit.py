"""Approval bookkeeping, signed control calls and their validation, without a proxy."""

from __future__ import annotations

import asyncio
import json

import pytest
from cryptography.hazmat.primitives import serialization
from mitmproxy.test import taddons, tflow

from pangate.common import events
from pangate.approval.addon import ApprovalHold, request_digest
from pangate.approval.model import UI_APPROVER, Ledger, VoteRefused, eligible, rule_for
from pangate.control.calls import CallRefused, CallVerifier, approver_keys, load_public_key, parse_listen, sign_call
from pangate.policy.decide import Request
from pangate.policy.model import parse_policy
from pangate.identity.tokens import keygen
from pangate.common.webhook import check_url
from pangate.policy.errors import PolicyError

POLICY = """
version: 1
issuers:
  pangate: {{type: pangate, public_key_file: {issuer}}}
identities:
  writer: {{issuer: pangate, roles: [ops]}}
  reader: {{issuer: pangate, roles: [read]}}
roles:
  ops:
    allow: [{{destination: api, methods: [POST, PUT], paths: ["/**"]}}]
  read:
    allow: [{{destination: api, paths: ["/**"]}}]
destinations:
  api: {{host: api.example.com}}
approvers:
  alice: {{groups: [leads], public_key_file: {alice}}}
  bob: {{groups: [leads], public_key_file: {bob}}}
  carol: {{groups: [other]}}
  writer: {{groups: [leads]}}
approvals:
  refunds:
    identities: [writer]
    methods: [POST]
    paths: ["/v1/refunds"]
    approvers: ["group:leads"]
    required: 2
    timeout: 30s
  export:
    roles: [read]
    destination: api
    paths: ["/v1/export"]
    query: {{limit: "> 50"}}
    approvers: [bob]
    mode: grant
    grant_window: 10m
"""


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def keys(tmp_path):
    for name in ("issuer", "alice", "bob"):
        keygen(tmp_path / f"{name}.key")
    return tmp_path


@pytest.fixture
def policy(keys):
    return parse_policy(POLICY.format(issuer=keys / "issuer.key.pub", alice=keys / "alice.key.pub",
                                      bob=keys / "bob.key.pub"))


def _req(identity="writer", method="POST", path="/v1/refunds", query=()):
    return Request(identity, "https", "api.example.com", 443, method, path, tuple(query))


def _priv(keys, name):
    return serialization.load_pem_private_key((keys / f"{name}.key").read_bytes(), None)


def test_rule_matching(policy):
    assert rule_for(policy, _req(), "api").name == "refunds"
    assert rule_for(policy, _req(method="PUT"), "api") is None
    assert rule_for(policy, _req("reader", "GET", "/v1/refunds"), "api") is None
    assert rule_for(policy, _req("reader", "GET", "/v1/export", [("limit", "80")]), "api").name == "export"
    assert rule_for(policy, _req("reader", "GET", "/v1/export", [("limit", "10")]), "api") is None
    assert rule_for(policy, _req("reader", "GET", "/v1/export", [("limit", "80")]), "other") is None


def test_eligibility_by_name_and_group(policy):
    refunds, export = policy.approvals["refunds"], policy.approvals["export"]
    assert eligible(policy, refunds, "alice") and not eligible(policy, refunds, "carol")
    assert eligible(policy, export, "bob") and not eligible(policy, export, "alice")
    assert not eligible(policy, refunds, "mallory")


def test_four_eyes_and_two_distinct_approvers(policy):
    ledger = Ledger()
    p = ledger.open(policy.approvals["refunds"], "writer", {}, "rid")
    with pytest.raises(VoteRefused, match="four eyes"):
        ledger.vote(policy, p.id, "writer", True)  # an approver named like the requester
    with pytest.raises(VoteRefused, match="not an approver"):
        ledger.vote(policy, p.id, "carol", True)
    assert ledger.vote(policy, p.id, "alice", True).status == "pending"
    with pytest.raises(VoteRefused, match="already approved"):
        ledger.vote(policy, p.id, "alice", True)
    done = ledger.vote(policy, p.id, "bob", True)
    assert done.status == "granted" and done.votes == ["alice", "bob"] and done.decided_by == "bob"
    with pytest.raises(VoteRefused, match="no pending"):
        ledger.vote(policy, p.id, "bob", False)


def test_one_denial_ends_it(policy):
    ledger = Ledger()
    p = ledger.open(policy.approvals["refunds"], "writer", {}, None)
    ledger.vote(policy, p.id, "alice", True)
    d = ledger.vote(policy, p.id, UI_APPROVER, False, "killed in mitmweb")
    assert d.status == "denied" and d.decided_by == UI_APPROVER and d.reason == "killed in mitmweb"
    assert p.id not in ledger.pending


def test_grant_window_and_expiry(policy):
    clock = Clock()
    ledger = Ledger(clock)
    rule = policy.approvals["export"]
    p = ledger.open(rule, "reader", {}, None)
    assert ledger.find_open("reader", "export") is p and ledger.granted("reader", "export") is None
    ledger.vote(policy, p.id, "bob", True)
    assert ledger.granted("reader", "export") is p and ledger.granted("writer", "export") is None
    clock.now += rule.grant_window + 1
    assert ledger.granted("reader", "export") is None
    q = ledger.open(rule, "reader", {}, None)
    clock.now += rule.timeout + 1
    assert ledger.expire() == [q] and q.status == "timed_out"


def test_revoke_ends_grants_and_waits(policy):
    ledger = Ledger()
    p = ledger.open(policy.approvals["export"], "reader", {}, None)
    ledger.vote(policy, p.id, "bob", True)
    q = ledger.open(policy.approvals["export"], "reader", {}, None)
    assert ledger.revoke("reader") == [q] and q.status == "denied"
    assert ledger.granted("reader", "export") is None


def test_signed_calls(policy, keys):
    clock = Clock()
    v = CallVerifier(approver_keys(policy), clock)
    body, auth = sign_call(_priv(keys, "alice"), "alice", "approve", "apr_1")
    clock.now = json.loads(body)["ts"]
    assert v.check(body, auth)["approver"] == "alice"
    with pytest.raises(CallRefused, match="replay"):
        v.check(body, auth)
    body, auth = sign_call(_priv(keys, "bob"), "alice", "approve", "apr_1")  # bob's key, alice's name
    with pytest.raises(CallRefused, match="bad signature"):
        v.check(body, auth)
    body, auth = sign_call(_priv(keys, "alice"), "alice", "approve", "apr_1")
    with pytest.raises(CallRefused, match="bad signature"):
        v.check(body.replace(b'"action": "approve"', b'"action": "deny"'), auth)  # a changed decision
    clock.now += 600
    with pytest.raises(CallRefused, match="too old"):
        v.check(body, auth)
    with pytest.raises(CallRefused, match="not an approver"):
        v.check(*sign_call(_priv(keys, "alice"), "carol", "list"))  # carol has no key
    with pytest.raises(CallRefused, match="sign the call"):
        v.check(body, None)


def test_approver_may_not_hold_a_token_key(policy, keys):
    bad = POLICY.format(issuer=keys / "issuer.key.pub", alice=keys / "issuer.key.pub", bob=keys / "bob.key.pub")
    with pytest.raises(ValueError, match="must not be able to mint"):
        approver_keys(parse_policy(bad))
    with pytest.raises(ValueError, match="cannot read"):
        load_public_key(str(keys / "missing.pub"))


def test_policy_refuses_an_inline_key(keys):
    text = POLICY.format(issuer=keys / "issuer.key.pub", alice=keys / "alice.key.pub", bob=keys / "bob.key.pub")
    text = text.replace("carol: {groups: [other]}", "carol: {groups: [other], key: abc}")
    with pytest.raises(PolicyError, match="public_key_file"):
        parse_policy(text)


def test_options_are_validated():
    assert parse_listen("") is None and parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8089") == ("::1", 8089)
    for bad in ("0.0.0.0:8089", "10.0.0.1:80", "127.0.0.1", "localhost:99999"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert check_url("https://hooks.example.com/x") is None and check_url("http://127.0.0.1:9/x") is None
    assert "loopback" in check_url("http://hooks.example.com/x")
    assert "credentials" in check_url("https://u:p@hooks.example.com/x")
    assert check_url("ftp://x") is not None


def test_digest_sees_any_edit():
    f = tflow.tflow()
    d = request_digest(f.request)
    for edit in (lambda r: setattr(r, "path", "/other"), lambda r: r.headers.add("X", "1"),
                 lambda r: setattr(r, "content", b"changed"), lambda r: setattr(r, "method", "PUT")):
        g = tflow.tflow()
        edit(g.request)
        assert request_digest(g.request) != d
    assert request_digest(tflow.tflow().request) == d


class _Store:
    def __init__(self, policy):
        self.policy = policy

    def subscribe(self, fn):
        fn(self.policy)


def test_revocation_answers_a_held_flow(policy):
    """An identity revoked while its request waits: the hold ends with a 403 at once."""
    approval = ApprovalHold(_Store(policy))
    seen = []
    events.subscribe(seen.append)

    async def scenario():
        f = tflow.tflow()
        f.request.host, f.request.method, f.request.path = "api.example.com", "POST", "/v1/refunds"
        f.request.content = b'{"card": "4242424242424242"}'
        f.metadata["pangate"] = {"identity": {"name": "writer", "token_id": "t1"},
                                 "decision": {"outcome": "allowed", "destination": "api"}}
        task = asyncio.ensure_future(approval.request(f))
        while not approval.held:
            await asyncio.sleep(0.01)
        assert f.intercepted and b"4242424242424242" not in f.request.content  # masked while held
        events.emit("revoked", identity=None, jti="t1")
        await asyncio.wait_for(task, 2)
        return f

    try:
        with taddons.context(approval):
            f = asyncio.run(scenario())
    finally:
        events.unsubscribe(seen.append)
        events.unsubscribe(approval._event)
    assert f.response.status_code == 403 and not f.intercepted
    assert json.loads(f.response.content)["code"] == "approval_denied"
    assert "revoked" in json.loads(f.response.content)["reason"]
    assert f.metadata["pangate"]["approval"]["status"] == "denied"
    kinds = [e["event"] for e in seen]
    assert "approval_pending" in kinds and "approval_denied" in kinds
