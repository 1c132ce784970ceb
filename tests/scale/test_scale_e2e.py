"""Two real gateways sharing a real Redis: revocations, approvals and grants cross instances;
a Redis outage refuses (503) instead of opening doors, and service returns by itself.
Also: one audit chain per instance (a second writer is refused) and verify over both chains."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
import requests

from pangate.identity.tokens import keygen

from conftest import json_body, policy_text, raw_connect
from harness import ARM_BLOCK, ROOT, VENV_BIN
from redisproc import RedisServer

RULES = """
approvers:
  alice: {{groups: [leads], public_key_file: {keys}/alice.key.pub}}
approvals:
  refund-run:
    identities: [writer]
    destination: upstream
    methods: [POST]
    paths: ["/v1/refunds"]
    approvers: [alice]
    timeout: 30s
  bulk-export:
    roles: [charges-reader]
    destination: upstream
    paths: ["/v1/charges"]
    query: {{limit: "> 50"}}
    approvers: [alice]
    mode: grant
    grant_window: 60s
    timeout: 30s
"""
PW_ENV = "PANGATE_TEST_REDIS_PASSWORD"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale-keys")
    keygen(d / "alice.key")
    return d


@pytest.fixture(scope="module")
def pair(start_gateway, token_key, upstream, keys, redis_server):
    policy = policy_text(token_key, upstream.port, RULES.format(keys=keys))
    gws = []
    for name in ("gw-a", "gw-b"):
        gw = start_gateway(policy=policy, env={PW_ENV: redis_server.password},
                           options={"pangate_state": redis_server.url, "pangate_state_password_env": PW_ENV,
                                    "pangate_instance": name, "pangate_health_listen": "127.0.0.1:0"})
        gw.control = gw.log.wait_for(r"pangate control endpoint listening at (http://\S+)").group(1)
        gw.health = gw.log.wait_for(r"pangate health endpoint listening at (http://\S+)").group(1)
        gw.log.wait_for(r"pangate shared state at .* answers")
        gws.append(gw)
    return gws


def _probe(gw, path):
    s = requests.Session()
    s.trust_env = False
    r = s.get(gw.health + path, timeout=10)
    return r.status_code, r.json()


def _cli(*args, env=None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PANGATE_")}
    return subprocess.run([str(VENV_BIN / "pangate"), *args], capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=30)


def _approve(gw, keys, approval_id):
    return _cli("approve", approval_id, env={"PANGATE_APPROVER": "alice", "PANGATE_CONTROL": gw.control,
                                             "PANGATE_APPROVER_KEY_FILE": str(keys / "alice.key")})


def _jti(token):
    return jwt.decode(token, options={"verify_signature": False})["jti"]


def _get(gw, upstream, token, path="/v1/charges", identity="reader"):
    return gw.session(identity, token).get(f"https://localhost:{upstream.port}{path}", timeout=20)


def _refusal(gw, upstream, token) -> tuple[int, str]:
    """A CONNECT's refusal as (status, code): clients hide a refused CONNECT's body."""
    status, _, _, body = raw_connect(gw, f"localhost:{upstream.port}", f"Bearer {token}")
    return status, (json_body(body).get("code") if body else None)


def test_revocation_through_one_is_refused_on_the_other_within_a_second(pair, upstream, mint, redis_server):
    a, b = pair
    t1, t2 = mint("reader"), mint("reader")
    s1 = b.session("reader", t1)  # a tunnel open on B before the revocation
    assert s1.get(f"https://localhost:{upstream.port}/v1/charges", timeout=20).status_code == 200
    mark = b.log.mark()
    # Revoked through A's own file, as `pangate revoke` does it today; A publishes it.
    r = _cli("revoke", "--jti", _jti(t1), "--file", str(a.workdir / "var" / "revocations.json"),
             "--policy", str(a.policy_path), "--reason", "leaked in a test")
    t0 = time.monotonic()
    assert r.returncode == 0, r.stderr
    b.log.wait_for(r"ALERT revoked: .*'via': 'shared'", timeout=5, start=mark)
    assert time.monotonic() - t0 < 1.0
    refused = s1.get(f"https://localhost:{upstream.port}/v1/charges", timeout=20)
    assert refused.status_code == 407 and refused.json()["code"] == "revoked"
    assert _get(b, upstream, t2).status_code == 200  # only that token

    # `pangate revoke --state` reaches every instance without any file.
    t3 = mint("reader")
    assert _get(a, upstream, t3).status_code == 200
    mark = a.log.mark()
    r = _cli("revoke", "--jti", _jti(t3), "--state", redis_server.url, "--state-password-env", PW_ENV,
             env={PW_ENV: redis_server.password})
    assert r.returncode == 0 and "shared state" in r.stdout, r.stderr
    a.log.wait_for(r"ALERT revoked: .*'via': 'shared'", timeout=5, start=mark)
    assert _refusal(a, upstream, t3) == (407, "revoked") and _refusal(b, upstream, t3) == (407, "revoked")


def test_approval_through_one_releases_the_flow_held_on_the_other(pair, upstream, mint, keys):
    a, b = pair
    with ThreadPoolExecutor(1) as pool:
        mark = a.log.mark()
        s = a.session("writer", mint("writer"))
        fut = pool.submit(s.post, f"https://localhost:{upstream.port}/v1/refunds", json={"n": 1}, timeout=30)
        aid = a.log.wait_for(r"pangate approval held id=(\S+)", start=mark).group(1)
        listed = _cli("approvals", "--json", env={"PANGATE_APPROVER": "alice", "PANGATE_CONTROL": b.control,
                                                  "PANGATE_APPROVER_KEY_FILE": str(keys / "alice.key")})
        assert aid in listed.stdout and '"instance": "gw-a"' in listed.stdout, listed.stdout + listed.stderr
        r = _approve(b, keys, aid)
        assert r.returncode == 0, r.stderr
        resp = fut.result(timeout=10)
    assert resp.status_code == 200, resp.text
    deadline = time.monotonic() + 10  # the writer commits in groups: poll the file for the record
    while not (granted := [x for x in a.audit_records()
                           if x.get("event") == "approval_granted" and x.get("approval_id") == aid]):
        assert time.monotonic() < deadline, "no approval_granted record on the holding instance"
        time.sleep(0.05)
    assert granted and granted[0]["approver"] == "alice" and granted[0]["instance"] == "gw-a"


def test_grant_counted_on_one_is_honoured_on_the_other(pair, upstream, mint, keys):
    a, b = pair
    token = mint("reader")
    first = _get(a, upstream, token, "/v1/charges?limit=60")
    assert first.status_code == 403 and first.json()["code"] == "approval_required"
    aid = first.headers["X-Pangate-Approval-Id"]
    assert _get(b, upstream, token, "/v1/charges?limit=60").headers["X-Pangate-Approval-Id"] == aid  # one request
    assert _approve(a, keys, aid).returncode == 0
    assert _get(b, upstream, token, "/v1/charges?limit=60").status_code == 200


def test_redis_outage_refuses_and_service_returns_by_itself(pair, upstream, mint, keys, redis_server):
    a, b = pair
    token = mint("reader")
    revoked = [x for x in b.audit_records() if x.get("event") == "revoked" and x.get("via") == "shared"]
    assert revoked  # the first test revoked a token on A's file
    marks = [gw.log.mark() for gw in pair]
    redis_server.stop()
    try:
        for gw, mark in zip(pair, marks, strict=True):
            gw.log.wait_for(r"ALERT state_unavailable", timeout=10, start=mark)
            assert _refusal(gw, upstream, token) == (503, "state_unavailable")
            status, doc = _probe(gw, "/readyz")
            assert status == 503 and doc["checks"]["SharedState"] == "failing", doc
            assert _probe(gw, "/healthz")[0] == 200  # alive all the same: no restart wanted
            status, doc = _probe(gw, "/readyz")
            assert status == 503 and doc["checks"]["SharedState"] == "failing", doc
            assert _probe(gw, "/healthz")[0] == 200  # alive all the same: no restart wanted
        # A vote cannot be counted either: said so, nothing decided.
        r = _approve(b, keys, "apr_0000000000000000")
        assert r.returncode == 1 and "nothing was decided" in r.stderr
    finally:
        marks = [gw.log.mark() for gw in pair]
        redis_server.start()  # same port, empty: no persistence
    for gw, mark in zip(pair, marks, strict=True):
        gw.log.wait_for(r"shared state at .* answers again", timeout=10, start=mark)
    assert _get(a, upstream, token).status_code == 200 and _get(b, upstream, token).status_code == 200
    status, doc = _probe(a, "/readyz")
    assert status == 200 and doc["status"] == "ready" and doc["instance"] == "gw-a", doc
    # Redis came back empty; A put back the revocation its file holds, so B still refuses it.
    jti = revoked[0]["jti"]
    deadline = time.monotonic() + 5
    while redis_server.client().get(f"pangate:rev:jtis:{jti}") is None:
        assert time.monotonic() < deadline, "the revocation was not put back"
        time.sleep(0.05)


def test_second_writer_on_an_audit_directory_refuses_to_start(pair, confdir, pki, tmp_path):
    a = pair[0]
    args = [str(VENV_BIN / "mitmdump"), "-s", str(ROOT / "addons" / "gateway.py"), "--listen-host", "127.0.0.1",
            "--listen-port", "0", "--set", f"confdir={confdir}",
            "--set", f"ssl_verify_upstream_trusted_ca={pki.ca_cert}",
            "--set", f"pangate_policy={a.policy_path}", "--set", f"pangate_audit_dir={a.audit_dir}",
            "--set", f"pangate_audit_key={a.workdir / 'audit-signing.key'}", "--set", f"block_list={ARM_BLOCK}",
            "--set", "pangate_control_listen="]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert f"pid {a.proc.pid}, instance gw-a" in out and "refuses to start" in out, out[-3000:]
    assert "pangate gateway live" not in out


def test_audit_verify_over_both_instances_chains(pair):
    a, b = pair
    r = _cli("audit", "verify", "--live", "--pubkey", str(a.workdir / "audit-signing.key.pub"),
             "--pubkey", str(b.workdir / "audit-signing.key.pub"), str(a.audit_dir), str(b.audit_dir))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "instances: 2 chains, 2 OK" in r.stdout and "merged time range: 20" in r.stdout
    assert "instance: gw-a" in r.stdout and "instance: gw-b" in r.stdout
