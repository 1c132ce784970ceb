"""Unit tests for pangate.tokens. No sleeps: time is an injected clock."""

import asyncio
import base64
import hashlib
import json
import os
import stat
import subprocess

import pytest
from harness import VENV_BIN
from jwks_issuer import JwksIssuer

from pangate.identity.tokens import (KeyFetchError, KeysNeeded, Principal, TokenError, TokenVerifier, issue, keygen,
                                    parse_proxy_authorization)
from pangate.policy.model import Issuer, parse_policy

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def idp():
    with JwksIssuer() as issuer:
        yield issuer


@pytest.fixture
def fresh_idp():
    """Own issuer for tests that rotate keys or count fetches."""
    with JwksIssuer(algs=("RS256",)) as issuer:
        yield issuer


@pytest.fixture
def clock():
    return Clock()


def make(idp, clock, **cfg):
    v = TokenVerifier([idp.issuer_config(**cfg)], clock=clock)
    return v


def reason(fn, *a, **kw):
    with pytest.raises(TokenError) as ei:
        fn(*a, **kw)
    return ei.value.reason


# ----------------------------------------------------------------- happy paths

@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_tokens_accepted(idp, clock, alg):
    v = make(idp, clock)
    tok = idp.mint(alg=alg, now=clock(), sub="svc-pay", jti="j-1")
    with pytest.raises(KeysNeeded):  # nothing cached yet: verify must not fetch by itself
        v.verify(tok)
    assert v.refresh("idp") is True
    p = v.verify(tok)
    assert (p.issuer, p.subject, p.token_id, p.method, p.static) == ("idp", "svc-pay", "j-1", "oidc", False)
    assert p.expires_at == clock() + 300
    assert tok not in repr(p) and tok not in json.dumps(p.claims)


def test_averify_does_the_refresh_dance(idp, clock):
    v = make(idp, clock)
    p = asyncio.run(v.averify(idp.mint(alg="ES256", now=clock())))
    assert isinstance(p, Principal) and p.subject == "svc-test"


def test_principal_is_frozen_and_hashable(idp, clock):
    v = make(idp, clock)
    v.refresh("idp")
    p = v.verify(idp.mint(now=clock()))
    with pytest.raises(Exception):
        p.subject = "other"
    hash(p)


# ----------------------------------------------------------------- claim checks

@pytest.fixture
def loaded(idp, clock):
    v = make(idp, clock)
    v.refresh("idp")
    return v


def test_expired(idp, clock, loaded):
    assert reason(loaded.verify, idp.mint(now=clock() - 1000, ttl=60)) == "expired"


def test_valid_then_expired_is_refused_next_check(idp, clock, loaded):
    tok = idp.mint(now=clock(), ttl=60)
    loaded.verify(tok)
    clock.now += 60 + 30  # exp + default leeway
    assert reason(loaded.verify, tok) == "expired"


def test_not_yet_valid(idp, clock, loaded):
    assert reason(loaded.verify, idp.mint(now=clock(), nbf=clock() + 600)) == "not_yet_valid"
    assert reason(loaded.verify, idp.mint(now=clock() + 600)) == "not_yet_valid"  # iat in future


def test_iat_after_exp_and_bad_types(idp, clock, loaded):
    assert reason(loaded.verify, idp.mint(now=clock(), iat=clock() + 20, exp=clock() + 10)) == "malformed"
    assert reason(loaded.verify, idp.mint(now=clock(), exp="soon")) == "malformed"
    assert reason(loaded.verify, idp.mint(now=clock(), exp=None)) == "malformed"
    assert reason(loaded.verify, idp.mint(now=clock(), sub=None)) == "malformed"


def test_clock_skew_boundaries(idp, clock):
    v = make(idp, clock, leeway=30)
    v.refresh("idp")
    tok = idp.mint(now=T0, ttl=100, nbf=T0 + 50)
    clock.now = T0 + 50 - 30  # nbf - leeway: just valid
    v.verify(tok)
    clock.now = T0 + 50 - 31
    assert reason(v.verify, tok) == "not_yet_valid"
    clock.now = T0 + 100 + 29  # exp + leeway - 1: still valid
    v.verify(tok)
    clock.now = T0 + 100 + 30  # exp + leeway: expired (PyJWT's boundary)
    assert reason(v.verify, tok) == "expired"


