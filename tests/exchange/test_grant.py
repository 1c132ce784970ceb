"""The exchange's pure parts: request forms, listen addresses, token lifetimes."""

from __future__ import annotations

import asyncio
import base64

import jwt
import pytest

from pangate.exchange.grant import (SAML2_BEARER, TOKEN_EXCHANGE, ExchangeError, Exchanger, parse_request,
                                    revoked_reason)
from pangate.exchange.server import parse_listen
from pangate.identity.revocation import RevocationList
from pangate.identity.tokens import Principal, TokenError, keygen
from pangate.policy.model import parse_policy

FORM = "application/x-www-form-urlencoded"
XML = base64.urlsafe_b64encode(b"<saml:Assertion/>").decode().rstrip("=")


def code(content_type, body) -> str:
    with pytest.raises(ExchangeError) as ei:
        parse_request(content_type, body)
    return ei.value.code


def test_forms():
    r = parse_request(FORM, f"grant_type={SAML2_BEARER}&assertion={XML}".encode())
    assert r.kind == "saml" and r.credential == b"<saml:Assertion/>"
    r = parse_request(FORM + "; charset=utf-8", f"grant_type={TOKEN_EXCHANGE}&subject_token=a.b.c&"
                      "subject_token_type=urn:ietf:params:oauth:token-type:jwt".encode())
    assert r.kind == "jwt" and r.credential == "a.b.c"
    assert "a.b.c" not in repr(r)
    assert code("application/json", b"{}") == "bad_content_type"
    assert code(FORM, f"grant_type={SAML2_BEARER}&assertion={XML}&assertion={XML}".encode()) == "repeated_parameter"
    assert code(FORM, f"grant_type={TOKEN_EXCHANGE}&subject_token=a.b.c&actor_token=x&"
                "subject_token_type=urn:ietf:params:oauth:token-type:jwt".encode()) == "delegation_unsupported"
    assert code(FORM, b"grant_type=client_credentials") == "unsupported_grant_type"
    assert code(FORM, b"\xff\xfe") == "malformed_request"
    assert code(FORM, b"&".join([b"a%d=1" % i for i in range(30)])) == "malformed_request"
    not_xml = base64.urlsafe_b64encode(b"hello").decode()
    assert code(FORM, f"grant_type={SAML2_BEARER}&assertion={not_xml}".encode()) == "malformed"


def test_listen():
    assert parse_listen("8443") == ("127.0.0.1", 8443)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("example.com:443", "127.0.0.1:http", "70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_revoked_reason():
    lst = RevocationList({"svc": {"reason": "gone"}}, {"id-1": {"reason": "leaked"}})
    assert "gone" in revoked_reason(lst, "svc", ())
    assert "leaked" in revoked_reason(lst, "other", ("id-1",))
    assert revoked_reason(lst, "other", ("id-2",)) is None


class FakeVerifier:
    def __init__(self, principal=None, error=None):
        self.principal, self.error = principal, error

    async def averify_assertion(self, data):
        if self.error:
            raise self.error
        return self.principal

    averify = averify_assertion


def test_lifetime_is_capped_by_policy_and_source(tmp_path):
    key = str(tmp_path / "k")
    keygen(key)
    policy = parse_policy(f"""
version: 1
issuers:
  pangate: {{type: pangate, public_key_file: {key}.pub}}
  corp:
    type: saml
    issuer: https://idp
    metadata_file: md.xml
    audience: https://sp
    recipient: https://sp/x
    exchange_ttl: 60s
identities:
  svc: {{issuer: corp, subject: s, roles: []}}
roles: {{}}
""")
    now = 1_800_000_000.5
    ex = Exchanger(key, clock=lambda: now)
    pg = ex.issuer_for(policy)

    def run(expires_at, error=None):
        p = Principal(issuer="corp", subject="s", claims={"nameid": "s"}, token_id="a1", expires_at=expires_at,
                      method="saml")
        return asyncio.run(ex.exchange(_Req(), policy=policy, pangate_issuer=pg,
                                       verifier=FakeVerifier(p, error), identity_for=lambda pol, pr: "svc",
                                       is_revoked=lambda n, ids: None))

    out = run(now + 3600)
    claims = jwt.decode(out.body["access_token"], options={"verify_signature": False})
    assert out.status == 200 and claims["exp"] == int(now) + 60  # the issuer's exchange_ttl
    out = run(now + 10.9)
    claims = jwt.decode(out.body["access_token"], options={"verify_signature": False})
    assert claims["exp"] == int(now + 10.9) and claims["exp"] <= now + 10.9  # never after the source
    assert run(now + 0.3).body["code"] == "expired"  # no whole second left: nothing to exchange
    out = run(None, TokenError("keys_unavailable"))
    assert out.status == 503 and out.body["error"] == "temporarily_unavailable"
    assert out.record["outcome"] == "refused" and "access_token" not in str(out.record)


class _Req:
    grant_type = SAML2_BEARER
    kind = "saml"
    credential = b"<x/>"
