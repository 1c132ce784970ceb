"""deploy/github/pangate-egress.yml: valid YAML with every step a user needs, in order."""

from __future__ import annotations

import subprocess

import yaml

from deploy_helpers import DEPLOY

WORKFLOW = DEPLOY / "github" / "pangate-egress.yml"


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps() -> list[dict]:
    [job] = workflow()["jobs"].values()
    return job["steps"]


def test_asks_for_an_id_token():
    doc = workflow()
    triggers = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers
    assert doc["permissions"]["id-token"] == "write"
    assert doc["permissions"].get("contents") == "read"  # nothing else


def test_token_request_proxy_and_trust():
    runs = [s.get("run", "") for s in steps()]
    trust = next(i for i, r in enumerate(runs) if "update-ca-certificates" in r)
    call = next(i for i, r in enumerate(runs) if "ACTIONS_ID_TOKEN_REQUEST_URL" in r)
    assert trust < call
    t = runs[trust]
    assert "/usr/local/share/ca-certificates/pangate.crt" in t
    assert "NODE_EXTRA_CA_CERTS" in t and "REQUESTS_CA_BUNDLE" in t and "GITHUB_ENV" in t
    c = runs[call]
    assert 'Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN' in c
    assert "audience=pangate" in c and "::add-mask::" in c
    # The token is fetched before HTTPS_PROXY is set (that call goes to GitHub, not through pangate).
    assert c.index("ACTIONS_ID_TOKEN_REQUEST_URL") < c.index("export HTTPS_PROXY=")
    assert 'export HTTPS_PROXY="http://${PANGATE_IDENTITY}:${token}@${PANGATE_GATEWAY}"' in c
    assert "https_proxy=" in c and "NO_PROXY=" in c
    # The proxy never leaks into the job's environment for other actions.
    assert not any("HTTPS_PROXY" in r and "GITHUB_ENV" in r.split("HTTPS_PROXY")[1][:80] for r in runs)
    for r in runs:
        subprocess.run(["bash", "-n"], input=r, text=True, check=True)


def test_identity_matches_the_policy_recipe():
    [job] = workflow()["jobs"].values()
    policy = yaml.safe_load((DEPLOY / "github" / "policies.yaml").read_text())
    issuer = policy["issuers"]["github-actions"]
    assert issuer["issuer"] == "https://token.actions.githubusercontent.com"
    assert issuer["audience"] == "pangate"
    ident = policy["identities"][job["env"]["PANGATE_IDENTITY"]]
    assert ident["issuer"] == "github-actions"
    assert set(ident["claims"]) == {"repository", "ref"}