def test_zero_leeway(idp, clock):
    v = make(idp, clock, leeway=0)
    v.refresh("idp")
    tok = idp.mint(now=T0, ttl=10)
    clock.now = T0 + 9.999
    v.verify(tok)
    clock.now = T0 + 10
    assert reason(v.verify, tok) == "expired"


def test_wrong_audience(idp, clock, loaded):
    assert reason(loaded.verify, idp.mint(now=clock(), aud="someone-else")) == "bad_audience"
    assert reason(loaded.verify, idp.mint(now=clock(), aud=None)) == "bad_audience"
    loaded.verify(idp.mint(now=clock(), aud=["x", "pangate"]))


def test_audience_list_in_config(idp, clock):
    v = make(idp, clock, audience=["pangate", "egress"])
    v.refresh("idp")
    v.verify(idp.mint(now=clock(), aud="egress"))


def test_wrong_issuer(idp, clock, loaded):
    assert reason(loaded.verify, idp.mint(now=clock(), iss="https://evil.example")) == "unknown_issuer"
    assert reason(loaded.verify, idp.mint(now=clock(), iss=None)) == "unknown_issuer"


def test_bad_signature(idp, clock, loaded):
    tok = idp.mint(now=clock())
    h, p, s = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=="))
    claims["sub"] = "admin"
    p2 = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert reason(loaded.verify, f"{h}.{p2}.{s}") == "bad_signature"
    # Signed by a key the IdP never published, but claiming a published kid.
    rogue = idp.add_key("RS256", publish=False)
    forged = idp.mint(now=clock(), kid=rogue).split(".")
    hdr = base64.urlsafe_b64encode(json.dumps(
        {"alg": "RS256", "typ": "JWT", "kid": idp.current_kid("RS256")}).encode()).rstrip(b"=").decode()
    # Re-sign is impossible without the real key, so splice: published kid, rogue signature.
    assert reason(loaded.verify, f"{hdr}.{forged[1]}.{forged[2]}") == "bad_signature"


def test_alg_none_rejected(idp, clock, loaded):
    assert reason(loaded.verify, idp.mint_none(now=clock())) == "alg_not_allowed"


def test_hs256_with_public_key_rejected(idp, clock):
    # Even an issuer that (wrongly) lists HS256 cannot be configured to accept it.
    with pytest.raises(ValueError):
        idp.issuer_config(algorithms=("RS256", "HS256"))
    v = make(idp, clock)
    v.refresh("idp")
    assert reason(v.verify, idp.mint_hs256_confused(now=clock())) == "alg_not_allowed"


def test_alg_outside_issuer_allow_list(idp, clock):
    v = make(idp, clock, algorithms=("RS256",))
    v.refresh("idp")
    assert reason(v.verify, idp.mint(alg="ES256", now=clock())) == "alg_not_allowed"


def test_key_type_must_match_alg(idp, clock, loaded):
    # ES256 header pointing at the RSA kid: refused before any signature math.
    tok = idp.mint(alg="ES256", now=clock(), kid=idp.current_kid("ES256"))
    h, p, s = tok.split(".")
    hdr = base64.urlsafe_b64encode(json.dumps(
        {"alg": "ES256", "kid": idp.current_kid("RS256")}).encode()).rstrip(b"=").decode()
    assert reason(loaded.verify, f"{hdr}.{p}.{s}") == "alg_not_allowed"


@pytest.mark.parametrize("junk", ["", "a.b", "a.b.c", "x" * 20000, "..."])
def test_malformed_tokens(loaded, junk):
    assert reason(loaded.verify, junk) in ("malformed", "unknown_static_key")


def test_stripped_signature(idp, clock, loaded):
    h, p, _ = idp.mint(now=clock()).split(".")
    assert reason(loaded.verify, f"{h}.{p}.") in ("bad_signature", "malformed")
    assert reason(loaded.verify, "eyJhbGciOiJSUzI1NiJ9.e30.") == "unknown_issuer"  # no iss at all


