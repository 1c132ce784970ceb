"""`pangate policy explain`: the gateway's decision for a request, and why."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from harness import VENV_BIN
from pangate.cli.main import main
from pangate.policy.decide import Request, decide
from pangate.policy.model import load_policy

POLICY = """\
version: 1
issuers:
  pangate: {type: pangate, public_key_file: token.pub}
identities:
  billing: {issuer: pangate, roles: [charges]}
  auditor: {issuer: pangate, roles: [readonly]}
  newbie: {issuer: pangate, roles: [trial]}
roles:
  charges:
    allow:
      - destination: stripe
        methods: [GET]
        paths: ["/v1/charges", "/v1/charges/*"]
        query: {limit: "<= 100", expand: absent}
      - destination: stripe
        methods: [POST]
        paths: ["/v1/refunds"]
  readonly:
    allow:
      - destination: docs
  trial:
    mode: report
    allow:
      - destination: docs
destinations:
  stripe: {host: api.stripe.com, card_data: true}
  docs: {host: docs.example.com}
approvers:
  alice: {groups: [leads]}
approvals:
  big-page:
    roles: [charges]
    destination: stripe
    query: {limit: "> 50"}
    approvers: [group:leads]
"""


@pytest.fixture
def policy_file(tmp_path):
    p = tmp_path / "policies.yaml"
    p.write_text(POLICY)
    return str(p)


def explain(policy_file, capsys, *args) -> tuple[int, dict]:
    code = main(["policy", "explain", *args, "--policy", policy_file, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_allow_names_the_rule(policy_file, capsys):
    code, doc = explain(policy_file, capsys, "billing", "get", "https://api.stripe.com/v1/charges/ch_1?limit=10")
    assert code == 0 and doc["decision"] == "allow" and doc["reason"] == "allowed"
    assert doc["rule"] == {"id": "charges/0", "role": "charges", "index": 0, "mode": "enforce", "line": 11,
                           "destination": "stripe", "methods": ["GET"], "paths": ["/v1/charges", "/v1/charges/*"],
                           "query": ["limit <= 100", "expand absent"]}
    assert doc["destination"]["card_data"] is True and doc["approval"] is None and doc["candidates"] == []
    assert doc["request"]["query"] == [["limit", "10"]] and doc["request"]["port"] == 443


def test_allow_says_an_approval_applies(policy_file, capsys):
    code, doc = explain(policy_file, capsys, "billing", "GET", "https://api.stripe.com/v1/charges?limit=60")
    assert code == 0 and doc["approval"]["rule"] == "big-page" and doc["approval"]["mode"] == "hold"
    assert doc["approval"]["approvers"] == ["group:leads"]


def test_deny_names_the_failed_query_constraint(policy_file, capsys):
    code, doc = explain(policy_file, capsys, "billing", "GET",
                        "https://api.stripe.com/v1/charges?limit=500&expand=customer")
    assert code == 1 and doc["decision"] == "deny" and doc["reason"] == "no_rule"
    first = doc["candidates"][0]
    assert first["id"] == "charges/0"
    assert [f["part"] for f in first["failed"]] == ["query", "query"]
    assert "limit <= 100 does not hold (limit=500)" in first["failed"][0]["why"]
    assert "expand=customer" in first["failed"][1]["why"]
    # the other rule fails on more: method and path
    assert [f["part"] for f in doc["candidates"][1]["failed"]] == ["method", "path"]


def test_deny_names_the_wrong_method_and_path(policy_file, capsys):
    code, doc = explain(policy_file, capsys, "billing", "DELETE", "https://api.stripe.com/v1/refunds")
    assert code == 1
    first = doc["candidates"][0]
    assert first["id"] == "charges/1" and first["failed"] == [
        {"part": "method", "why": "DELETE is not one of POST"}]
    code, doc = explain(policy_file, capsys, "billing", "POST", "https://api.stripe.com/v1/refund")
    assert doc["candidates"][0]["failed"] == [
        {"part": "path", "why": "/v1/refund matches none of /v1/refunds"}]


def test_deny_by_destination_and_the_role_that_would_allow(policy_file, capsys):
    code, doc = explain(policy_file, capsys, "auditor", "GET", "https://api.stripe.com/v1/charges")
    assert code == 1 and doc["reason"] == "no_rule"
    assert [f["part"] for f in doc["candidates"][0]["failed"]] == ["destination"]
    assert "docs.example.com" in doc["candidates"][0]["failed"][0]["why"]
    assert [r["id"] for r in doc["other_roles"]] == ["charges/0"]
    assert doc["destination"]["name"] == "stripe" and doc["destination"]["card_data"] is True


def test_unknown_destination_and_identity(policy_file, capsys):
    code, doc = explain(policy_file, capsys, "billing", "GET", "https://evil.example/v1/charges")
    assert code == 1 and doc["reason"] == "unknown_destination" and doc["destination"] is None
    assert all(f["part"] == "destination" for f in doc["candidates"][0]["failed"])
    code, doc = explain(policy_file, capsys, "biling", "GET", "https://api.stripe.com/v1/charges")
    assert code == 1 and doc["reason"] == "unknown_identity" and doc["did_you_mean"] == ["billing"]


def test_refused_before_rules(policy_file, capsys):
    code, doc = explain(policy_file, capsys, "billing", "GET", "https://api.stripe.com/v1/charges/..%2f..%2fadmin")
    assert code == 1 and doc["reason"] == "unsafe_path" and doc["candidates"] == []


def test_report_mode_is_allowed_but_says_so(policy_file, capsys):
    code, doc = explain(policy_file, capsys, "newbie", "GET", "https://api.stripe.com/v1/charges")
    assert code == 0 and doc["decision"] == "report_only" and doc["decide"]["enforced"] is False
    assert doc["candidates"][0]["id"] == "trial/0"


def test_agrees_with_decide(policy_file, capsys):
    """explain answers with the data path's decide(): same outcome for every case here."""
    policy = load_policy(policy_file)
    cases = [("billing", "GET", "/v1/charges", (("limit", "5"),)), ("billing", "GET", "/v1/charges", ()),
             ("billing", "POST", "/v1/refunds", ()), ("auditor", "GET", "/v1/charges", ()),
             ("billing", "GET", "/v1/charges", (("limit", "5"), ("limit", "500")))]
    for who, method, path, query in cases:
        url = f"https://api.stripe.com{path}" + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
        code, doc = explain(policy_file, capsys, who, method, url)
        want = decide(policy, Request(who, "https", "api.stripe.com", 443, method, path, query))
        assert (code == 0) == want.allowed and doc["reason"] == want.reason, (who, method, url)


