"""Request side: no raw card number leaves for a host that is not a card-data destination.

Every request here goes to `plain` (127.0.0.1, not card data) and carries a
card number in a form its server would read as one. Expected: 403
`pan_to_non_card_destination` (JSON with error, reason, code, request_id and no
card number), the upstream receives nothing, and nothing at rest holds the
number. Requests are written byte for byte through a tunnel, so the gateway
sees exactly what a hostile or sloppy client sends.
"""

from __future__ import annotations

import codecs
import json
from urllib.parse import quote, quote_plus

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request

import leakscan
from leakkit import ALL_PANS, HARMLESS, Rest, assert_refusal, brand_pan, group, head_rid, raw_request, tunnel
from pan_upstream import ws_script_handler

pytest_plugins = ["leakkit"]  # fixtures up, up2, lgw: one gateway for this module

CODE = "pan_to_non_card_destination"
SEPS = {"dot": ".", "underscore": "_", "slash": "/", "tab": "\t", "newline": "\n", "double_space": "  ",
        "spaced_dash": " - ", "nbsp": "\u00a0", "zero_width_space": "\u200b", "soft_hyphen": "\u00ad"}
DIGITS = {"fullwidth": 0xFF10, "arabic_indic": 0x0660, "devanagari": 0x0966}


def _digits(pan: str, base: int) -> str:
    return "".join(chr(base + int(d)) for d in pan)


def _semantic(pan: str) -> dict[str, str]:
    """The value a server reads, before its container encodes it."""
    out = {"space": group(pan, " ")}  # the baseline every gateway catches
    out.update({k: group(pan, v) for k, v in SEPS.items()})
    out.update({k: _digits(pan, b) for k, b in DIGITS.items()})
    return out


def _contained(pan: str) -> dict[str, tuple[list, bytes]]:
    """variant -> (headers, body) for json, text and form bodies."""
    out = {}
    for name, value in _semantic(pan).items():
        out[f"json/{name}"] = ([("Content-Type", "application/json")],
                               json.dumps({"card": value, "note": HARMLESS}, ensure_ascii=False).encode())
        out[f"text/{name}"] = ([("Content-Type", "text/plain; charset=utf-8")], f"card {value} ok".encode())
        out[f"form/{name}"] = ([("Content-Type", "application/x-www-form-urlencoded")],
                               f"a=1&card={quote_plus(value)}&b=2".encode())
    json_only = {"u_all": "".join(f"\\u{ord(d):04x}" for d in pan),
                 "u_fullwidth": "".join(f"\\u{0xFF10 + int(d):04x}" for d in pan),
                 "tab_escape": group(pan, "\\t"), "newline_escape_glued": f"\\n{pan}\\n",
                 "slash_escape": group(pan, "\\/")}
    for name, raw in json_only.items():
        out[f"json/{name}"] = ([("Content-Type", "application/json")], f'{{"card": "{raw}"}}'.encode())
    text_only = {"html_decimal_refs": "".join(f"&#{ord(d)};" for d in pan),
                 "html_hex_refs": "".join(f"&#x{ord(d):x};" for d in pan),
                 "html_nbsp_entity": group(pan, "&nbsp;"), "pct20": group(pan, "%20"),
                 "plus": group(pan, "+"), "pct_digits": "".join(f"%{ord(d):02X}" for d in pan)}
    for name, raw in text_only.items():
        ctype = "text/html; charset=utf-8" if name.startswith("html") else "text/plain; charset=utf-8"
        out[f"text/{name}"] = ([("Content-Type", ctype)], f"<p>card {raw}</p>".encode())
    form_only = {"pct_digits": "".join(f"%{ord(d):02X}" for d in pan),
                 "pct_fullwidth_utf8": quote(_digits(pan, 0xFF10))}
    for name, raw in form_only.items():
        out[f"form/{name}"] = ([("Content-Type", "application/x-www-form-urlencoded")], f"card={raw}".encode())
    return out


