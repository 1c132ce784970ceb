"""SAML assertions as machine identity: a real IdP (pysaml2 + xmlsec1) and the attacks SAML verifiers fall to.

Every refusal is asserted by its precise reason code, so a check that stops
working fails its test instead of being masked by a later one.
"""

from __future__ import annotations

import asyncio
import base64
import time

import jwt
import pytest
from lxml import etree
from saml_idp import (SHA1, SamlIdp, assertion_from_response, b64url, comment_in_nameid, tamper_name_id,
                      wrap_signed_inside, wrap_with_injected)

from pangate.identity import saml
from pangate.identity.replay import MemoryReplayCache, ReplayCacheFull
from pangate.identity.tokens import EXCHANGE_CLAIM, TokenError, TokenVerifier, issue, keygen
from pangate.policy.errors import PolicyError
from pangate.policy.model import Issuer, parse_policy

AUD = "https://pangate.example.test/sp"
REC = "https://pangate.example.test/exchange"


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    return SamlIdp(tmp_path_factory.mktemp("idp"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory):
    """Another IdP claiming the same entity id, with its own key: not in the trusted metadata."""
    return SamlIdp(tmp_path_factory.mktemp("rogue"))


def cfg(idp, **kw) -> Issuer:
    base = dict(name="corp", type="saml", issuer=idp.entity_id, audience=AUD, recipients=(REC,),
                metadata_file=str(idp.metadata_path), leeway=5.0)
    return Issuer(**{**base, **kw})


def verifier(idp, **kw) -> TokenVerifier:
    return TokenVerifier([cfg(idp, **kw)], replay=MemoryReplayCache())


def make(idp, name="svc-payments@corp.example.test", **kw) -> bytes:
    kw.setdefault("audience", AUD)
    kw.setdefault("recipient", REC)
    return idp.assertion(name, **kw)


def reason(v: TokenVerifier, data: bytes, **kw) -> str:
    with pytest.raises(TokenError) as ei:
        v.verify_assertion(data, **kw)
    return ei.value.reason


# ----------------------------------------------------------------- what is accepted

def test_valid_assertion_maps_nameid_and_attributes(idp):
    v = verifier(idp, claim_map=(("department", "department"), ("upn", "nameid")))
    a = make(idp, attributes={"department": ["payments"]})
    p = v.verify_assertion(a)
    assert (p.issuer, p.subject, p.method, p.static) == ("corp", "svc-payments@corp.example.test", "saml", False)
    assert p.claims == {"nameid": "svc-payments@corp.example.test", "department": "payments",
                        "upn": "svc-payments@corp.example.test"}
    assert p.token_id and p.expires_at and 250 < p.expires_at - time.time() <= 300


def test_subject_from_an_attribute(idp):
    v = verifier(idp, subject_from="serviceAccount")
    p = v.verify_assertion(make(idp, "opaque-persistent-id-1", attributes={"serviceAccount": ["payments-batch"]}))
    assert p.subject == "payments-batch" and p.claims["nameid"] == "opaque-persistent-id-1"
    # Many values cannot name one subject; a missing attribute neither.
    assert reason(v, make(idp, attributes={"serviceAccount": ["a", "b"]})) == "unmapped_subject"
    assert reason(v, make(idp)) == "unmapped_subject"


def test_idp_authn_response_and_its_extracted_assertion(idp):
    """What the IdP's own authn response builder emits: the Response, or its Assertion alone (RFC 7522)."""
    v = verifier(idp)
    assert v.verify_assertion(idp.response("svc-a", audience=AUD, recipient=REC)).subject == "svc-a"
    one = assertion_from_response(idp.response("svc-b", audience=AUD, recipient=REC))
    assert v.verify_assertion(one).subject == "svc-b"


def test_sha1_only_when_the_policy_names_it(idp):
    legacy = verifier(idp, algorithms=("rsa-sha256", "rsa-sha1"), digest_algorithms=("sha256", "sha1"))
    assert legacy.verify_assertion(make(idp, algs=SHA1)).subject


def test_clock_skew_within_leeway(idp):
    v = verifier(idp, leeway=60.0)
    assert v.verify_assertion(make(idp, clock_offset=40)).subject  # IdP clock 40 s ahead
    assert v.verify_assertion(make(idp, clock_offset=-90, lifetime=60)).subject  # ended 30 s ago: within leeway


# ----------------------------------------------------------------- the hostile suite

def test_expired_and_not_yet_valid(idp):
    v = verifier(idp)
    assert reason(v, make(idp, clock_offset=-600)) == "expired"
    assert reason(v, make(idp, clock_offset=600)) == "not_yet_valid"


def test_wrong_audience_or_recipient(idp):
    v = verifier(idp)
    assert reason(v, make(idp, audience="https://other-sp.example.test")) == "bad_audience"
    assert reason(v, make(idp, recipient="https://other-sp.example.test/acs")) == "bad_recipient"


def test_unsigned_assertion(idp):
    v = verifier(idp)
    assert reason(v, make(idp, sign=False)) == "unsigned_assertion"


def test_signed_response_does_not_sign_its_assertion(idp):
    """The response signature is valid, the assertion inside it is not signed: refused."""
    v = verifier(idp)
    assert reason(v, idp.signed_response_around(make(idp, sign=False))) == "unsigned_assertion"


def test_signature_by_an_unknown_key(idp, rogue):
    v = verifier(idp)
    assert reason(v, make(rogue)) == "unknown_key"  # same entity id, key not in the metadata
    # Without the certificate in KeyInfo, every metadata key is tried and none verifies.
    root = etree.fromstring(make(rogue))
    ki = root.find(".//{http://www.w3.org/2000/09/xmldsig#}KeyInfo")
    ki.getparent().remove(ki)
    assert reason(v, etree.tostring(root)) == "bad_signature"


def test_replayed_assertion_id(idp):
    v = verifier(idp)
    a = make(idp)
    assert v.verify_assertion(a).subject
    assert reason(v, a) == "replayed"
    # Spent for every verifier sharing the cache (policy reloads, exchange and proxy auth alike).
    other = TokenVerifier([cfg(idp)], replay=v._saml["corp"].replay)
    assert reason(other, a) == "replayed"


def test_signature_wrapping(idp):
    v = verifier(idp)
    signed = make(idp, "svc-low@corp.example.test")
    assert reason(v, wrap_with_injected(signed, "admin@corp.example.test")) == "multiple_assertions"
    assert reason(v, wrap_signed_inside(signed, "admin@corp.example.test")) == "multiple_assertions"
    assert reason(v, tamper_name_id(signed, "admin@corp.example.test")) == "bad_signature"
    assert v.verify_assertion(signed).subject == "svc-low@corp.example.test"  # the original is still good


def test_signature_must_cover_the_assertion_it_sits_in(idp, monkeypatch):
    """Even with the one-assertion rule gone, a signature over another element is not the assertion's."""
    v = verifier(idp)
    signed = make(idp, "svc-low@corp.example.test")
    monkeypatch.setattr(saml.SamlIssuerVerifier, "_structure",
                        lambda self, root: root)  # pretend the document checks passed
    assert reason(v, wrap_signed_inside(signed, "admin@corp.example.test")) == "signature_wrapping"


def test_comment_inside_nameid(idp):
    """admin@corp.example.test.evil.example with a comment after 'admin@corp.example.test': refused outright."""
    v = verifier(idp)
    signed = make(idp, "admin@corp.example.test.evil.example")
    hostile = comment_in_nameid(signed, len("admin@corp.example.test"))
    assert b"<!---->" in hostile
    assert reason(v, hostile) == "xml_comment"


def test_sha1_signature_refused_by_default(idp):
    v = verifier(idp)
    assert reason(v, make(idp, algs=SHA1)) == "alg_not_allowed"


def test_dtd_and_entities_refused(idp):
    v = verifier(idp)
    bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
            b'<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion">&y;</saml:Assertion>')
    assert reason(v, bomb) == "malformed"
    ext = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
           b'<a>&e;</a>')
    assert reason(v, ext) == "malformed"
    assert reason(v, b"<not-closed") == "malformed"


