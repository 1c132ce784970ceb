"""Through a real mitmdump: spellings of a constrained query name and method overrides never reach the upstream."""

from __future__ import annotations

import secrets

import pytest


def _url(upstream, target: str) -> str:
    return f"https://localhost:{upstream.port}{target}"


def _send(gateway, upstream, mint, target: str, method: str = "GET", headers: dict | None = None):
    mark = secrets.token_hex(6)
    r = gateway.session("reader", mint("reader")).request(
        method, _url(upstream, target), headers={"X-Mark": mark, **(headers or {})})
    reached = [x for x in upstream.received if x["headers"].get("X-Mark") == mark]
    return r, reached


def test_a_plain_limit_within_the_bound_reaches_the_upstream(gateway, upstream, mint):
    r, reached = _send(gateway, upstream, mint, "/v1/charges?limit=100")
    assert r.status_code == 200, r.text
    assert [x["path"] for x in reached] == ["/v1/charges?limit=100"]


@pytest.mark.parametrize("target,code", [
    ("/v1/charges?limit[0]=1000", "no_rule"),
    ("/v1/charges?limit%5B%5D=1000", "no_rule"),
    ("/v1/charges?Limit=1000", "no_rule"),
    ("/v1/charges?limit.=1000", "no_rule"),
    ("/v1/charges?page[limit]=1000", "no_rule"),
    ("/v1/charges?limit%00=1000", "unsafe_query"),
    ("/v1/charges?limit%2500=1000", "unsafe_query"),
    ("/v1/charges?limit=10&LIMIT=1000", "ambiguous_query"),
    ("/v1/charges?limit[max]=1000", "ambiguous_query"),
    ("/v1/charges?_method=DELETE", "method_override"),
])
def test_spellings_of_limit_are_refused_and_send_nothing(gateway, upstream, mint, target, code):
    r, reached = _send(gateway, upstream, mint, target)
    assert r.status_code == 403, r.text
    assert r.json()["code"] == code, r.json()
    assert reached == []  # the upstream saw nothing of it


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-Method-Override", "X-HTTP-Method"])
def test_a_method_override_header_is_refused_and_sends_nothing(gateway, upstream, mint, header):
    r, reached = _send(gateway, upstream, mint, "/v1/charges", headers={header: "DELETE"})
    assert r.status_code == 403 and r.json()["code"] == "method_override", r.text
    assert reached == []


def test_a_method_override_in_a_form_body_is_refused_and_sends_nothing(gateway, upstream, mint):
    mark = secrets.token_hex(6)
    r = gateway.session("writer", mint("writer")).post(
        _url(upstream, "/v1/charges"), data={"_method": "DELETE"}, headers={"X-Mark": mark})
    assert r.status_code == 403 and r.json()["code"] == "method_override", r.text
    assert not [x for x in upstream.received if x["headers"].get("X-Mark") == mark]