def test_error_messages_never_contain_token(idp, clock, loaded):
    for tok in (idp.mint(now=clock() - 1000, ttl=1), idp.mint(now=clock(), aud="x"), idp.mint_none()):
        with pytest.raises(TokenError) as ei:
            loaded.verify(tok)
        assert tok not in str(ei.value) and ei.value.__cause__ is None


# ----------------------------------------------------------------- revocation

def test_revoked_jti_and_callback(idp, clock, loaded):
    tok = idp.mint(now=clock(), jti="dead")
    loaded.revoked_jtis.add("dead")
    assert reason(loaded.verify, tok) == "revoked"
    ok = idp.mint(now=clock(), sub="svc-x")
    assert reason(loaded.verify, ok, is_revoked=lambda p: p.subject == "svc-x") == "revoked"
    loaded.verify(ok, is_revoked=lambda p: False)


# ----------------------------------------------------------------- key fetching

def test_discovery_is_cached(fresh_idp, clock):
    v = make(fresh_idp, clock, refresh_interval=60)
    v.refresh("idp")
    for _ in range(5):
        v.verify(fresh_idp.mint(now=clock()))
    assert fresh_idp.hits["/.well-known/openid-configuration"] == 1
    assert fresh_idp.hits["/jwks.json"] == 1
    clock.now += 61
    v.refresh("idp")  # JWKS refetched, discovery still fresh
    assert fresh_idp.hits["/.well-known/openid-configuration"] == 1
    assert fresh_idp.hits["/jwks.json"] == 2


def test_unknown_kid_refreshes_once_then_unknown_key(fresh_idp, clock):
    v = make(fresh_idp, clock, refresh_interval=60)
    v.refresh("idp")
    ghost = fresh_idp.add_key("RS256", publish=False)
    tok = fresh_idp.mint(now=clock(), kid=ghost)
    clock.now += 61
    assert reason(lambda: asyncio.run(v.averify(tok))) == "unknown_key"
    assert fresh_idp.hits["/jwks.json"] == 2
    # Kid spraying within the interval costs no further fetches.
    for _ in range(10):
        assert reason(lambda: asyncio.run(v.averify(fresh_idp.mint(now=clock(), kid=ghost)))) == "unknown_key"
    assert fresh_idp.hits["/jwks.json"] == 2
    assert v.refresh("idp") is False  # throttled


def test_key_rotation_picked_up_after_refresh(fresh_idp, clock):
    v = make(fresh_idp, clock, refresh_interval=60)
    v.refresh("idp")
    old = fresh_idp.mint(now=clock())
    v.verify(old)
    clock.now += 61
    fresh_idp.rotate("RS256")
    new = fresh_idp.mint(now=clock())
    with pytest.raises(KeysNeeded):
        v.verify(new)
    assert asyncio.run(v.averify(new)).subject == "svc-test"
    assert reason(v.verify, old) == "unknown_key"  # withdrawn key no longer trusted


def test_stale_jwks_refetched_and_outage_keeps_cached_keys(fresh_idp, clock):
    v = make(fresh_idp, clock, refresh_interval=60, jwks_max_age=300)
    v.refresh("idp")
    clock.now += 301
    fresh_idp.status = 503
    tok = fresh_idp.mint(now=clock())
    assert asyncio.run(v.averify(tok)).subject == "svc-test"  # stale set served, not waited on
    with pytest.raises(KeyFetchError):  # the refresh ran in the background, and failed
        v._state["idp"].future.result(10)
    assert fresh_idp.hits["/jwks.json"] == 2
    assert asyncio.run(v.averify(tok)).subject == "svc-test"  # cached keys still used


def test_first_fetch_failure_fails_closed(fresh_idp, clock):
    fresh_idp.status = 503
    v = make(fresh_idp, clock)
    assert reason(lambda: asyncio.run(v.averify(fresh_idp.mint(now=clock())))) == "keys_unavailable"


def test_tls_is_verified(fresh_idp, clock):
    v = make(fresh_idp, clock, ca_file=None)  # system bundle does not trust the test CA
    assert reason(lambda: asyncio.run(v.averify(fresh_idp.mint(now=clock())))) == "keys_unavailable"
    assert fresh_idp.hits["/jwks.json"] == 0