def test_unknown_issuer_and_issuer_mismatch(idp, tmp_path):
    v = verifier(idp)
    assert reason(v, make(idp, issuer="https://stranger.example.test")) == "unknown_issuer"


def test_encrypted_assertions_are_refused_plainly(idp):
    v = verifier(idp)
    doc = (b'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
           b'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="r1" Version="2.0">'
           b'<saml:Issuer>' + idp.entity_id.encode() + b'</saml:Issuer><saml:EncryptedAssertion/></samlp:Response>')
    assert reason(v, doc) == "encrypted_assertion"


# ----------------------------------------------------------------- proxy password path

def test_assertion_as_proxy_password_only_when_the_issuer_says_so(idp):
    closed = verifier(idp)
    assert reason_token(closed, b64url(make(idp))) == "saml_not_accepted"
    open_ = verifier(idp, accept_in_proxy_auth=True)
    p = open_.verify(b64url(make(idp)))
    assert p.method == "saml" and p.subject == "svc-payments@corp.example.test"
    padded = base64.b64encode(make(idp)).decode()  # standard base64 works too
    assert open_.verify(padded).subject
    assert reason_token(open_, b64url(make(idp, clock_offset=-600))) == "expired"


def reason_token(v, token):
    with pytest.raises(TokenError) as ei:
        v.verify(token)
    return ei.value.reason


