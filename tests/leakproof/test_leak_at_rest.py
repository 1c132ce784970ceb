"""At rest: no card number comes to rest in the audit trail, the gateway's output or recordings.

Class 8: a refusal's reason must not echo the raw request part that caused it
(a path, a CONNECT target, a Host header, an SNI) into the refusal body, the
audit record or the log. Class 9: recordings (var/recordings, mitmproxy flow
files) hold no card number from header names, websocket close reasons,
refusal bodies or escaped and encoded forms; leakscan reads the file bytes in
every recoverable form.
"""

from __future__ import annotations

import codecs
import json
import ssl

import pytest
from wsproto.events import CloseConnection, TextMessage

import leakscan
from conftest import raw_connect
from leakkit import (ALL_PANS, HARMLESS, Rest, assert_refusal, brand_pan, group, head_rid, proxy_auth, raw_request,
                     recordings_bytes, wait_recorded, ws_exchange)
from pan_upstream import send

pytest_plugins = ["leakkit"]  # fixtures up, up2, lgw: one gateway for this module


def _pans(data: bytes) -> set[str]:
    return leakscan.pans_in(data) | leakscan.pans_in(data, ALL_PANS)


def _rid_of(head: bytes, body: bytes) -> str | None:
    rid = head_rid(head)
    if rid is None and body.startswith(b"{"):
        try:
            rid = json.loads(body).get("request_id")
        except ValueError:
            pass
    return rid


def _decision_id(gw, mark: int) -> str | None:
    try:
        return gw.log.wait_for(r"pangate decision id=([\w-]+)", timeout=5, start=mark).group(1)
    except TimeoutError:
        return None


# ---- class 8: refusal reasons do not echo raw request parts -------------------------------------------
ECHO = ["path_denied", "path_denied_grouped", "path_denied_pct_digits", "query_on_denied_path", "method_denied",
        "connect_host", "connect_host_grouped", "host_header", "host_header_grouped", "sni"]


@pytest.mark.parametrize("variant", ECHO)
def test_refusal_reasons_do_not_echo_request_parts(lgw, up, mint, variant):
    pan = brand_pan(ECHO.index(variant))
    with Rest(lgw) as rest:
        mark = lgw.log.mark()
        n0 = len(up.received)
        body = b""
        head = b""
        if variant.startswith("connect_host"):
            name = pan if variant == "connect_host" else group(pan, "-")
            status, reason, _, body = raw_connect(lgw, f"{name}.example:443", proxy_auth(mint("app")))
            head = reason.encode()
        elif variant == "sni":
            try:
                status, head, body = raw_request(lgw, mint, "localhost", up.port, "GET", "/c/sni", (),
                                                 server_hostname=f"{pan}.example")
            except (ssl.SSLError, OSError, AssertionError) as e:
                # Refusing the handshake is a safe outcome: the client learns nothing.
                status, head, body = 0, str(e).encode(), b""
        else:
            target = {"path_denied": f"/admin/{pan}", "path_denied_grouped": f"/admin/{group(pan, '-')}",
                      "path_denied_pct_digits": "/admin/" + "".join(f"%{ord(d):02X}" for d in pan),
                      "query_on_denied_path": f"/admin?card={pan}", "method_denied": f"/c/cards/{pan}",
                      "host_header": "/c/host", "host_header_grouped": "/c/host"}[variant]
            method = "DELETE" if variant == "method_denied" else "GET"
            host_header = None
            if variant.startswith("host_header"):
                host_header = f"{pan if variant == 'host_header' else group(pan, '-')}.example:{up.port}"
            status, head, body = raw_request(lgw, mint, "localhost", up.port, method, target, host_header=host_header)
        rest.rid = _rid_of(head, body) or _decision_id(lgw, mark)
        assert not _pans(head), f"the status line or headers echo the card number: {head[:300]!r}"
        assert not _pans(body), f"the refusal body echoes the card number: {body[:300]!r}"
        if body or variant != "sni":
            assert_refusal(status, body, None, statuses=(400, 403, 407, 421))
        assert not [q for q in up.received[n0:] if pan in q.raw_head.decode("latin-1")], "it was forwarded"
        for rec in lgw.records_for(rest.rid) if rest.rid else []:
            assert not _pans(json.dumps(rec).encode()), f"audit record echoes it: {rec}"