def test_http_key_urls_refused(fresh_idp):
    with pytest.raises(ValueError):
        Issuer(name="x", issuer="i", audience="a", jwks_uri="http://127.0.0.1/jwks")


def test_discovery_issuer_mismatch(fresh_idp, clock):
    cfg = fresh_idp.issuer_config(issuer="https://other.example")
    v = TokenVerifier([cfg], clock=clock)
    tok = fresh_idp.mint(now=clock(), iss="https://other.example")
    assert reason(lambda: asyncio.run(v.averify(tok))) == "keys_unavailable"


def test_injected_fetch_and_in_flight_wait(idp, clock):
    """While a fetch runs, other verifies are told to wait (KeysNeeded), not failed."""
    seen, cfg = [], idp.issuer_config(jwks_uri="https://idp.invalid/jwks")
    tok = idp.mint(now=clock())

    def fetch(url, *, ca_file=None):
        seen.append(url)
        with pytest.raises(KeysNeeded):
            v.verify(tok)
        return idp.jwks()

    v = TokenVerifier([cfg], fetch=fetch, clock=clock)
    assert asyncio.run(v.averify(tok)).subject == "svc-test"
    assert seen == ["https://idp.invalid/jwks"]

    def broken(url, *, ca_file=None):
        raise RuntimeError("boom")

    v2 = TokenVerifier([cfg], fetch=broken, clock=clock)
    assert reason(lambda: asyncio.run(v2.averify(tok))) == "keys_unavailable"


def test_direct_jwks_uri(fresh_idp, clock):
    v = make(fresh_idp, clock, jwks_uri=fresh_idp.jwks_uri)
    assert asyncio.run(v.averify(fresh_idp.mint(now=clock()))).issuer == "idp"
    assert fresh_idp.hits["/.well-known/openid-configuration"] == 0


def test_jwks_file_mode(idp, clock, tmp_path):
    path = idp.write_jwks(tmp_path / "jwks.json")
    v = make(idp, clock, jwks_file=str(path))
    for alg in ("RS256", "ES256", "EdDSA"):
        assert v.verify(idp.mint(alg=alg, now=clock())).subject == "svc-test"  # no KeysNeeded
    ghost = idp.add_key("RS256", publish=False)
    assert reason(v.verify, idp.mint(now=clock(), kid=ghost)) == "unknown_key"