def test_same_entity_id_for_oidc_and_saml(idp):
    """Entra ID uses one issuer string for both: they do not clash."""
    oidc = Issuer(name="entra-oidc", issuer=idp.entity_id, audience="pangate", jwks_uri="https://idp.example.test/k")
    v = TokenVerifier([oidc, cfg(idp)], replay=MemoryReplayCache())
    assert v.verify_assertion(make(idp)).issuer == "corp"


# ----------------------------------------------------------------- exchanged tokens

def test_exchanged_token_speaks_for_its_source(idp, tmp_path):
    key = str(tmp_path / "signing.key")
    keygen(key)
    pg = Issuer(name="pangate", type="pangate", issuer="pangate", audience="pangate", public_key_file=key + ".pub")
    v = TokenVerifier([pg, cfg(idp)], replay=MemoryReplayCache())
    tok = issue(key, "svc-payments", 60, extra_claims={EXCHANGE_CLAIM: {"iss": "corp", "sub": "svc@corp",
                                                                         "claims": {"department": "payments"}}})
    p = v.verify(tok)
    assert (p.issuer, p.subject, p.method, p.claims) == ("corp", "svc@corp", "exchange", {"department": "payments"})
    assert p.token_id == jwt.decode(tok, options={"verify_signature": False})["jti"]
    # No leeway for the gateway's own tokens: expired means expired.
    later = TokenVerifier([pg, cfg(idp)], clock=lambda: time.time() + 61, replay=MemoryReplayCache())
    assert reason_token(later, tok) == "expired"
    # A token claiming to speak for a pangate or unknown issuer is refused.
    bad = issue(key, "x", 60, extra_claims={EXCHANGE_CLAIM: {"iss": "pangate", "sub": "x"}})
    assert reason_token(v, bad) == "unknown_issuer"
    # extra claims never replace the registered ones
    forged = issue(key, "x", 60, extra_claims={"sub": "admin", "exp": 9999999999})
    assert jwt.decode(forged, options={"verify_signature": False})["sub"] == "x"


# ----------------------------------------------------------------- metadata

def test_metadata_url_is_fetched_cached_and_refreshed(idp, rogue):
    calls = []
    current = {"doc": idp.metadata_xml.encode()}

    def fetch(url, ca_file=None):
        calls.append(url)
        return current["doc"]

    now = [time.time()]
    c = cfg(idp, metadata_file=None, metadata_url="https://idp.example.test/metadata", refresh_interval=60.0,
            jwks_max_age=3600.0)
    v = TokenVerifier([c], saml_fetch=fetch, clock=lambda: now[0], replay=MemoryReplayCache())
    assert asyncio.run(v.averify_assertion(make(idp))).subject and len(calls) == 1
    assert asyncio.run(v.averify_assertion(make(idp))).subject and len(calls) == 1  # cached
    # The IdP rotates to a new key: after max age the metadata is fetched again.
    current["doc"] = rogue.metadata_xml.encode()
    now[0] += 3601
    assert asyncio.run(v.averify_assertion(make(rogue, clock_offset=3601))).subject and len(calls) == 2
    with pytest.raises(TokenError) as ei:
        asyncio.run(v.averify_assertion(make(idp, clock_offset=3601)))  # the old key is gone
    assert ei.value.reason == "unknown_key"


def test_metadata_errors():
    with pytest.raises(saml.MetadataError, match="no single EntityDescriptor"):
        saml.parse_metadata(b'<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
                            b'entityID="https://a"/>', "https://b")
    with pytest.raises(saml.MetadataError, match="no IdP signing certificate"):
        saml.parse_metadata(b'<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
                            b'entityID="https://a"><md:IDPSSODescriptor/></md:EntityDescriptor>', "https://a")
    with pytest.raises(saml.MetadataError, match="expired"):
        saml.parse_metadata(b'<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
                            b'entityID="https://a" validUntil="2001-01-01T00:00:00Z"/>', "https://a", time.time())


# ----------------------------------------------------------------- replay cache

def test_replay_cache_is_bounded_and_forgets_only_expired_ids():
    now = [1000.0]
    c = MemoryReplayCache(max_entries=2, clock=lambda: now[0])
    assert c.first_use("a", 1010) and c.first_use("b", 1020)
    assert not c.first_use("a", 1010)
    with pytest.raises(ReplayCacheFull):
        c.first_use("c", 1030)  # never evict a live id
    now[0] = 1011
    assert c.first_use("c", 1030) and len(c) == 2  # "a" expired and made room
    assert not c.first_use("b", 1020)


# ----------------------------------------------------------------- policy

