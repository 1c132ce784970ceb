"""Issue 4 end to end: machine identity, least privilege, credential custody, revocation.

Real mitmdump gateways, a local OIDC issuer (JWKS over HTTPS), real HTTPS
upstreams (one requiring mTLS), a plain-HTTP upstream, and real clients.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer

import jwt
import pytest
import requests

from pangate.dev.demo_upstream import DemoUpstream, Handler
from pangate.dev.pki import make_ca, make_leaf

from conftest import json_body, raw_connect
from harness import VENV_BIN, WebAPI, open_tunnel
from jwks_issuer import JwksIssuer

API_KEY = "ak_e2e_" + secrets.token_hex(12)

POLICY = """
version: 1
issuers:
  pangate:
    type: pangate
    public_key_file: {pubkey}
    leeway: 1s
  idp:
    type: oidc
    issuer: {idp_issuer}
    discovery_url: {idp_discovery}
    ca_file: {idp_ca}
    audience: pangate
    algorithms: [RS256, ES256]
    leeway: 1s
identities:
  svc-a:                       # a Kubernetes-style service account: pinned by sub
    issuer: idp
    subject: "system:serviceaccount:payments:svc-a"
    roles: [reader]
  payments-ci:                 # a GitHub Actions job: pinned by repository + ref
    issuer: idp
    claims: {{repository: acme/payments, ref: refs/heads/main}}
    roles: [reader]
  pg-reader:
    issuer: pangate
    roles: [reader]
  pg-revocable:
    issuer: pangate
    roles: [reader]
roles:
  reader:
    allow:
      - destination: upstream
        methods: [GET]
        paths: ["/v1/charges", "/echo"]
      - destination: loopback-unnamed
      - destination: literal
      - destination: mtls-up
        paths: ["/echo"]
      - destination: plain
        paths: ["/echo"]
destinations:
  upstream:
    host: localhost
    port: {port}
    addresses: [127.0.0.1/32]
    credential: {{type: header, name: X-Api-Key, env: E2E_API_KEY}}
  loopback-unnamed:            # localhost resolves to loopback, which this one does not name
    host: localhost
    port: {closed_port}
  literal:                     # an IP literal not named in addresses
    host: 127.0.0.1
    port: {port}
  mtls-up:
    host: localhost
    port: {mtls_port}
    addresses: [127.0.0.1/32]
    credential: {{type: mtls, file: {client_cert}, key_file: {client_key}}}
  plain:
    host: localhost
    scheme: http
    port: {plain_port}
    addresses: [127.0.0.1/32]
"""


class PlainUpstream(ThreadingHTTPServer):
    """The demo upstream's handler over plain HTTP, for plain-HTTP proxy requests."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.received, self.routes = [], {}

    @property
    def port(self) -> int:
        return self.server_address[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _basic(identity: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{identity}:{token}".encode()).decode()


@pytest.fixture(scope="module")
def idp():
    with JwksIssuer(algs=("RS256", "ES256")) as issuer:
        yield issuer


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, pki):
    """An upstream that demands a client certificate from its own client CA."""
    d = str(tmp_path_factory.mktemp("mtls"))
    client_ca = make_ca(d, "workload-client-ca")
    cert, key = make_leaf(client_ca, d, ["pangate-gateway"], "pangate-gateway-client")
    server = DemoUpstream("127.0.0.1", 0, pki.cert, pki.key, client_ca=client_ca[0]).start()
    yield server, cert, key
    server.shutdown()


@pytest.fixture(scope="module")
def plain():
    server = PlainUpstream()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def policy_text(idp, mtls, plain, upstream, token_key):
    server, cert, key = mtls
    return POLICY.format(pubkey=token_key + ".pub", idp_issuer=idp.issuer, idp_discovery=idp.discovery_url,
                         idp_ca=idp.ca_file, port=upstream.port, closed_port=_free_port(),
                         mtls_port=server.port, client_cert=cert, client_key=key, plain_port=plain.port)


@pytest.fixture(scope="module")
def revocations(tmp_path_factory):
    return str(tmp_path_factory.mktemp("revocations") / "revocations.json")


@pytest.fixture(scope="module")
def gw(start_gateway, policy_text, revocations):
    gw = start_gateway(policy=policy_text, env={"E2E_API_KEY": API_KEY},
                       options={"pangate_revocations": revocations, "pangate_auth_free_failures": 1000})
    yield gw
    gw.stop()


def url(upstream, path="/v1/charges", host="localhost") -> str:
    return f"https://{host}:{upstream.port}{path}"


def pangate_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "pangate"), *args], capture_output=True, text=True, timeout=30, cwd=cwd)


