"""Shared fixtures: a real HTTPS upstream with its own CA, token keys, and running gateways."""

from __future__ import annotations

import http.client
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from mitmproxy.certs import CertStore

from pangate.dev.demo_upstream import DemoUpstream
from pangate.dev.pki import make_ca, make_leaf
from pangate.identity.tokens import issue, keygen

import leakscan
from harness import Gateway

UPSTREAM_SECRET = "sk_live_" + secrets.token_hex(12)

TEST_POLICY = """
version: 1
issuers:
  pangate:
    type: pangate
    public_key_file: {pubkey}
identities:
  reader:
    issuer: pangate
    roles: [charges-reader]
  writer:
    issuer: pangate
    roles: [charges-reader, writer]
  legacy-ci:
    roles: [charges-reader]
    static_key: {{sha256: "sha256:{static_sha}", reason: "legacy job without an IdP, retire by Q3"}}
roles:
  charges-reader:
    allow:
      - destination: upstream
        methods: [GET]
        paths: ["/v1/charges", "/v1/charges/*", "/echo", "/gzip", "/bad-gzip", "/public/**"]
        query: {{limit: "<= 100"}}
  writer:
    allow:
      - destination: upstream
        methods: [POST, PUT]
        paths: ["/v1/**", "/echo"]
destinations:
  upstream:
    host: localhost
    port: {port}
    card_data: true
    addresses: [127.0.0.1/32]
    credential:
      type: bearer
      env: UPSTREAM_KEY
  elsewhere:
    host: 127.0.0.1
    port: {port}
    addresses: [127.0.0.1/32]
"""

STATIC_KEY = "pgk_" + secrets.token_hex(16)


@dataclass
class Pki:
    ca_cert: str
    ca_key: str
    cert: str
    key: str


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("upstream-pki")
    ca = make_ca(str(d), "upstream-test-ca")
    cert, key = make_leaf(ca, str(d), ["localhost", "127.0.0.1"], "upstream")
    return Pki(ca[0], ca[1], cert, key)


@pytest.fixture(scope="session")
def upstream(pki):
    server = DemoUpstream("127.0.0.1", 0, pki.cert, pki.key).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="session")
def confdir(tmp_path_factory) -> Path:
    """The gateway's interception CA, shared by every gateway of the session."""
    d = tmp_path_factory.mktemp("gateway-ca")
    CertStore.from_store(str(d), "mitmproxy", 2048)
    return d


@pytest.fixture(scope="session")
def token_key(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("token-key") / "token-signing.key")
    keygen(path)
    return path


@pytest.fixture(scope="session")
def mint(token_key):
    def _mint(identity: str, ttl: float = 300) -> str:
        return issue(token_key, identity, ttl)
    return _mint


def policy_text(token_key: str, upstream_port: int, extra: str = "") -> str:
    import hashlib

    return TEST_POLICY.format(pubkey=token_key + ".pub", port=upstream_port,
                              static_sha=hashlib.sha256(STATIC_KEY.encode()).hexdigest()) + extra


@pytest.fixture(scope="session")
def start_gateway(tmp_path_factory, confdir, pki, token_key, upstream):
    """Start another gateway with its own policy/options; stopped at the end of the session."""
    started = []

    def _start(policy: str | None = None, env: dict | None = None, **kwargs) -> Gateway:
        workdir = tmp_path_factory.mktemp("gateway")
        gw = Gateway(workdir, policy or policy_text(token_key, upstream.port), confdir, pki.ca_cert,
                     env={"UPSTREAM_KEY": UPSTREAM_SECRET, **(env or {})}, **kwargs)
        started.append(gw)
        return gw

    yield _start
    found = []
    for gw in started:
        gw.stop()
        found += [f"{gw.workdir.name}/{line}" for line in leakscan.leaks(
            gw.workdir, gw.log.text(), [UPSTREAM_SECRET, STATIC_KEY])]
    # The second wall, checked independently: nothing any gateway of the session wrote or
    # printed holds a test card number or an injected secret, in any recoverable form.
    assert not found, "sensitive data at rest:\n" + "\n".join(found[:60])


@pytest.fixture(scope="session")
def gateway(start_gateway) -> Gateway:
    """The default gateway with the test policy, shared by the session's tests."""
    return start_gateway()


def raw_connect(gw: Gateway, target: str, proxy_auth: str | None = None) -> tuple[int, str, dict, bytes]:
    """Send one CONNECT and return (status, reason, headers, body): clients hide refused CONNECT bodies."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
    headers = {"Host": target}
    if proxy_auth:
        headers["Proxy-Authorization"] = proxy_auth
    conn.request("CONNECT", target, headers=headers)
    resp = conn.getresponse()
    body = resp.read() if resp.status != 200 else b""
    conn.close()
    return resp.status, resp.reason, dict(resp.headers), body


def json_body(body: bytes) -> dict:
    return json.loads(body.decode())
