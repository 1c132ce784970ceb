"""End to end through a real mitmdump: identify, authorize, inject, mask, record."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from pangate.dev.demo_upstream import TEST_PANS
from pangate.pan.engine import find_pans

from conftest import STATIC_KEY, UPSTREAM_SECRET, json_body, raw_connect


def _url(upstream, path: str) -> str:
    return f"https://localhost:{upstream.port}{path}"


def _basic(identity: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{identity}:{token}".encode()).decode()


def test_allowed_get_is_masked(gateway, upstream, mint):
    token = mint("reader")
    r = gateway.session("reader", token).get(_url(upstream, "/v1/charges"))
    assert r.status_code == 200, r.text
    body = r.text
    for pan in TEST_PANS:
        assert pan not in body
    cards = [c["card"]["number"] for c in r.json()["data"]]
    assert cards[0] == "424242******4242"
    assert cards[1] == "555555******4444"
    assert not find_pans(r.content)
    recs = gateway.records_for(r.headers["X-Pangate-Request-Id"])
    assert len(recs) == 1
    rec = recs[0]
    assert rec["outcome"] == "allowed" and rec["status"] == 200
    assert rec["identity"]["name"] == "reader" and rec["identity"]["method"] == "pangate"
    assert rec["rule"] == "charges-reader/0"
    assert rec["destination"]["host"] == "localhost" and rec["destination"]["path"] == "/v1/charges"
    assert rec["pans_masked"] >= 3


def test_curl_through_the_gateway(gateway, upstream, mint):
    res = gateway.curl(_url(upstream, "/v1/charges"), identity="reader", token=mint("reader"))
    body, status = res.stdout.rsplit("\n", 1)
    assert status == "200", res.stderr
    assert "424242******4242" in body and "4242424242424242" not in body


def test_no_token_gives_407(gateway, upstream):
    status, reason, headers, body = raw_connect(gateway, f"localhost:{upstream.port}")
    assert status == 407
    assert "Bearer" in headers["Proxy-Authenticate"] or "Basic" in headers["Proxy-Authenticate"]
    doc = json_body(body)
    assert doc["error"] == "proxy_auth_required" and doc["code"] == "missing_token" and doc["request_id"]
    assert "missing_token" in reason


def test_wrong_token_gives_407_with_reason(gateway, upstream, mint):
    token = mint("reader")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    status, _, headers, body = raw_connect(gateway, f"localhost:{upstream.port}", _basic("reader", forged))
    assert status == 407 and "Proxy-Authenticate" in headers
    doc = json_body(body)
    assert doc["code"] == "bad_signature"
    assert forged not in body.decode() and token[:20] not in body.decode()
    status, _, _, body = raw_connect(gateway, f"localhost:{upstream.port}", "Bearer not-a-token")
    assert status == 407 and json_body(body)["code"] in ("malformed", "unknown_static_key")


def test_requests_sees_407_for_missing_token(gateway, upstream):
    with pytest.raises(requests.exceptions.ProxyError, match="407"):
        gateway.session().get(_url(upstream, "/v1/charges"))


def test_path_not_allowed_gives_403_json(gateway, upstream, mint):
    r = gateway.session("reader", mint("reader")).get(_url(upstream, "/admin/users"))
    assert r.status_code == 403
    doc = r.json()
    assert doc["error"] == "forbidden" and doc["code"] == "no_rule" and doc["request_id"]
    assert "/admin/users" in doc["reason"]
    assert not any(seen["path"] == "/admin/users" for seen in upstream.received)


def test_method_and_query_limits(gateway, upstream, mint):
    s = gateway.session("reader", mint("reader"))
    assert s.post(_url(upstream, "/v1/charges"), json={}).status_code == 403
    assert s.get(_url(upstream, "/v1/charges?limit=100")).status_code == 200
    r = s.get(_url(upstream, "/v1/charges?limit=5000"))
    assert r.status_code == 403 and r.json()["code"] == "no_rule"


def test_host_not_allowed_gives_403_json(gateway, upstream, mint):
    status, reason, _, body = raw_connect(gateway, "pay.example.org:443", _basic("reader", mint("reader")))
    assert status == 403
    doc = json_body(body)
    assert doc["code"] == "unknown_destination" and "pay.example.org" in doc["reason"]
    # An IP literal needs a destination naming it, and a rule for the identity.
    status, _, _, body = raw_connect(gateway, f"127.0.0.1:{upstream.port}", _basic("reader", mint("reader")))
    assert status == 403 and json_body(body)["code"] == "no_rule"


def test_injected_credential_reaches_upstream_client_auth_does_not(gateway, upstream, mint):
    s = gateway.session("reader", mint("reader"))
    r = s.get(_url(upstream, "/echo"), headers={"Authorization": "Bearer client-own-secret", "X-Mark": "inject-1"})
    assert r.status_code == 200
    seen = [x for x in upstream.received if x["headers"].get("X-Mark") == "inject-1"][-1]
    assert seen["headers"]["Authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert "Proxy-Authorization" not in seen["headers"]
    # The echo of the credential is redacted before the workload sees it.
    assert UPSTREAM_SECRET not in r.text and "client-own-secret" not in r.text


def test_static_key_is_a_declared_exception(gateway, upstream):
    r = gateway.session("legacy-ci", STATIC_KEY).get(_url(upstream, "/v1/charges"))
    assert r.status_code == 200
    rec = gateway.records_for(r.headers["X-Pangate-Request-Id"])[0]
    assert rec["identity"]["static_key"] is True and rec["identity"]["name"] == "legacy-ci"


def test_every_flow_is_recorded_without_pans_or_tokens(gateway, upstream, mint):
    token = mint("reader")
    s = gateway.session("reader", token)
    ids = []
    for path in ("/v1/charges", "/admin", "/echo"):
        ids.append(s.get(_url(upstream, path)).headers["X-Pangate-Request-Id"])
    for rid in ids:
        assert len(gateway.records_for(rid)) == 1
    status, _, headers, _ = raw_connect(gateway, f"localhost:{upstream.port}", _basic("reader", token + "x"))
    assert status == 407
    text = "\n".join(gateway.audit_lines())
    for pan in TEST_PANS:
        assert pan not in text
    assert token not in text and STATIC_KEY not in text and UPSTREAM_SECRET not in text
    assert not find_pans(text.encode())
    for line in gateway.audit_lines():
        json.loads(line)


def test_undecodable_body_is_refused_not_forwarded(gateway, upstream, mint):
    """A body that claims gzip but is not cannot be masked: the flow is refused with the decoder's code."""
    def bad_gzip(handler, seen):
        return 200, b"not gzip at all " + TEST_PANS[0].encode(), "application/json", {"Content-Encoding": "gzip"}
    upstream.routes["/bad-gzip"] = bad_gzip
    r = gateway.session("reader", mint("reader")).get(_url(upstream, "/bad-gzip"))
    assert r.status_code == 502
    assert TEST_PANS[0].encode() not in r.content
    doc = r.json()
    assert doc["code"] == "undecodable_body" and doc["request_id"]
    rec = gateway.records_for(doc["request_id"])[0]
    assert rec["outcome"] == "error" and rec["failed_hook"].endswith(".response")


def test_echoed_credential_is_redacted_in_its_wire_form(start_gateway, token_key, upstream, mint):
    """A basic credential goes out base64-encoded: an upstream echoing that must not leak it."""
    from conftest import policy_text

    policy = policy_text(token_key, upstream.port).replace("type: bearer\n      env: UPSTREAM_KEY",
                                                           "type: basic\n      env: UPSTREAM_KEY")
    gw = start_gateway(policy=policy, env={"UPSTREAM_KEY": "svc-user:" + UPSTREAM_SECRET})
    r = gw.session("reader", mint("reader")).get(_url(upstream, "/echo"), headers={"X-Mark": "basic-echo"})
    assert r.status_code == 200
    wire = base64.b64encode(f"svc-user:{UPSTREAM_SECRET}".encode()).decode()
    seen = [x for x in upstream.received if x["headers"].get("X-Mark") == "basic-echo"][-1]
    assert seen["headers"]["Authorization"] == f"Basic {wire}"
    assert wire not in r.text and UPSTREAM_SECRET not in r.text