def wait_event(gw, event: str, timeout: float = 5.0, **fields) -> dict:
    """The first audit record of a security event with these fields (records are group-committed)."""
    deadline = time.monotonic() + timeout
    while True:
        for rec in gw.audit_records():
            if rec.get("event") == event and all(rec.get(k) == v for k, v in fields.items()):
                return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event} {fields} in the audit trail")
        time.sleep(0.05)


def connection_of(gw, response) -> str:
    recs = gw.records_for(response.headers["X-Pangate-Request-Id"])
    return next(r for r in recs if r.get("event") == "request")["origin"]["connection"]


# ------------------------------------------------------------------ tokens


def test_valid_tokens_are_admitted(gw, upstream, idp, mint):
    tokens = {
        "svc-a": idp.mint(sub="system:serviceaccount:payments:svc-a"),
        "payments-ci": idp.mint(alg="ES256", sub="repo:acme/payments:ref:refs/heads/main",
                                repository="acme/payments", ref="refs/heads/main"),
        "pg-reader": mint("pg-reader"),
    }
    for identity, token in tokens.items():
        r = gw.session(identity, token).get(url(upstream))
        assert r.status_code == 200, (identity, r.text)
        rec = gw.records_for(r.headers["X-Pangate-Request-Id"])[0]
        assert rec["identity"]["name"] == identity
        assert token not in json.dumps(rec)
    # Proxy-Authorization: Bearer works as well as Basic (curl sends it on CONNECT).
    res = gw.curl(url(upstream), "--proxy-header", f"Proxy-Authorization: Bearer {tokens['svc-a']}")
    assert res.stdout.rsplit("\n", 1)[1] == "200", res.stderr