def _special(pan: str) -> dict[str, tuple[list, bytes]]:
    jdoc = json.dumps({"card": pan, "note": HARMLESS})
    return {
        "charset_utf8_is_utf16le": ([("Content-Type", "application/json; charset=utf-8")], jdoc.encode("utf-16-le")),
        "charset_utf8_is_utf16be_bom": ([("Content-Type", "application/json; charset=utf-8")],
                                        codecs.BOM_UTF16_BE + jdoc.encode("utf-16-be")),
        "charset_latin1_is_utf32le": ([("Content-Type", "text/plain; charset=iso-8859-1")],
                                      f"card {pan}".encode("utf-32-le")),
        "json_utf16_no_charset": ([("Content-Type", "application/json")], jdoc.encode("utf-16-le")),
        "two_content_types_form": ([("Content-Type", "image/png"),
                                    ("Content-Type", "application/x-www-form-urlencoded")],
                                   f"card={group(pan, '%20')}".encode()),
        "two_content_types_json": ([("Content-Type", "application/octet-stream"), ("Content-Type", "application/json")],
                                   ('{"card": "' + "".join(f"\\u{ord(d):04x}" for d in pan) + '"}').encode()),
        "nul_prefixed_json": ([("Content-Type", "application/json")], b"\x00" + jdoc.encode()),
        "nul_prefixed_text": ([("Content-Type", "text/plain")], b"\x00\x00\x00\x00" + f"card {pan}".encode()),
        "header_name": ([(f"X-Card-{pan}", "1")], b""),
        "header_name_grouped": ([(f"X-{group(pan, '-')}", "yes")], b""),
    }


VARIANTS = list(_special("4242424242424242")) + list(_contained("4242424242424242"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_pan_forms_to_non_card_destination_are_refused(lgw, up, mint, variant):
    pan = brand_pan(VARIANTS.index(variant))
    headers, body = {**_special(pan), **_contained(pan)}[variant]
    path = f"/p/dlp/{variant}"
    with Rest(lgw) as rest:
        status, head, rbody = raw_request(lgw, mint, "127.0.0.1", up.port, "POST", path, headers, body)
        rest.rid = head_rid(head)
        forwarded = [q for q in up.received if q.path == path]
        assert not forwarded, \
            f"the non-card upstream received it: {forwarded[0].raw_head[:300]!r} {forwarded[0].body[:200]!r}"
        doc = assert_refusal(status, rbody, CODE)
        assert not leakscan.pans_in(head)
        assert doc["request_id"] == rest.rid


# ---- websocket control frames from the client -------------------------------------------------------
WS = ["ping", "pong", "close_reason"]


@pytest.mark.parametrize("frame", WS)
def test_websocket_control_frames_to_non_card_destination(lgw, up, mint, frame):
    """A ping, pong or close reason is a payload like any message: it must not carry a card number
    to a non-card host. The gateway may drop the frame or cut the connection; either way the
    upstream gets no card number."""
    pan = brand_pan(WS.index(frame) + 3)
    path = f"/p/ws/{frame}"
    up.routes[path] = ws_script_handler(up, [])
    with Rest(lgw) as rest:
        mark = lgw.log.mark()
        n = len(getattr(up, "ws_control", []))
        tls = tunnel(lgw, mint, "127.0.0.1", up.port)
        ws = WSConnection(ConnectionType.CLIENT)
        tls.sendall(ws.send(Request(host=f"127.0.0.1:{up.port}", target=path)))
        tls.settimeout(5)
        events, wire = [], b""
        while not any(isinstance(e, AcceptConnection) for e in events):
            data = tls.recv(65536)
            assert data, "the handshake was refused"
            wire += data
            ws.receive_data(data)
            events += list(ws.events())
        rest.rid = head_rid(wire.split(b"\r\n\r\n")[0])
        payload = f"card {pan}".encode()
        ev = {"ping": Ping(payload=payload), "pong": Pong(payload=payload),
              "close_reason": CloseConnection(code=1000, reason=payload.decode())}[frame]
        try:
            tls.sendall(ws.send(ev))
            if frame != "close_reason":
                tls.sendall(ws.send(CloseConnection(code=1000, reason="bye")))
            while tls.recv(65536):
                pass
        except (OSError, TimeoutError):
            pass
        tls.close()
        lgw.log.wait_for(r"WebSocket connection closed|Error in WebSocket", start=mark)
        got = up.ws_control[n:]
        leaked = [(kind, p) for kind, p in got if leakscan.pans_in(p) or leakscan.pans_in(p, ALL_PANS)]
        assert not leaked, f"the non-card upstream received {leaked}"
