"""SAML machine identity end to end: a pysaml2 IdP, a real mitmdump gateway, real HTTPS clients.

Two ways in: an assertion exchanged at the gateway's token endpoint for a
pangate token (RFC 7522 / RFC 8693), or sent directly as the proxy password.
Each refusal comes with its precise code, and nothing of an assertion, a token
or the IdP's key reaches the audit trail, the recordings or the logs.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time

import jwt
import pytest
import requests
from saml_idp import (SHA1, SamlIdp, assertion_from_response, b64url, comment_in_nameid, wrap_signed_inside,
                      wrap_with_injected)

import leakscan
from conftest import json_body, raw_connect
from harness import VENV_BIN
from jwks_issuer import JwksIssuer

SP = "https://pangate.example.test/sp"
EXCHANGE_URL = "https://pangate.example.test/exchange"
SAML2_BEARER = "urn:ietf:params:oauth:grant-type:saml2-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

POLICY = """
version: 1
issuers:
  pangate:
    type: pangate
    public_key_file: {pubkey}
    leeway: 1s
  corp:
    type: saml
    issuer: {entity}
    metadata_file: {metadata}
    audience: {sp}
    recipient: {recipient}
    leeway: 1s
    exchange_ttl: 2m
    accept_in_proxy_auth: true
    mapping:
      subject: nameid
      claims: {{department: department}}
  ci:
    type: oidc
    issuer: {oidc_issuer}
    discovery_url: {oidc_discovery}
    ca_file: {oidc_ca}
    audience: pangate
    leeway: 1s
identities:
  deploy-job:
    issuer: ci
    claims: {{repository: acme/payments, ref: refs/heads/main}}
    roles: [reader]
  svc-payments:
    issuer: corp
    subject: svc-payments@corp.example.test
    claims: {{department: payments}}
    roles: [reader]
  svc-revocable:
    issuer: corp
    subject: svc-revocable@corp.example.test
    roles: [reader]
roles:
  reader:
    allow:
      - destination: upstream
        methods: [GET]
        paths: ["/v1/charges"]
destinations:
  upstream:
    host: localhost
    port: {port}
    addresses: [127.0.0.1/32]
"""


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    return SamlIdp(tmp_path_factory.mktemp("saml-idp"), entity_id="https://idp.corp.example.test/saml")


@pytest.fixture(scope="module")
def rogue(tmp_path_factory):
    return SamlIdp(tmp_path_factory.mktemp("saml-rogue"), entity_id="https://idp.corp.example.test/saml")


@pytest.fixture(scope="module")
def oidc():
    with JwksIssuer(algs=("RS256",)) as issuer:
        yield issuer


@pytest.fixture(scope="module")
def revocations(tmp_path_factory):
    return str(tmp_path_factory.mktemp("saml-revocations") / "revocations.json")


@pytest.fixture(scope="module")
def gw(start_gateway, idp, rogue, oidc, upstream, token_key, revocations):
    policy = POLICY.format(pubkey=token_key + ".pub", entity=idp.entity_id, metadata=idp.metadata_path, sp=SP,
                           recipient=EXCHANGE_URL, port=upstream.port, oidc_issuer=oidc.issuer,
                           oidc_discovery=oidc.discovery_url, oidc_ca=oidc.ca_file)
    gw = start_gateway(policy=policy, options={
        "pangate_exchange_listen": "127.0.0.1:0", "pangate_token_signing_key": token_key,
        "pangate_revocations": revocations, "pangate_auth_free_failures": 1000})
    port = int(gw.log.wait_for(r"pangate exchange listening at https://127\.0\.0\.1:(\d+)/token").group(1))
    gw.exchange_url = f"https://127.0.0.1:{port}/token"
    gw.presented = []  # every assertion and token the tests sent: none may be at rest
    yield gw
    gw.stop()
    secrets_ = list(gw.presented) + [_key_body(idp), _key_body(rogue)]
    found = leakscan.leaks(gw.workdir, gw.log.text(), secrets_)
    assert not found, "assertion, token or key material at rest:\n" + "\n".join(found[:40])


def _key_body(idp) -> str:
    """The IdP's signing key as it would leak: a line of its PEM body (long enough to be unique)."""
    lines = idp.key_pem.decode().splitlines()
    return lines[5]


def assertion(idp, name="svc-payments@corp.example.test", **kw) -> bytes:
    kw.setdefault("audience", SP)
    kw.setdefault("recipient", EXCHANGE_URL)
    kw.setdefault("attributes", {"department": ["payments"]})
    return idp.assertion(name, **kw)