SAML_POLICY = """
version: 1
issuers:
  adfs:
    type: saml
    issuer: http://adfs.corp.example.test/adfs/services/trust
    metadata_file: {md}
    audience: https://pangate.corp.example.test/sp
    recipient: https://pangate.corp.example.test/exchange
{extra}
identities:
  svc:
    issuer: adfs
    subject: svc-payments
    roles: [r]
roles:
  r: {{allow: []}}
"""


def policy(extra="", md="md.xml"):
    return parse_policy(SAML_POLICY.format(md=md, extra=extra), "policies.yaml")


def test_policy_saml_issuer():
    p = policy("    accept_in_proxy_auth: true\n    leeway: 2m\n    exchange_ttl: 10m\n"
               "    mapping:\n      subject: nameid\n      claims: {group: http://schemas.xmlsoap.org/claims/Group}\n")
    i = p.issuers["adfs"]
    assert i.type == "saml" and i.accept_in_proxy_auth and i.leeway == 120 and i.exchange_ttl == 600
    assert i.claim_map == (("group", "http://schemas.xmlsoap.org/claims/Group"),)
    assert "rsa-sha1" not in i.algorithms and "sha1" not in i.digest_algorithms


@pytest.mark.parametrize("extra, line, message", [
    ("    algorithms: [rsa-md5]\n", 10, "not a known SAML signature algorithm"),
    ("    digest_algorithms: [md5]\n", 10, "not a known digest"),
    ("    jwks_file: k.json\n", 10, "takes its keys from metadata"),
    ("    mapping: {subject: 3}\n", 10, "expected a non-empty string"),
    ("    accept_in_proxy_auth: yes-please\n", 10, "expected true or false"),
])
def test_policy_saml_errors_are_located(extra, line, message):
    with pytest.raises(PolicyError, match=message) as ei:
        policy(extra)
    assert ei.value.line == line and ei.value.path == "policies.yaml"


def test_policy_saml_keys_only_on_saml_issuers_and_recipient_required():
    with pytest.raises(PolicyError, match="only for issuers of type saml") as ei:
        parse_policy("version: 1\nissuers:\n  o:\n    type: oidc\n    issuer: https://o\n"
                     "    jwks_uri: https://o/k\n    recipient: https://x\n", "p.yaml")
    assert ei.value.line == 7
    with pytest.raises(PolicyError, match="missing required key 'recipient'") as ei:
        parse_policy("version: 1\nissuers:\n  s:\n    type: saml\n    issuer: https://i\n"
                     "    metadata_file: m.xml\n    audience: https://sp\n", "p.yaml")
    assert ei.value.line == 4  # the issuer's mapping starts there
    with pytest.raises(PolicyError, match="only fetched over https"):
        parse_policy("version: 1\nissuers:\n  s:\n    type: saml\n    issuer: https://i\n"
                     "    metadata_url: http://idp/md\n    audience: https://sp\n    recipient: https://r\n", "p.yaml")


def test_metadata_fetched_over_verified_https(idp, pki):
    """The real fetcher: TLS verified against the given CA, http refused, size capped."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = idp.metadata_xml.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            data = body if self.path == "/metadata" else b"x" * (saml.MAX_METADATA_BYTES + 10)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.cert, pki.key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"https://localhost:{server.server_address[1]}"
        assert saml.fetch_metadata(base + "/metadata", ca_file=pki.ca_cert) == body
        with pytest.raises(saml.MetadataError, match="too large"):
            saml.fetch_metadata(base + "/huge", ca_file=pki.ca_cert)
        with pytest.raises(saml.MetadataError, match="fetch failed"):
            saml.fetch_metadata(base + "/metadata")  # not signed by a CA the system trusts
        with pytest.raises(saml.MetadataError, match="plain http"):
            saml.fetch_metadata(f"http://localhost:{server.server_address[1]}/metadata")
        c = cfg(idp, metadata_file=None, metadata_url=base + "/metadata", ca_file=pki.ca_cert)
        v = TokenVerifier([c], replay=MemoryReplayCache())
        assert asyncio.run(v.averify_assertion(make(idp))).subject
    finally:
        server.shutdown()


def test_oversized_and_odd_signatures_fail_closed(idp):
    v = verifier(idp)
    big = make(idp).replace(b"</ns0:Issuer>", b"</ns0:Issuer>" + b" " * (saml.MAX_ASSERTION_BYTES + 1), 1)
    assert reason(v, big) == "malformed"
    # A signature that breaks the XML-DSig schema is a refusal, not a crash.
    odd = make(idp).replace(b"<ns1:SignatureValue>", b"<ns1:SignatureValue><ns1:Bogus/>", 1)
    assert reason(v, odd) == "bad_signature"
