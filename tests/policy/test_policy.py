"""The policy model and the access decision, without a proxy."""

from __future__ import annotations

import subprocess

import pytest

from pangate.policy.decide import Request, decide, decide_connect, path_matches
from pangate.policy.model import parse_policy
from pangate.policy.errors import PolicyError

from harness import ROOT, VENV_BIN

BASE = """version: 1
issuers:
  pangate: {type: pangate, public_key_file: k.pub}
identities:
  svc: {issuer: pangate, roles: [r]}
  shadow: {issuer: pangate, roles: [rollout]}
roles:
  r:
    allow:
      - destination: api
        methods: [GET, POST]
        paths: ["/v1/charges", "/v1/charges/*", "/files/**"]
        query: {limit: "<= 100", expand: "absent"}
  rollout:
    mode: report
    allow: []
destinations:
  api: {host: api.example.com, card_data: true}
  wild: {hosts: ["*.internal.example"], port: 8443}
  meta: {host: 169.254.169.254, scheme: http}
"""


def req(**kw) -> Request:
    base = dict(identity="svc", scheme="https", host="api.example.com", port=443, method="GET",
                path="/v1/charges", query=(), host_header="api.example.com", sni="api.example.com")
    base.update(kw)
    return Request(**base)


@pytest.fixture(scope="module")
def policy():
    return parse_policy(BASE, "p.yaml")


@pytest.mark.parametrize("kw,allowed,reason", [
    ({}, True, "allowed"),
    ({"method": "DELETE"}, False, "no_rule"),
    ({"path": "/v1/charges/ch_1"}, True, "allowed"),
    ({"path": "/v1/charges/ch_1/refund"}, False, "no_rule"),
    ({"path": "/files/a/b/c.csv"}, True, "allowed"),
    ({"path": "/files"}, True, "allowed"),
    ({"path": "/files/../admin"}, False, "unsafe_path"),
    ({"path": "/files/%2e%2e/admin"}, False, "unsafe_path"),
    ({"path": "//admin/v1/charges"}, False, "unsafe_path"),
    ({"path": "/v1/charges/..;/admin"}, False, "unsafe_path"),
    ({"path": "/v1/charges;jsessionid=x"}, False, "unsafe_path"),
    ({"path": "/v1/charges\\..\\admin"}, False, "unsafe_path"),
    ({"path": "/v1/charges#frag"}, False, "unsafe_path"),
    ({"path": "/v1/charges/ch%5F1"}, True, "allowed"),
    ({"path": "/v1/charges/ch%23vip"}, True, "allowed"),  # an encoded # is data, not a fragment
    ({"path": "/v1/charges/a%5Cb"}, False, "unsafe_path"),
    ({"query": (("limit", "100"),)}, True, "allowed"),
    ({"query": (("limit", "101"),)}, False, "no_rule"),
    ({"query": (("limit", "10"), ("limit", "1000"))}, False, "ambiguous_query"),  # twice: refused, whatever the values
    ({"query": (("limit", "ten"),)}, False, "no_rule"),
    ({"query": (("expand", "card"),)}, False, "no_rule"),
    ({"identity": "nobody"}, False, "unknown_identity"),
    ({"host": "evil.example.com", "host_header": None, "sni": None}, False, "unknown_destination"),
    ({"port": 8443}, False, "unknown_destination"),
    ({"scheme": "http", "port": 443}, False, "unknown_destination"),
    ({"host_header": "other.example.com"}, False, "host_mismatch"),
    ({"host_header": "api.example.com:443"}, True, "allowed"),
    ({"sni": "other.example.com"}, False, "host_mismatch"),
    ({"identity": "shadow"}, True, "report_only"),
])
def test_decide(policy, kw, allowed, reason):
    d = decide(policy, req(**kw))
    assert (d.allowed, d.reason) == (allowed, reason), d.detail


def test_report_mode_is_not_enforced(policy):
    d = decide(policy, req(identity="shadow"))
    assert d.allowed and not d.enforced and d.outcome == "report_only"


def test_metadata_and_ip_literals_need_naming(policy):
    d = decide(policy, req(scheme="http", host="169.254.169.254", port=80, host_header=None, sni=None))
    assert not d.allowed and d.reason == "address_not_allowed" and "metadata" in d.detail


def test_connect_precheck(policy):
    assert decide_connect(policy, "svc", "api.example.com", 443).allowed
    assert decide_connect(policy, "svc", "x.internal.example", 8443).reason == "no_rule"
    assert decide_connect(policy, "svc", "internal.example", 8443).reason == "unknown_destination"


def test_approval_triggers_cannot_be_dodged():
    from pangate.policy.decide import path_triggers, query_triggers
    from pangate.policy.model import QueryRule

    big = (QueryRule("limit", ">", 50.0, 1),)
    assert query_triggers(big, (("limit", "1"), ("limit", "5000")))  # any value counts
    assert query_triggers(big, (("limit", "5000abc"),)) and query_triggers(big, (("LIMIT[]", "5000"),))
    assert not query_triggers(big, (("limit", "10"),))
    assert not query_triggers(big, ())
    assert path_triggers("/v1/refunds/**", "/V1/Refunds/x") and path_triggers("/v1/charges", "/v1/charges/")