def test_text_output(policy_file, capsys):
    assert main(["policy", "explain", "billing", "GET", "https://api.stripe.com/v1/charges?limit=500",
                 "--policy", policy_file]) == 1
    out = capsys.readouterr().out
    assert out.startswith("deny: no rule lets billing GET /v1/charges on stripe (no_rule)\n")
    assert f"rule charges/0 (role charges, allow entry 0, {policy_file}:11)" in out
    assert "- query: limit <= 100 does not hold (limit=500)" in out
    assert "destination: stripe (card_data" in out
    assert main(["policy", "explain", "billing", "GET", "https://api.stripe.com/v1/charges?limit=60",
                 "--policy", policy_file]) == 0
    out = capsys.readouterr().out
    assert out.startswith("allow: allowed by rule charges/0") and "approval: rule big-page applies" in out


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "pangate"), "policy", "explain", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PANGATE_DEBUG": ""})


def test_exit_codes_and_one_line_errors(policy_file, tmp_path):
    assert run("billing", "GET", "https://api.stripe.com/v1/charges", "--policy", policy_file).returncode == 0
    assert run("billing", "PUT", "https://api.stripe.com/v1/charges", "--policy", policy_file).returncode == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text(POLICY.replace("roles: [charges]", "roles: [chargez]"))
    cases = [
        (("--policy", str(broken), "billing", "GET", "https://api.stripe.com/"), (f"{broken}:5:", "chargez")),
        (("--policy", str(tmp_path / "none.yaml"), "billing", "GET", "https://api.stripe.com/"), ("none.yaml",)),
        (("--policy", policy_file, "billing", "GET", "ftp://api.stripe.com/"), ("ftp://",)),
        (("--policy", policy_file, "billing", "GET", "https://api.stripe.com:70000/"), ("port",)),
    ]
    for args, words in cases:
        res = run(*args)
        assert res.returncode == 2 and res.stdout == "", res
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
        assert all(w in res.stderr for w in words), res.stderr
    res = run("billing", "GET")  # usage error: argparse's own message, exit 2
    assert res.returncode == 2 and "Traceback" not in res.stderr
