"""Unit cases for issue 4: resolved-address checks, revocation, throttling, verifier reuse, mTLS material."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import types

import pytest
from mitmproxy import connection
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow

from pangate.cli import main as cli  # noqa: E402
from pangate.common import events
from pangate.credentials.addon import read_client_cert
from pangate.policy.decide import address_refusal, destinations_for
from pangate.identity.addon import Caller, Identify, Throttle
from pangate.dev.pki import make_ca, make_leaf
from pangate.policy.model import Credential, parse_policy
from pangate.authorize.addon import AddressGuard
from pangate.authorize.address import Refused, checked_address
from pangate.identity.addon import Revocations
from pangate.identity.revocation import editing, parse, read
from pangate.identity.tokens import Principal, keygen

POLICY = """version: 1
destinations:
  api: {host: api.example.com}
  internal: {host: svc.internal.example, addresses: [10.1.0.0/16]}
  lo: {host: localhost, port: 8443, addresses: [127.0.0.1/32]}
  meta: {host: metadata.internal.example, scheme: http, addresses: [169.254.169.254/32]}
"""


@pytest.fixture(scope="module")
def policy():
    return parse_policy(POLICY, "p.yaml")


# ------------------------------------------------------------------ address checks


@pytest.mark.parametrize("host,resolved,fragment", [
    ("api.example.com", "93.184.216.34", None),
    ("api.example.com", "169.254.169.254", "cloud metadata"),
    ("api.example.com", "::ffff:169.254.169.254", "cloud metadata"),
    ("api.example.com", "64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64
    ("api.example.com", "2002:a9fe:a9fe::1", "cloud metadata"),  # 6to4
    ("api.example.com", "::a9fe:a9fe", "cloud metadata"),  # IPv4-compatible
    ("api.example.com", "fd00:ec2::254", "cloud metadata"),
    ("api.example.com", "100.100.100.200", "cloud metadata"),
    ("api.example.com", "10.0.0.7", "non-public address 10.0.0.7"),
    ("api.example.com", "192.168.1.1", "non-public"),
    ("api.example.com", "172.16.5.5", "non-public"),
    ("api.example.com", "169.254.10.10", "non-public"),  # link-local
    ("api.example.com", "127.0.0.1", "non-public"),
    ("api.example.com", "::1", "non-public"),
    ("api.example.com", "fd12::1", "non-public"),
    ("api.example.com", "0.0.0.0", "non-public"),
    ("svc.internal.example", "10.1.2.3", None),  # named by the destination
    ("svc.internal.example", "10.2.0.1", "non-public"),  # outside the named network
    ("metadata.internal.example", "169.254.169.254", None),  # a destination may name even this
])
def test_resolved_address_refusal(policy, host, resolved, fragment):
    dests = destinations_for(policy, host, 80 if host.startswith("metadata") else 443)
    assert dests, host
    problem = address_refusal(host, dests, resolved=resolved)
    if fragment is None:
        assert problem is None
    else:
        assert problem and fragment in problem


def test_checked_address_skips_refused_answers(policy):
    dests = destinations_for(policy, "api.example.com", 443)
    # A rebinding-style answer mixing public and metadata addresses: only the public one is used.
    assert checked_address("api.example.com", dests, ["169.254.169.254", "93.184.216.34"]) == "93.184.216.34"
    with pytest.raises(Refused, match="metadata.*non-public address 10.0.0.1"):
        checked_address("api.example.com", dests, ["169.254.169.254", "10.0.0.1"])
    with pytest.raises(Refused, match="not a destination"):
        checked_address("evil.example", [], ["93.184.216.34"])


def test_destinations_for_matches_host_port_and_scheme(policy):
    assert [d.name for d in destinations_for(policy, "API.example.com.", 443)] == ["api"]
    assert destinations_for(policy, "api.example.com", 443, "http") == []
    assert destinations_for(policy, "localhost", 443) == []


class _Store:
    def __init__(self, policy):
        self.policy = policy


def _data(host, port):
    return ServerConnectionHookData(server=connection.Server(address=(host, port)), client=tflow.tclient_conn())


def _guard(policy, answers):
    async def fake_resolver(host, port):
        if host not in answers:
            raise Refused(f"{host} does not resolve")
        return answers[host]
    return AddressGuard(_Store(policy), resolver=fake_resolver)


def test_server_connect_pins_the_checked_address_and_gives_the_name_back(policy):
    guard = _guard(policy, {"localhost": ["127.0.0.1"]})
    data = _data("localhost", 8443)
    asyncio.run(guard.server_connect(data))
    assert data.server.error is None
    assert data.server.address == ("127.0.0.1", 8443)  # mitmproxy connects to exactly this
    assert data.server.sni == "localhost"  # TLS still names and verifies the host
    data.server.state = connection.ConnectionState.OPEN
    data.server.peername = ("127.0.0.1", 8443)
    guard.server_connected(data)
    assert data.server.address == ("localhost", 8443)  # in-tunnel requests and reuse match on the name


@pytest.mark.parametrize("host,answers,fragment", [
    ("api.example.com", ["169.254.169.254"], "cloud metadata"),
    ("api.example.com", ["10.9.9.9"], "non-public"),
    ("localhost", ["127.0.0.2"], "non-public"),  # loopback, but not the named 127.0.0.1/32
    ("evil.example", ["93.184.216.34"], "not a destination"),
    ("gone.example.com", None, "does not resolve"),
])
def test_server_connect_refuses_and_the_connect_gets_a_403(policy, host, answers, fragment):
    port = 8443 if host == "localhost" else 443
    guard = _guard(policy, {host: answers} if answers else {})
    data = _data(host, port)
    asyncio.run(guard.server_connect(data))
    assert data.server.error and fragment in data.server.error
    assert data.server.address == (host, port)  # never pointed anywhere
    flow = tflow.tflow()
    flow.request.method = "CONNECT"
    flow.server_conn = data.server
    guard.http_connect_error(flow)
    body = json.loads(flow.response.content)
    assert flow.response.status_code == 403 and body["code"] == "address_not_allowed" and fragment in body["reason"]


def test_server_connect_fails_closed_when_the_check_breaks(policy):
    async def broken(host, port):
        raise RuntimeError("resolver exploded")
    guard = AddressGuard(_Store(policy), resolver=broken)
    data = _data("api.example.com", 443)
    asyncio.run(guard.server_connect(data))
    assert data.server.error and "check failed" in data.server.error


# ------------------------------------------------------------------ throttling


def test_throttle_delays_exponentially_capped_and_forgets():
    now = [1000.0]
    t = Throttle(free=2, max_delay=1.0, clock=lambda: now[0])
    delays = [t.failed("10.0.0.1")[1] for _ in range(6)]
    assert delays == [0, 0, 0.25, 0.5, 1.0, 1.0]
    assert t.failed("10.0.0.2") == (1, 0.0)  # per source
    now[0] += Throttle.WINDOW + 1
    assert t.failed("10.0.0.1") == (1, 0.0)  # old failures leave the window


def test_throttle_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(Throttle, "MAX_SOURCES", 3)
    t = Throttle()
    for i in range(10):
        t.failed(f"10.0.0.{i}")
    assert len(t._failures) == 3


# ------------------------------------------------------------------ revocations


def _caller(name="svc", jti="t-1"):
    return Caller(name, Principal(issuer="pangate", subject=name, token_id=jti, method="pangate"))


def test_revocation_file_round_trip(tmp_path):
    path = str(tmp_path / "var" / "revocations.json")
    assert read(path).identities == {}  # missing: nothing revoked
    with editing(path) as lst:
        lst.identities["svc"] = {"at": 1.0, "reason": "stolen"}
        lst.jtis["abc"] = {"at": 2.0, "reason": "leaked"}
    back = read(path)
    assert back.identities["svc"]["reason"] == "stolen" and "abc" in back.jtis
    assert [p for p in os.listdir(tmp_path / "var") if p.startswith(".revocations-")] == []  # no temp left


@pytest.mark.parametrize("text,fragment", [
    ("{", "not JSON"),
    ('{"version": 2}', "version 1"),
    ('{"version": 1, "identities": []}', "identities must map"),
])
def test_revocation_file_errors(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse(text, "rev.json")


def test_revocations_addon_reloads_announces_and_fails_closed(tmp_path):
    path = tmp_path / "rev.json"
    seen = []
    events.subscribe(seen.append)
    try:
        rev = Revocations()
        with taddons.context(rev) as tctx:
            tctx.configure(rev, pangate_revocations=str(path))
            assert rev.healthy and rev.is_revoked(_caller()) is None
            with editing(str(path)) as lst:
                lst.identities["svc"] = {"at": 1.0, "reason": "host compromised"}
            rev.poll()
            assert "host compromised" in rev.is_revoked(_caller())
            assert rev.is_revoked(_caller("other", "t-2")) is None
            assert [e for e in seen if e["event"] == "revoked"][-1]["identity"] == "svc"
            with editing(str(path)) as lst:
                lst.identities.clear()
                lst.jtis["t-2"] = {"at": 1.0, "reason": "leaked"}
            rev.poll()
            assert rev.is_revoked(_caller()) is None and "t-2" in rev.is_revoked(_caller("other", "t-2"))
            assert any(e["event"] == "unrevoked" and e["identity"] == "svc" for e in seen)
            path.write_text("{broken")
            rev.poll()
            assert not rev.healthy and "cannot be read" in rev.problem
            assert seen[-1]["event"] == "revocations_rejected" and seen[-1]["alert"]
    finally:
        events.unsubscribe(seen.append)


def test_revoke_cli(tmp_path, capsys):
    f = str(tmp_path / "rev.json")
    pol = tmp_path / "policies.yaml"
    pol.write_text("version: 1\nissuers:\n  pg: {type: pangate, public_key_file: k.pub}\n"
                   "identities:\n  svc: {issuer: pg, roles: []}\n")
    assert cli.main(["revoke", "svc", "--reason", "laptop lost", "--file", f, "--policy", str(pol)]) == 0
    assert cli.main(["revoke", "--jti", "_x-1", "--file", f]) == 0
    assert cli.main(["revoke", "--jti=-y2", "--file", f]) == 0  # JWT ids may start with -
    assert cli.main(["revoke", "svx", "--file", f, "--policy", str(pol)]) == 2  # a typo is not a revocation
    assert cli.main(["revoke", "svc", "--jti", "x", "--file", f]) == 2
    assert cli.main(["revoke", "bad name", "--file", f, "--force"]) == 2
    capsys.readouterr()
    assert cli.main(["revoke", "--list", "--file", f]) == 0
    out = capsys.readouterr().out
    assert "identity\tsvc" in out and "laptop lost" in out and "jti\t_x-1" in out
    assert cli.main(["unrevoke", "svc", "--file", f]) == 0
    assert cli.main(["unrevoke", "svc", "--file", f]) == 1
    assert set(read(f).identities) == set() and set(read(f).jtis) == {"_x-1", "-y2"}


# ------------------------------------------------------------------ verifier reuse


def test_identity_keeps_its_verifier_while_issuers_are_unchanged(tmp_path):
    key = str(tmp_path / "k")
    keygen(key)
    text = (f"version: 1\nissuers:\n  pg: {{type: pangate, public_key_file: {key}.pub}}\n"
            "identities:\n  svc: {issuer: pg, roles: [r]}\nroles:\n  r: {}\n")
    store = types.SimpleNamespace(subscribe=lambda fn: None)
    ident = Identify(store)
    ident._policy_changed(parse_policy(text, str(tmp_path / "p.yaml")))
    first = ident.verifier
    ident._policy_changed(parse_policy(text + "  other: {}\n", str(tmp_path / "p.yaml")))
    assert ident.verifier is first  # roles changed, issuers did not: cached keys kept
    ident._policy_changed(parse_policy(text.replace("public_key_file", "leeway: 5s, public_key_file"),
                                       str(tmp_path / "p.yaml")))
    assert ident.verifier is not first
    second = ident.verifier
    os.remove(key + ".pub")
    os.remove(key)
    keygen(key)  # same file name, new key: a change
    ident._policy_changed(parse_policy(text.replace("public_key_file", "leeway: 5s, public_key_file"),
                                       str(tmp_path / "p.yaml")))
    assert ident.verifier is not second


# ------------------------------------------------------------------ mTLS material


def test_client_certificate_is_checked_at_load(tmp_path):
    ca = make_ca(str(tmp_path), "client-ca")
    cert, key = make_leaf(ca, str(tmp_path), ["gw"], "gw")
    _, other_key = make_leaf(ca, str(tmp_path), ["gw2"], "gw2")
    assert read_client_cert(Credential("mtls", None, None, cert, key)).cert.subject
    with pytest.raises(ValueError, match="does not belong"):
        read_client_cert(Credential("mtls", None, None, cert, other_key))
    with pytest.raises(ValueError, match="cannot read"):
        read_client_cert(Credential("mtls", None, None, str(tmp_path / "nope.pem"), key))
    shutil.copy(key, tmp_path / "as-cert.pem")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        read_client_cert(Credential("mtls", None, None, str(tmp_path / "as-cert.pem"), key))
    assert "BEGIN" not in repr(read_client_cert(Credential("mtls", None, None, cert, key)))