def test_path_patterns():
    assert path_matches("/a/*", "/a/b") and not path_matches("/a/*", "/a/b/c")
    assert path_matches("/a/**", "/a/b/c") and path_matches("/a/**", "/a")
    assert not path_matches("/a/**", "/ab")


@pytest.mark.parametrize("text,line,fragment", [
    ("version: 2\n", 1, "only version 1"),
    ("version: 1\nrolez: {}\n", 2, "unknown key"),
    ("version: 1\nroles:\n  r:\n    allow:\n      - destination: nope\n", 5, "unknown destination 'nope'"),
    ("version: 1\nidentities:\n  a:\n    roles: [ghost]\n    issuer: x\n", 4, "unknown role 'ghost'"),
    ("version: 1\ndestinations:\n  d:\n    host: a.example\n    port: seventy\n", 5, "whole number"),
    ("version: 1\ndestinations:\n  d:\n    host: a.example\n    credential: {type: bearer, token: abc}\n", 5,
     "secret written in the policy"),
    ("version: 1\ndestinations:\n  d:\n    host: a.example\n    credential:\n      type: header\n      env: X\n", 6,
     "needs the header name"),
    ("version: 1\ndestinations:\n  d: {host: a.example}\nroles:\n  r:\n    allow:\n      - destination: d\n"
     "        methods: [FETCH]\n", 8, "unknown method 'FETCH'"),
    ("version: 1\ndestinations:\n  d:\n    host: a.example\n    credential: {type: mtls, file: c.pem}\n", 5,
     "needs file (certificate) and key_file"),
    ("version: 1\ndestinations:\n  d:\n    host: a.example\n    credential: {type: basic, password: hunter2}\n", 5,
     "secret written in the policy"),
    ("version: 1\ndestinations:\n  d:\n    host: a.example\n    addresses: [10.0.0.0/33]\n", 5,
     "is not an address or network"),
    ("version: 1\nidentities:\n  a:\n    roles: []\n    token: abc\n", 5, "tokens are never written in the policy"),
    ("version: 1\nidentities:\n  a:\n    roles: []\n", 4, "proven by an issuer's token or a declared static_key"),
    ("version: 1\nissuers:\n  i: {type: oidc, issuer: x, jwks_uri: http://idp/jwks}\n", 3, "only fetched over https"),
    ("version: 1\nissuers:\n  i: {type: oidc, issuer: x, jwks_file: j, algorithms: [HS256]}\n", 3,
     "asymmetric algorithms only"),
    ("version: 1\nroles: [\n", 3, "YAML syntax"),
    ("version: 1\nroles:\n  a: {}\n  a: {}\n", 4, "duplicate key"),
])
def test_policy_errors_name_file_and_line(text, line, fragment):
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "bad.yaml")
    assert e.value.path == "bad.yaml"
    assert fragment in e.value.message
    assert e.value.line == line, str(e.value)


def test_example_policy_is_valid():
    out = subprocess.run([str(VENV_BIN / "pangate"), "policy", "check", str(ROOT / "policies.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ok:" in out.stdout


def test_policy_check_reports_file_line_reason(tmp_path):
    bad = tmp_path / "policies.yaml"
    bad.write_text("version: 1\nroles:\n  r:\n    allow:\n      - destination: nowhere\n")
    out = subprocess.run([str(VENV_BIN / "pangate"), "policy", "check", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert f"{bad}:5: roles.r.allow[0].destination: unknown destination 'nowhere'" in out.stderr


@pytest.mark.parametrize("value,ok", [("inactive", "inactive"), ("in [a, b]", ("a", "b")), ("== in", "in")])
def test_query_word_operators_need_a_space(value, ok):
    p = parse_policy(BASE.replace('query: {limit: "<= 100", expand: "absent"}', f'query: {{status: "{value}"}}'), "q.yaml")
    rule = p.roles["r"].rules[0].query[0]
    assert rule.value == ok


def test_query_booleans_are_refused():
    with pytest.raises(PolicyError, match="quoted value"):
        parse_policy(BASE.replace('query: {limit: "<= 100", expand: "absent"}', "query: {flag: yes}"), "q.yaml")


def test_a_rejected_reload_changes_no_listener(tmp_path):
    """Listeners that accepted the new file are put back when a later one refuses it."""
    from pangate.policy.addon import PolicyStore

    path = tmp_path / "p.yaml"
    path.write_text(BASE)
    store, seen = PolicyStore(), []
    store.subscribe(lambda p: seen.append(p.digest))

    def picky(p):
        if "refuse-me" in p.destinations:
            raise ValueError("cannot use this policy")
    store.subscribe(picky)
    store._load(str(path))
    good = store.policy.digest
    path.write_text(BASE + "  refuse-me: {host: r.example}\n")
    with pytest.raises(ValueError):
        store._load(str(path))
    assert store.policy.digest == good and seen[-1] == good