def test_jwks_with_symmetric_key_ignored(idp, clock, tmp_path):
    doc = idp.jwks()
    doc["keys"].append({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(doc))
    v = make(idp, clock, jwks_file=str(path))
    assert all(k.kid != "hmac" for k in v._state["idp"].keys)


# ----------------------------------------------------------------- one issuer model

@pytest.mark.parametrize("alg", ["ES512", "PS384"])
def test_policy_issuer_is_the_verifier_config(idp, clock, tmp_path, alg):
    """Whatever algorithm the verifier supports, a policy may allow (they once drifted: ES512)."""
    kid = idp.add_key(alg)
    jwks = idp.write_jwks(tmp_path / "jwks.json")
    policy = parse_policy(f"""
version: 1
issuers:
  idp: {{type: oidc, issuer: "{idp.issuer}", audience: {idp.audience}, jwks_file: {jwks}, algorithms: [{alg}]}}
""", str(tmp_path / "policies.yaml"))
    cfg = policy.issuers["idp"]
    assert cfg.algorithms == (alg,) and cfg.audience == (idp.audience,)
    v = TokenVerifier(policy.issuers.values(), clock=clock)
    assert v.verify(idp.mint(alg=alg, kid=kid, now=clock())).issuer == "idp"
    assert reason(v.verify, idp.mint(alg="RS256", now=clock())) == "alg_not_allowed"


def test_issuer_model_refuses_what_the_policy_refuses():
    for bad in ("HS256", "none"):
        with pytest.raises(ValueError, match="not allowed"):
            Issuer(name="x", type="oidc", issuer="i", audience="a", jwks_file="/k", algorithms=(bad,))
    with pytest.raises(ValueError, match="exactly one key source"):
        Issuer(name="x", type="oidc", issuer="i", audience="a", jwks_file="/k", jwks_uri="https://i/k")
    assert Issuer(name="x", type="pangate", issuer="i", audience="a", public_key_file="/k").algorithms == ("EdDSA",)


# ----------------------------------------------------------------- pangate-issued tokens

def test_pangate_keygen_issue_verify(tmp_path, clock):
    key = tmp_path / "signing.pem"
    pub = keygen(key)
    assert pub == str(key) + ".pub" and os.path.exists(pub)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        keygen(key)
    cfg = Issuer(name="local", type="pangate", issuer="pangate", audience="pangate", public_key_file=pub)
    v = TokenVerifier([cfg], clock=clock)
    tok = issue(key, "svc-batch", 120, clock=clock)
    p = v.verify(tok)
    assert (p.issuer, p.subject, p.method, p.expires_at) == ("local", "svc-batch", "pangate", T0 + 120)
    assert p.token_id and p.claims["aud"] == "pangate"
    clock.now += 120 + 30
    assert reason(v.verify, tok) == "expired"
    # A token from a different pangate key is refused.
    other = tmp_path / "other.pem"
    keygen(other)
    assert reason(v.verify, issue(other, "svc-batch", 120, clock=clock)) == "unknown_key"


@pytest.mark.parametrize("command", [("approver", "keygen"), ("token", "keygen")])
def test_cli_keygen_makes_missing_folders(tmp_path, command):
    """`pangate approver keygen --key ~/.pangate/alice.key` on a machine without ~/.pangate."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}

    def run():
        return subprocess.run([str(VENV_BIN / "pangate"), *command, "--key", "~/.pangate/alice.key"],
                              capture_output=True, text=True, timeout=60, env=env)

    res = run()
    assert res.returncode == 0, res.stderr
    key = home / ".pangate" / "alice.key"
    assert stat.S_IMODE(os.stat(key.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(str(key) + ".pub").st_mode) == 0o644
    assert str(key) + ".pub" in res.stdout
    before = key.read_bytes()
    again = run()
    assert again.returncode == 1 and "not overwritten" in again.stderr and "Traceback" not in again.stderr
    assert key.read_bytes() == before


def test_cli_keygen_unwritable_folder_is_a_message(tmp_path):
    (tmp_path / "afile").write_text("")  # a folder that cannot be made, even by root
    res = subprocess.run([str(VENV_BIN / "pangate"), "approver", "keygen", "--key", str(tmp_path / "afile" / "a.key")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "cannot write the key" in res.stderr and "Traceback" not in res.stderr


# ----------------------------------------------------------------- static keys

def test_static_keys(clock):
    secret = "pg_static_" + "a" * 40
    v = TokenVerifier([], static_keys={"legacy-app": "sha256:" + hashlib.sha256(secret.encode()).hexdigest()},
                 clock=clock)
    p = v.verify(secret)
    assert (p.subject, p.static, p.method, p.issuer, p.expires_at) == ("legacy-app", True, "static", "static", None)
    assert reason(v.verify, secret + "x") == "unknown_static_key"
    assert reason(v.verify, secret, is_revoked=lambda p: p.static) == "revoked"
    with pytest.raises(ValueError):
        TokenVerifier([], static_keys={"x": "md5:abcd"})


# ----------------------------------------------------------------- header parsing

def b64(s):
    return base64.b64encode(s.encode()).decode()


def test_parse_basic_and_bearer():
    assert parse_proxy_authorization("Bearer abc.def.ghi") == (None, "abc.def.ghi")
    assert parse_proxy_authorization("bearer   tok ") == (None, "tok")
    assert parse_proxy_authorization("Basic " + b64("svc-a:abc.def.ghi")) == ("svc-a", "abc.def.ghi")
    assert parse_proxy_authorization("BASIC " + b64(":tok")) == (None, "tok")
    assert parse_proxy_authorization("Basic " + b64("svc:a:b")) == ("svc", "a:b")


@pytest.mark.parametrize("value", [
    None, "", "Bearer", "Bearer ", "Bearer a b", "Digest abc", "tokenonly",
    "Basic !!!notbase64", "Basic " + b64("no-colon"), "Basic " + b64("name:"),
    "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Basic " + b64("n:tok\x00"),
    "Bearer " + "x" * 20000,
])
def test_parse_malformed(value):
    assert reason(parse_proxy_authorization, value) == "malformed"
