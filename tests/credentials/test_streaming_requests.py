"""Request bodies streamed under stream_large_bodies leave before the `request` hook."""

from __future__ import annotations

import pytest
import requests

from conftest import UPSTREAM_SECRET, policy_text

APPROVALS = """
approvers:
  alice: {groups: [leads]}
approvals:
  exports:
    roles: [writer]
    destination: upstream
    methods: [POST]
    paths: ["/v1/exports"]
    approvers: ["group:leads"]
"""


@pytest.fixture(scope="module")
def gw(start_gateway, token_key, upstream):
    return start_gateway(policy=policy_text(token_key, upstream.port, APPROVALS),
                         options={"stream_large_bodies": "1k"})


def test_streamed_request_still_gets_the_credential(gw, upstream, mint):
    body = b"x" * 20_000
    r = gw.session("writer", mint("writer")).post(f"https://localhost:{upstream.port}/echo", data=body, timeout=30,
                                                  headers={"X-Mark": "streamed-credential"})
    assert r.status_code == 200, r.text
    seen = [x for x in upstream.received if x["headers"].get("X-Mark") == "streamed-credential"][-1]
    assert seen["headers"]["Authorization"] == f"Bearer {UPSTREAM_SECRET}" and seen["body"] == body


def test_streamed_request_needing_approval_is_refused_not_sent(gw, upstream, mint):
    """mitmproxy cannot answer a request whose body it streams, so it is cut off, and recorded."""
    before = len(upstream.received)
    mark = gw.log.mark()
    with pytest.raises(requests.exceptions.ConnectionError):
        gw.session("writer", mint("writer")).post(f"https://localhost:{upstream.port}/v1/exports",
                                                  data=b"y" * 20_000, timeout=30)
    rid = gw.log.wait_for(r"pangate refused request (\S+) \(approval_needs_buffering\)", start=mark).group(1)
    assert gw.records_for(rid)[0]["code"] == "approval_needs_buffering"
    assert not any(x["path"] == "/v1/exports" for x in upstream.received[before:])


def test_streamed_response_echoing_the_credential_in_a_header_is_redacted(gw, upstream, mint):
    def echo_header(handler, seen):
        return 200, b"x" * 5000, "text/plain", {"X-Debug-Auth": seen["headers"].get("Authorization", "")}
    upstream.routes["/v1/echo-header"] = echo_header
    r = gw.session("writer", mint("writer")).post(f"https://localhost:{upstream.port}/v1/echo-header",
                                                  data=b"{}", timeout=30)
    assert r.status_code == 200 and len(r.content) == 5000
    assert UPSTREAM_SECRET not in r.headers["X-Debug-Auth"] and r.headers["X-Debug-Auth"].endswith("****")