def _tampered(token: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "system:serviceaccount:payments:admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


def _foreign_token(**claims) -> str:
    other = JwksIssuer(algs=("RS256",))
    try:
        return other.mint(**claims)
    finally:
        other.stop()


@pytest.mark.parametrize("case,code", [
    ("expired", "expired"),
    ("not_yet_valid", "not_yet_valid"),
    ("wrong_audience", "bad_audience"),
    ("wrong_issuer", "unknown_issuer"),
    ("foreign_key", "unknown_key"),
    ("bad_signature", "bad_signature"),
    ("alg_none", "alg_not_allowed"),
    ("hmac_confused", "alg_not_allowed"),
    ("unmapped_subject", "unknown_identity"),
    ("garbage", "unknown_static_key"),
])
def test_bad_tokens_get_407_with_the_reason(gw, upstream, idp, case, code):
    sub = "system:serviceaccount:payments:svc-a"
    now = time.time()
    token = {
        "expired": lambda: idp.mint(sub=sub, now=now - 900, ttl=300),
        "not_yet_valid": lambda: idp.mint(sub=sub, nbf=int(now) + 600),
        "wrong_audience": lambda: idp.mint(sub=sub, aud="someone-else"),
        "wrong_issuer": lambda: idp.mint(sub=sub, iss="https://evil.example"),
        # Signed by another IdP's key under the right issuer name.
        "foreign_key": lambda: _foreign_token(sub=sub, iss=idp.issuer),
        "bad_signature": lambda: _tampered(idp.mint(sub=sub)),
        "alg_none": lambda: idp.mint_none(sub=sub),
        "hmac_confused": lambda: idp.mint_hs256_confused(sub=sub),
        "unmapped_subject": lambda: idp.mint(sub="system:serviceaccount:other:x"),
        "garbage": lambda: "not-a-token",
    }[case]()
    status, reason, headers, body = raw_connect(gw, f"localhost:{upstream.port}", f"Bearer {token}")
    assert status == 407, body
    assert headers["Proxy-Authenticate"] == 'Basic realm="pangate"'  # the first of one per scheme
    doc = json_body(body)
    assert doc["error"] == "proxy_auth_required" and doc["code"] == code, doc
    assert doc["reason"] and code in reason
    text = body.decode()
    assert token not in text and all(part not in text for part in token.split(".") if len(part) > 8)


def test_token_expiring_mid_tunnel_is_refused_on_its_next_request(gw, upstream, mint):
    s = gw.session("pg-reader", mint("pg-reader", ttl=2))
    first = s.get(url(upstream))
    assert first.status_code == 200
    deadline = time.monotonic() + 10  # ttl 2 s + leeway 1 s
    while True:
        r = s.get(url(upstream))
        if r.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 407 and r.json()["code"] == "expired", r.text
    assert connection_of(gw, r) == connection_of(gw, first), "the refusal came inside the same tunnel"


# ------------------------------------------------------------------ revocation


def test_revoked_identity_is_refused_inside_an_open_tunnel_and_after_restart(
        gw, upstream, mint, revocations, start_gateway, policy_text):
    s = gw.session("pg-revocable", mint("pg-revocable"))
    first = s.get(url(upstream))
    assert first.status_code == 200
    mark = gw.log.mark()
    res = pangate_cli("revoke", "pg-revocable", "--reason", "host compromised", "--file", revocations,
                      "--policy", str(gw.policy_path))
    assert res.returncode == 0, res.stderr
    gw.log.wait_for(r"revocation list loaded .*: 1 identities", start=mark, timeout=5)
    try:
        r = s.get(url(upstream))
        assert r.status_code == 407, r.text
        assert r.json()["code"] == "revoked" and "host compromised" in r.json()["reason"]
        assert connection_of(gw, r) == connection_of(gw, first)
        assert wait_event(gw, "revoked", identity="pg-revocable")["alert"] is True
        listed = pangate_cli("revoke", "--list", "--file", revocations)
        assert "identity\tpg-revocable" in listed.stdout and "host compromised" in listed.stdout
        # A gateway started later reads the same list: the revocation survives restarts.
        fresh = start_gateway(policy=policy_text, env={"E2E_API_KEY": API_KEY},
                              options={"pangate_revocations": revocations})
        try:
            status, _, _, body = raw_connect(fresh, f"localhost:{upstream.port}",
                                             _basic("pg-revocable", mint("pg-revocable")))
            assert status == 407 and json_body(body)["code"] == "revoked"
        finally:
            fresh.stop()
    finally:
        mark = gw.log.mark()
        assert pangate_cli("unrevoke", "pg-revocable", "--file", revocations).returncode == 0
        gw.log.wait_for(r"revocation list loaded .*: 0 identities", start=mark, timeout=5)
    assert s.get(url(upstream)).status_code == 200


def test_revoked_token_id_is_refused_other_tokens_are_not(gw, upstream, mint, revocations):
    token = mint("pg-reader")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    s = gw.session("pg-reader", token)
    assert s.get(url(upstream)).status_code == 200
    mark = gw.log.mark()
    assert pangate_cli("revoke", f"--jti={jti}", "--file", revocations).returncode == 0
    gw.log.wait_for(r"revocation list loaded .*, 1 token ids", start=mark, timeout=5)
    try:
        r = s.get(url(upstream))
        assert r.status_code == 407 and r.json()["code"] == "revoked" and jti in r.json()["reason"]
        assert gw.session("pg-reader", mint("pg-reader")).get(url(upstream)).status_code == 200
    finally:
        mark = gw.log.mark()
        pangate_cli("unrevoke", f"--jti={jti}", "--file", revocations)
        gw.log.wait_for(r"revocation list loaded .*, 0 token ids", start=mark, timeout=5)


def test_revoke_cli_refuses_unknown_names(gw, revocations):
    res = pangate_cli("revoke", "pg-reaader", "--file", revocations, "--policy", str(gw.policy_path))
    assert res.returncode == 2 and "no identity 'pg-reaader'" in res.stderr
    assert "pg-reaader" not in pangate_cli("revoke", "--list", "--file", revocations).stdout


# ------------------------------------------------------------------ destinations


def test_host_header_that_differs_from_the_tunnel_is_refused(gw, upstream, mint):
    s = gw.session("pg-reader", mint("pg-reader"))
    r = s.get(url(upstream, "/echo"), headers={"Host": "pay.example.org", "X-Mark": "fronted-host"})
    assert r.status_code == 403 and r.json()["code"] == "host_mismatch"
    assert not any(x["headers"].get("X-Mark") == "fronted-host" for x in upstream.received)


def test_sni_that_differs_from_the_tunnel_is_refused(gw, upstream, mint):
    target = f"localhost:{upstream.port}"
    with open_tunnel(gw, target, _basic("pg-reader", mint("pg-reader")), "pay.example.org") as tls:
        tls.sendall(f"GET /echo HTTP/1.1\r\nHost: {target}\r\nX-Mark: fronted-sni\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 403"), data[:200]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["code"] == "host_mismatch"
    assert not any(x["headers"].get("X-Mark") == "fronted-sni" for x in upstream.received)


def test_ip_literal_is_refused_unless_named(gw, upstream, mint):
    status, _, _, body = raw_connect(gw, f"127.0.0.1:{upstream.port}", _basic("pg-reader", mint("pg-reader")))
    assert status == 403
    doc = json_body(body)
    assert doc["code"] == "address_not_allowed" and "IP literal" in doc["reason"]


def test_resolved_loopback_is_refused_unless_the_destination_names_it(gw, upstream, mint):
    auth = _basic("pg-reader", mint("pg-reader"))
    # loopback-unnamed: `localhost` is no IP literal, but resolves to 127.0.0.1.
    status, _, _, body = raw_connect(gw, f"localhost:{_closed_port(gw)}", auth)
    assert status == 403, body
    doc = json_body(body)
    assert doc["code"] == "address_not_allowed"
    assert "resolves to the non-public address 127.0.0.1" in doc["reason"]
    # upstream: the same name, on a destination naming 127.0.0.1/32.
    assert gw.session("pg-reader", mint("pg-reader")).get(url(upstream)).status_code == 200


def _closed_port(gw) -> int:
    import yaml

    return yaml.safe_load(gw.policy_path.read_text())["destinations"]["loopback-unnamed"]["port"]


def test_proxy_authorization_never_reaches_the_upstream(gw, upstream, plain, idp, mint):
    token = mint("pg-reader")
    r = gw.session("pg-reader", token).get(url(upstream, "/echo"), headers={"X-Mark": "pa-https"})
    assert r.status_code == 200
    # Plain-HTTP proxy requests carry the token on every request: identified the same way.
    p = gw.session("pg-reader", token).get(f"http://localhost:{plain.port}/echo", headers={"X-Mark": "pa-http"})
    assert p.status_code == 200, p.text
    bearer = idp.mint(sub="system:serviceaccount:payments:svc-a")
    res = gw.curl(url(upstream, "/echo"), "-H", "X-Mark: pa-bearer",
                  "--proxy-header", f"Proxy-Authorization: Bearer {bearer}")
    assert res.stdout.rsplit("\n", 1)[1] == "200"
    seen = [x for x in upstream.received + plain.received
            if x["headers"].get("X-Mark") in ("pa-https", "pa-http", "pa-bearer")]
    assert len(seen) == 3
    for x in seen:
        assert not any(k.lower() == "proxy-authorization" for k in x["headers"])
        assert token not in json.dumps(x["headers"]) and bearer not in json.dumps(x["headers"])
    status, _, _, body = raw_connect(gw, f"localhost:{upstream.port}", f"Bearer {token}x")
    assert status == 407 and token not in "\n".join(gw.audit_lines()) + gw.log.text()


def test_plain_http_request_without_token_gets_407(gw, plain):
    s = gw.session()
    r = s.get(f"http://localhost:{plain.port}/echo")
    assert r.status_code == 407 and r.json()["code"] == "missing_token"
    assert "Proxy-Authenticate" in r.headers


# ------------------------------------------------------------------ credential custody


def test_injected_credential_reaches_upstream_and_never_the_workload(gw, upstream, mint):
    s = gw.session("pg-reader", mint("pg-reader"))
    r = s.get(url(upstream, "/echo"), headers={"X-Api-Key": "client-own-key", "X-Mark": "custody"})
    assert r.status_code == 200
    seen = [x for x in upstream.received if x["headers"].get("X-Mark") == "custody"][-1]
    assert seen["headers"]["X-Api-Key"] == API_KEY  # the client's own key was replaced
    assert API_KEY not in r.text and "client-own-key" not in r.text  # the echo is redacted
    rec = gw.records_for(r.headers["X-Pangate-Request-Id"])[0]
    assert rec["credential"] == {"destination": "upstream", "type": "header", "echo_redacted": True}
    assert API_KEY not in "\n".join(gw.audit_lines()) and API_KEY not in gw.log.text()


def test_mtls_client_certificate_is_presented_by_the_gateway(gw, mtls, pki, mint):
    server, _, _ = mtls
    target = f"https://localhost:{server.port}/echo"
    # The upstream really demands a certificate: a client without one is refused.
    with pytest.raises(requests.exceptions.SSLError):
        direct = requests.Session()
        direct.trust_env = False
        direct.get(target, verify=pki.ca_cert, timeout=10)
    r = gw.session("pg-reader", mint("pg-reader")).get(target, headers={"X-Mark": "mtls"})
    assert r.status_code == 200, r.text
    seen = [x for x in server.received if x["headers"].get("X-Mark") == "mtls"][-1]
    assert seen["client_cert"] == "pangate-gateway"  # the CN of the certificate only the gateway holds
    rec = gw.records_for(r.headers["X-Pangate-Request-Id"])[0]
    assert rec["credential"] == {"destination": "mtls-up", "type": "mtls"}


def test_policy_with_an_inline_secret_fails_policy_check(tmp_path):
    secret = "sk_live_" + secrets.token_hex(8)
    p = tmp_path / "inline.yaml"
    p.write_text(f"""version: 1
destinations:
  processor:
    host: api.processor.example
    credential:
      type: bearer
      token: {secret}
""")
    res = pangate_cli("policy", "check", str(p))
    assert res.returncode == 1
    assert f"{p}:7: destinations.processor.credential.token: a secret written in the policy is refused" in res.stderr
    assert secret not in res.stdout + res.stderr


# ------------------------------------------------------------------ reload and throttling


@pytest.fixture(scope="module")
def aux(start_gateway, policy_text, tmp_path_factory):
    """A second gateway for tests that change its policy or trip its throttle."""
    gw = start_gateway(policy=policy_text, env={"E2E_API_KEY": API_KEY},
                       options={"pangate_revocations": str(tmp_path_factory.mktemp("aux") / "rev.json"),
                                "pangate_auth_free_failures": 2, "pangate_auth_max_delay": "1s"})
    yield gw
    gw.stop()


def _write_atomically(path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_policy_change_applies_within_a_second_and_a_broken_file_changes_nothing(aux, upstream, idp, policy_text):
    s = aux.session("svc-a", idp.mint(sub="system:serviceaccount:payments:svc-a"))
    first = s.get(url(upstream, "/echo"))
    assert first.status_code == 200
    jwks_fetches = idp.hits["/jwks.json"]
    narrowed = policy_text.replace('paths: ["/v1/charges", "/echo"]', 'paths: ["/v1/charges"]')
    assert narrowed != policy_text
    mark = aux.log.mark()
    written = time.monotonic()
    _write_atomically(aux.policy_path, narrowed)
    aux.log.wait_for(r"pangate policy loaded", start=mark, timeout=5)
    assert time.monotonic() - written < 1.0
    r = s.get(url(upstream, "/echo"))
    assert r.status_code == 403 and r.json()["code"] == "no_rule"
    assert connection_of(aux, r) == connection_of(aux, first), "the reload dropped no connection"
    assert idp.hits["/jwks.json"] == jwks_fetches, "unchanged issuers keep their cached keys"

    mark = aux.log.mark()
    _write_atomically(aux.policy_path, policy_text.replace("methods: [GET]", "methods: [GETT]", 1))
    line = aux.log.wait_for(r"policy NOT reloaded.*", start=mark, timeout=5).group(0)
    assert "unknown method 'GETT'" in line and "policies.yaml:" in line
    assert s.get(url(upstream, "/echo")).status_code == 403  # the last good policy stays in force
    assert s.get(url(upstream, "/v1/charges")).status_code == 200
    rejected = wait_event(aux, "policy_rejected")
    assert rejected["alert"] is True and "GETT" in rejected["error"]

    mark = aux.log.mark()
    _write_atomically(aux.policy_path, policy_text)
    aux.log.wait_for(r"pangate policy loaded", start=mark, timeout=5)
    assert s.get(url(upstream, "/echo")).status_code == 200


def test_repeated_bad_tokens_are_slowed_down_and_recorded(aux, upstream, mint):
    target = f"localhost:{upstream.port}"
    bad = _basic("pg-reader", mint("pg-reader")[:-3] + "AAA")
    took = []
    for _ in range(5):
        t0 = time.monotonic()
        status, _, _, body = raw_connect(aux, target, bad)
        took.append(time.monotonic() - t0)
        assert status == 407 and json_body(body)["code"] == "bad_signature"
    # free failures: 2; then 0.25 s, 0.5 s, 1 s (the cap), 1 s.
    assert took[2] >= 0.24 and took[3] >= 0.49 and took[4] >= 0.99, took
    assert took[4] < 3, took
    throttled = wait_event(aux, "auth_throttled", source="127.0.0.1")
    assert throttled["alert"] is True and throttled["failures"] == 3
    # A good token from the same source is not delayed.
    t0 = time.monotonic()
    assert aux.session("pg-reader", mint("pg-reader")).get(url(upstream)).status_code == 200
    assert time.monotonic() - t0 < 0.9


def test_revocation_ends_a_request_waiting_for_approval(start_gateway, policy_text, upstream, mint, tmp_path):
    """`pangate revoke` reaches held flows too: the approvals addon listens for the `revoked` event."""
    from concurrent.futures import ThreadPoolExecutor

    from pangate.identity.tokens import keygen

    keygen(str(tmp_path / "alice.key"))
    approvals = policy_text.replace("\nroles:\n", "\n  pg-held:\n    issuer: pangate\n    roles: [reader]\nroles:\n", 1)
    approvals += f"""approvers:
  alice: {{groups: [leads], public_key_file: {tmp_path / 'alice.key.pub'}}}
approvals:
  echo-needs-a-person:
    identities: [pg-held]
    destination: upstream
    paths: ["/echo"]
    approvers: [alice]
    timeout: 60s
"""
    rev = str(tmp_path / "rev.json")
    gw = start_gateway(policy=approvals, env={"E2E_API_KEY": API_KEY},
                       options={"pangate_revocations": rev, "pangate_control_listen": "127.0.0.1:0"})
    try:
        with ThreadPoolExecutor(1) as pool:
            mark = gw.log.mark()
            held = pool.submit(gw.session("pg-held", mint("pg-held")).get, url(upstream, "/echo"), timeout=30)
            gw.log.wait_for(r"pangate approval held id=", start=mark, timeout=10)
            t0 = time.monotonic()
            assert pangate_cli("revoke", "pg-held", "--file", rev, "--policy", str(gw.policy_path)).returncode == 0
            r = held.result(timeout=10)
        assert r.status_code == 403 and "revoked" in r.json()["reason"], r.text
        assert time.monotonic() - t0 < 5  # ended by the revocation, not by the 60 s timeout
    finally:
        gw.stop()


def test_unreadable_revocation_list_fails_closed(aux, upstream, mint):
    path = aux.workdir / "broken-rev.json"
    s = aux.session("pg-reader", mint("pg-reader"))
    assert s.get(url(upstream)).status_code == 200  # a tunnel is open
    rev_option = next(a.split("=", 1)[1] for a in aux.proc.args if a.startswith("pangate_revocations="))
    mark = aux.log.mark()
    path.write_text("{not json")
    os.replace(path, rev_option)
    try:
        aux.log.wait_for(r"revocation list cannot be read", start=mark, timeout=5)
        r = s.get(url(upstream))
        assert r.status_code == 503 and r.json()["code"] == "revocations_unavailable", r.text
        # A list that vanishes would lift every revocation: refused as well.
        mark = aux.log.mark()
        os.remove(rev_option)
        aux.log.wait_for(r"revocation list .* disappeared", start=mark, timeout=5)
        r = s.get(url(upstream))
        assert r.status_code == 503 and "disappeared" in r.json()["reason"], r.text
    finally:
        mark = aux.log.mark()
        path.write_text('{"version": 1, "identities": {}, "jtis": {}}')
        os.replace(path, rev_option)
        aux.log.wait_for(r"revocation list loaded", start=mark, timeout=5)
    assert s.get(url(upstream)).status_code == 200


def test_mitmweb_never_shows_the_token_or_the_injected_credential(start_gateway, policy_text, plain, upstream, mint):
    """mitmweb's view runs before script addons: the Veil keeps both secrets from it."""
    web = start_gateway(policy=policy_text, tool="mitmweb", env={"E2E_API_KEY": API_KEY})
    token = mint("pg-reader")
    s = web.session("pg-reader", token)
    assert s.get(f"http://localhost:{plain.port}/echo", headers={"X-Mark": "web-plain"}).status_code == 200
    r = s.get(url(upstream, "/echo"), headers={"X-Mark": "web-tls"})
    assert r.status_code == 200
    assert any(x["headers"].get("X-Api-Key") == API_KEY for x in upstream.received)  # it was injected
    web.records_for(r.headers["X-Pangate-Request-Id"])  # the flow is complete
    flows = WebAPI(web).get("/flows").text
    assert "web-plain" in flows and "web-tls" in flows
    assert token not in flows and API_KEY not in flows
    assert "[injected by pangate]" in flows