# ---- class 9: recordings ---------------------------------------------------------------------------
def _u(pan):
    return "".join(f"\\u{ord(d):04x}" for d in pan)


REC = ["request_header_name", "response_header_name", "response_header_pct_digits", "request_json_u_escapes",
       "request_form_pct_digits", "request_utf16_json", "request_html_refs", "query_pct_digits",
       "refused_query_grouped", "refused_body_u_escapes", "ws_close_reason_from_server",
       "ws_close_reason_from_client", "ws_message_json_escapes"]


@pytest.mark.parametrize("variant", REC)
def test_recordings_hold_no_card_number(lgw, up, mint, variant):
    pan = brand_pan(REC.index(variant) + 1)
    with Rest(lgw) as rest:
        mark = lgw.log.mark()
        before = len(recordings_bytes(lgw))
        path = f"/c/rec/{variant}"
        post = {"request_json_u_escapes": ("application/json", f'{{"card": "{_u(pan)}"}}'.encode()),
                "request_form_pct_digits": ("application/x-www-form-urlencoded",
                                            ("card=" + "".join(f"%{ord(d):02X}" for d in pan)).encode()),
                "request_utf16_json": ("application/json",
                                       codecs.BOM_UTF16_LE + json.dumps({"card": pan}).encode("utf-16-le")),
                "request_html_refs": ("text/html", ("<p>" + "".join(f"&#{ord(d)};" for d in pan) + "</p>").encode())}
        if variant == "request_header_name":
            status, head, body = raw_request(lgw, mint, "localhost", up.port, "POST", path, [(f"X-Card-{pan}", "1")])
        elif variant.startswith("response_header"):
            name, value = (f"X-{pan}", "1") if variant == "response_header_name" else \
                ("X-Card", "".join(f"%{ord(d):02X}" for d in pan))
            up.routes[path] = lambda req, s: send(s, 200, HARMLESS.encode(),
                                                  {name: value, "Content-Type": "text/plain"})
            status, head, body = raw_request(lgw, mint, "localhost", up.port, "GET", path)
        elif variant in post:
            ctype, data = post[variant]
            status, head, body = raw_request(lgw, mint, "localhost", up.port, "POST", path,
                                             [("Content-Type", ctype)], data)
        elif variant == "query_pct_digits":
            status, head, body = raw_request(lgw, mint, "localhost", up.port, "GET",
                                             path + "?card=" + "".join(f"%{ord(d):02X}" for d in pan))
        elif variant == "refused_query_grouped":
            status, head, body = raw_request(lgw, mint, "127.0.0.1", up.port, "GET",
                                             f"/p/rec?card={group(pan, '%20')}")
        elif variant == "refused_body_u_escapes":
            status, head, body = raw_request(lgw, mint, "127.0.0.1", up.port, "POST", "/p/rec/body",
                                             [("Content-Type", "application/json")],
                                             f'{{"card": "{_u(pan)}"}}'.encode())
        else:
            if variant == "ws_close_reason_from_server":
                wire, _ = ws_exchange(lgw, mint, up, "localhost", path,
                                      server_script=[CloseConnection(code=1000, reason=f"card {pan} declined")])
            elif variant == "ws_close_reason_from_client":
                wire, _ = ws_exchange(lgw, mint, up, "localhost", path,
                                      client_events=[CloseConnection(code=1000, reason=f"card {pan}")])
            else:
                wire, _ = ws_exchange(lgw, mint, up, "localhost", path,
                                      client_events=[TextMessage(data=f'{{"card": "{_u(pan)}"}}'),
                                                     CloseConnection(code=1000)])
            status, head, body = 101, wire.split(b"\r\n\r\n")[0], b""
            lgw.log.wait_for(r"WebSocket connection closed|Error in WebSocket", start=mark)
        rest.rid = rid = _rid_of(head, body) or _decision_id(lgw, mark)
        assert status, "no answer"
        assert rid and wait_recorded(lgw, rid), "the flow was not recorded"
        lgw.records_for(rid)
        recorded = recordings_bytes(lgw)[before:]
        found = _pans(recorded)
        assert not found, f"recordings hold card number(s) {sorted(found)}"
        if variant.startswith("response_header"):
            assert not _pans(head), f"the client got it in a response header: {head!r}"
        if variant.startswith("refused"):
            assert_refusal(status, body, "pan_to_non_card_destination")