def _signature_value(xml: bytes) -> str:
    m = re.search(rb"SignatureValue>([^<]+)<", xml)
    return "".join(m.group(1).decode().split()) if m else ""


def exchange(gw, form: dict) -> requests.Response:
    s = requests.Session()
    s.trust_env = False
    for v in form.values():
        if len(v) > 100:
            gw.presented.append(v)
    r = s.post(gw.exchange_url, data=form, verify=gw.ca_cert, timeout=15)
    if r.status_code == 200:
        gw.presented.append(r.json()["access_token"])
    return r


def exchange_assertion(gw, xml: bytes) -> requests.Response:
    sig = _signature_value(xml)
    if sig:
        gw.presented.append(sig[:64])
    return exchange(gw, {"grant_type": SAML2_BEARER, "assertion": b64url(xml)})


def url(upstream) -> str:
    return f"https://localhost:{upstream.port}/v1/charges"


def wait_exchange_record(gw, timeout=5.0, **fields) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for rec in gw.audit_records():
            if rec.get("event") == "token_exchange" and all(rec.get(k) == v for k, v in fields.items()):
                return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"no token_exchange {fields} in the audit trail")
        time.sleep(0.05)


# ------------------------------------------------------------------ exchange, then proxy

def test_exchanged_token_works_through_the_gateway(gw, idp, upstream):
    xml = assertion(idp)
    r = exchange_assertion(gw, xml)
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    doc = r.json()
    assert doc["identity"] == "svc-payments" and doc["token_type"] == "Bearer"
    assert doc["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    claims = jwt.decode(doc["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "svc-payments" and claims["pgx"]["iss"] == "corp"
    assert 110 <= doc["expires_in"] <= 120  # capped by the issuer's exchange_ttl (2m)

    res = gw.session("svc-payments", doc["access_token"]).get(url(upstream))
    assert res.status_code == 200, res.text
    rec = gw.records_for(res.headers["X-Pangate-Request-Id"])[0]
    assert rec["identity"]["name"] == "svc-payments" and rec["identity"]["method"] == "exchange"
    assert rec["identity"]["issuer"] == "corp" and rec["identity"]["token_id"] == claims["jti"]
    granted = wait_exchange_record(gw, outcome="granted", token_id=claims["jti"])
    assert granted["identity"] == "svc-payments" and granted["issuer"] == "corp"
    assert granted["subject"] == "svc-payments@corp.example.test" and granted["grant_type"] == "saml2-bearer"
    assert granted["expires_at"] == claims["exp"]
    # A user name other than the token's identity is refused, as for any token.
    status, _, _, body = raw_connect(gw, f"localhost:{upstream.port}", _basic("svc-revocable", doc["access_token"]))
    assert status == 407 and json_body(body)["code"] == "identity_mismatch"


def test_rfc8693_form_with_a_saml2_subject_token(gw, idp, upstream):
    xml = assertion_from_response(idp.response("svc-payments@corp.example.test", audience=SP,
                                               recipient=EXCHANGE_URL, attributes={"department": ["payments"]}))
    r = exchange(gw, {"grant_type": TOKEN_EXCHANGE, "subject_token": b64url(xml),
                      "subject_token_type": "urn:ietf:params:oauth:token-type:saml2"})
    assert r.status_code == 200, r.text
    assert gw.session("svc-payments", r.json()["access_token"]).get(url(upstream)).status_code == 200


def test_oidc_token_exchange(gw, oidc, upstream):
    """RFC 8693 with a CI job's OIDC token: the pangate token keeps the claims the identity is pinned by."""
    token = oidc.mint(sub="repo:acme/payments:ref:refs/heads/main", repository="acme/payments",
                      ref="refs/heads/main", ttl=60)
    gw.presented.append(token)
    r = exchange(gw, {"grant_type": TOKEN_EXCHANGE, "subject_token": token,
                      "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"})
    assert r.status_code == 200, r.text
    assert r.json()["identity"] == "deploy-job" and r.json()["expires_in"] <= 60  # the OIDC token's own exp
    res = gw.session("deploy-job", r.json()["access_token"]).get(url(upstream))
    assert res.status_code == 200, res.text
    rec = wait_exchange_record(gw, outcome="granted", identity="deploy-job")
    assert rec["grant_type"] == "token-exchange" and rec["credential"] == "jwt" and rec["issuer"] == "ci"
    other = oidc.mint(sub="repo:acme/payments:ref:refs/heads/feature", repository="acme/payments",
                      ref="refs/heads/feature")
    r = exchange(gw, {"grant_type": TOKEN_EXCHANGE, "subject_token": other,
                      "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"})
    assert r.status_code == 400 and r.json()["code"] == "unknown_identity", r.text


def test_token_never_outlives_the_assertion_and_expires(gw, idp, upstream):
    xml = assertion(idp, lifetime=3)
    end = time.time() + 3
    r = exchange_assertion(gw, xml)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert exp <= end and r.json()["expires_in"] <= 3
    s = gw.session("svc-payments", token)
    assert s.get(url(upstream)).status_code == 200
    deadline = time.monotonic() + 10
    while True:  # the same tunnel, request after request, until the token's time is up
        res = s.get(url(upstream))
        if res.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert res.status_code == 407 and res.json()["code"] == "expired", res.text
    assert time.time() >= exp
    # And a new connection with it is refused too.
    status, _, _, body = raw_connect(gw, f"localhost:{upstream.port}", f"Bearer {token}")
    assert status == 407 and json_body(body)["code"] == "expired"


def test_exchanged_tokens_follow_revocation(gw, idp, upstream, revocations):
    xml = assertion(idp, "svc-revocable@corp.example.test", attributes={})
    r = exchange_assertion(gw, xml)
    assert r.status_code == 200, r.text
    s = gw.session("svc-revocable", r.json()["access_token"])
    assert s.get(url(upstream)).status_code == 200
    mark = gw.log.mark()
    res = subprocess.run([str(VENV_BIN / "pangate"), "revoke", "svc-revocable", "--reason", "key compromised",
                          "--file", revocations, "--policy", str(gw.policy_path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    gw.log.wait_for(r"revocation list loaded .*: 1 identities", start=mark, timeout=5)
    try:
        refused = s.get(url(upstream))
        assert refused.status_code == 407 and refused.json()["code"] == "revoked", refused.text
        # No new token for a revoked identity either.
        again = exchange_assertion(gw, assertion(idp, "svc-revocable@corp.example.test", attributes={}))
        assert again.status_code == 400 and again.json()["code"] == "revoked", again.text
        wait_exchange_record(gw, outcome="refused", code="revoked", identity="svc-revocable")
    finally:
        mark = gw.log.mark()
        subprocess.run([str(VENV_BIN / "pangate"), "unrevoke", "svc-revocable", "--file", revocations,
                        "--policy", str(gw.policy_path)], capture_output=True, text=True, timeout=30)
        gw.log.wait_for(r"revocation list loaded .*: 0 identities", start=mark, timeout=5)


# ------------------------------------------------------------------ the hostile suite, both ways in

def _hostile(idp, rogue, case: str) -> bytes:
    signed = assertion(idp, "svc-low@corp.example.test")
    return {
        "expired": lambda: assertion(idp, clock_offset=-900),
        "not_yet_valid": lambda: assertion(idp, clock_offset=900),
        "wrong_audience": lambda: assertion(idp, audience="https://other-sp.example.test"),
        "wrong_recipient": lambda: assertion(idp, recipient="https://other-sp.example.test/acs"),
        "unsigned": lambda: assertion(idp, sign=False),
        "signed_response_only": lambda: idp.signed_response_around(assertion(idp, sign=False)),
        "unknown_key": lambda: assertion(rogue),
        "wrapping_injected": lambda: wrap_with_injected(signed, "svc-payments@corp.example.test"),
        "wrapping_nested": lambda: wrap_signed_inside(signed, "svc-payments@corp.example.test"),
        "comment_in_nameid": lambda: comment_in_nameid(
            assertion(idp, "svc-payments@corp.example.test.evil.example"), len("svc-payments@corp.example.test")),
        "sha1": lambda: assertion(idp, algs=SHA1),
    }[case]()


HOSTILE = [("expired", "expired"), ("not_yet_valid", "not_yet_valid"), ("wrong_audience", "bad_audience"),
           ("wrong_recipient", "bad_recipient"), ("unsigned", "unsigned_assertion"),
           ("signed_response_only", "unsigned_assertion"), ("unknown_key", "unknown_key"),
           ("wrapping_injected", "multiple_assertions"), ("wrapping_nested", "multiple_assertions"),
           ("comment_in_nameid", "xml_comment"), ("sha1", "alg_not_allowed")]


@pytest.mark.parametrize("case,code", HOSTILE)
def test_hostile_assertions_are_refused_at_the_exchange(gw, idp, rogue, case, code):
    r = exchange_assertion(gw, _hostile(idp, rogue, case))
    assert r.status_code == 400, r.text
    doc = r.json()
    assert doc["error"] == "invalid_grant" and doc["code"] == code, doc
    assert "access_token" not in doc


@pytest.mark.parametrize("case,code", HOSTILE)
def test_hostile_assertions_are_refused_as_proxy_password(gw, idp, rogue, upstream, case, code):
    xml = _hostile(idp, rogue, case)
    password = b64url(xml)
    gw.presented.append(password)
    status, reason, _, body = raw_connect(gw, f"localhost:{upstream.port}", _basic("svc-payments", password))
    assert status == 407, body
    assert json_body(body)["code"] == code and code in reason
    assert password[:40] not in body.decode()


def test_replayed_assertion(gw, idp, upstream):
    xml = assertion(idp)
    assert exchange_assertion(gw, xml).status_code == 200
    again = exchange_assertion(gw, xml)
    assert again.status_code == 400 and again.json()["code"] == "replayed"
    # Spent for the proxy path as well: one use, whichever way in.
    status, _, _, body = raw_connect(gw, f"localhost:{upstream.port}", _basic("svc-payments", b64url(xml)))
    assert status == 407 and json_body(body)["code"] == "replayed"
    wait_exchange_record(gw, outcome="refused", code="replayed")


def _basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


# ------------------------------------------------------------------ directly as the proxy password

def test_assertion_as_proxy_password(gw, idp, upstream):
    password = b64url(assertion(idp))
    gw.presented.append(password)
    s = requests.Session()
    s.trust_env = False
    s.verify = gw.ca_cert
    s.proxies = {"https": f"http://svc-payments:{password}@127.0.0.1:{gw.port}"}
    r = s.get(url(upstream))
    assert r.status_code == 200, r.text
    rec = gw.records_for(r.headers["X-Pangate-Request-Id"])[0]
    assert rec["identity"]["name"] == "svc-payments" and rec["identity"]["method"] == "saml"
    # The same assertion on a second connection is a replay.
    status, _, _, body = raw_connect(gw, f"localhost:{upstream.port}", _basic("svc-payments", password))
    assert status == 407 and json_body(body)["code"] == "replayed"


# ------------------------------------------------------------------ the endpoint itself

@pytest.mark.parametrize("form,status,code", [
    ({"grant_type": "password", "username": "a", "password": "b"}, 400, "unsupported_grant_type"),
    ({"grant_type": SAML2_BEARER}, 400, "missing_parameter"),
    ({"grant_type": SAML2_BEARER, "assertion": "not base64 !"}, 400, "malformed"),
    ({"grant_type": TOKEN_EXCHANGE, "subject_token": "x.y.z",
      "subject_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, 400, "unsupported_token_type"),
    ({"grant_type": TOKEN_EXCHANGE, "subject_token": "a.b.c",
      "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}, 400, "malformed"),
])
def test_bad_requests(gw, form, status, code):
    r = exchange(gw, form)
    assert r.status_code == status and r.json()["code"] == code, r.text


def test_pangate_tokens_are_not_exchanged_for_fresh_ones(gw, mint):
    r = exchange(gw, {"grant_type": TOKEN_EXCHANGE, "subject_token": mint("svc-payments"),
                      "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"})
    assert r.status_code == 400 and r.json()["code"] in ("not_exchangeable", "unknown_identity"), r.text


def test_endpoint_is_https_post_only(gw):
    s = requests.Session()
    s.trust_env = False
    assert s.get(gw.exchange_url, verify=gw.ca_cert, timeout=10).status_code == 405
    assert s.post(gw.exchange_url.replace("/token", "/other"), verify=gw.ca_cert, timeout=10).status_code == 404
    r = s.post(gw.exchange_url, data="{}", headers={"Content-Type": "application/json"}, verify=gw.ca_cert)
    assert r.status_code == 400 and r.json()["code"] == "bad_content_type"
    with pytest.raises(requests.ConnectionError):
        s.post(gw.exchange_url.replace("https:", "http:"), data={"grant_type": SAML2_BEARER}, timeout=5)


def test_audit_records_hold_no_credentials(gw):
    lines = "\n".join(gw.audit_lines())
    records = [json.loads(x) for x in gw.audit_lines()]
    exchanges = [r for r in records if r.get("event") == "token_exchange"]
    assert any(r["outcome"] == "granted" for r in exchanges) and any(r["outcome"] == "refused" for r in exchanges)
    for secret in gw.presented:
        assert secret not in lines and secret not in gw.log.text()
