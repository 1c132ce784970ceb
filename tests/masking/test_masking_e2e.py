"""Masking end to end through real mitmdump processes: every carrier, encoding and framing.

A client never receives a raw PAN, no record or log line holds one, and no
harmless number changes: each body must equal exactly what the engine makes
of it (pangate.masking.mask_body), which is also what `pangate mask` prints.
"""

from __future__ import annotations

import base64
import gzip
import json
import ssl
import threading
import zlib
from urllib.parse import unquote

import brotli
import pytest
import requests
import urllib3
from backports import zstd
from mitmproxy.net import encoding
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, CloseConnection, Request, TextMessage)

from pangate.masking.addon import mask_body
from pangate.pan.engine import Masker, find_pans

from conftest import UPSTREAM_SECRET
from harness import open_tunnel
from pan_corpus import FALSE_POSITIVES, carrier_docs, corpus_pans, raw_pans_in
from pan_upstream import PanUpstream, send, send_chunked

M = Masker()
DOCS = carrier_docs()
PANS = corpus_pans()
ENCODERS = {
    "identity": lambda b: b,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
}
POLICY = """
version: 1
issuers:
  pangate: {{type: pangate, public_key_file: {pubkey}}}
identities:
  app: {{issuer: pangate, roles: [app]}}
  auditor: {{issuer: pangate, roles: [app]}}
roles:
  app:
    allow:
      - {{destination: cards, methods: [GET, POST, PUT], paths: ["/**"]}}
      - {{destination: plain, methods: [GET, POST, PUT], paths: ["/**"]}}
destinations:
  cards:
    host: localhost
    port: {port}
    card_data: true
    addresses: [127.0.0.1/32]
    credential: {{type: bearer, env: UPSTREAM_KEY}}
  plain: {{host: 127.0.0.1, port: {port}, addresses: [127.0.0.1/32]}}
reveal:
  - identity: auditor
    destination: cards
    justification: chargeback disputes need the full card number
"""


@pytest.fixture(scope="module")
def up(pki):
    server = PanUpstream(pki.cert, pki.key)
    yield server
    server.close()


def _policy(token_key, up) -> str:
    return POLICY.format(pubkey=token_key + ".pub", port=up.port)


@pytest.fixture(scope="module")
def gw(start_gateway, token_key, up):
    """Buffers bodies (mitmproxy's default); saves every flow, for the at-rest check."""
    return start_gateway(policy=_policy(token_key, up), options={"save_stream_file": "flows.mitm"})


@pytest.fixture(scope="module")
def gws(start_gateway, token_key, up):
    """Streams bodies over 64 KB (and any body of unknown length); lazy upstream connections let
    mitmproxy speak HTTP/2 to a client that offers it while the upstream speaks HTTP/1.1."""
    return start_gateway(policy=_policy(token_key, up),
                         options={"stream_large_bodies": "64k", "connection_strategy": "lazy",
                                  "save_stream_file": "flows.mitm"})


def cards(up, path: str) -> str:
    return f"https://localhost:{up.port}{path}"


def plain(up, path: str) -> str:
    return f"https://127.0.0.1:{up.port}{path}"


def assert_clean_at_rest(gateway, request_id: str | None = None):
    """No raw PAN in the audit trail or anything mitmdump logged."""
    if request_id:
        assert gateway.records_for(request_id), "no audit record"
    for text in ("\n".join(gateway.audit_lines()), gateway.log.text()):
        assert raw_pans_in(text) == []
        assert not find_pans(text.encode())


def raw_body(r: requests.Response) -> bytes:
    """The body as sent on the wire, decoded by mitmproxy's own decoder (gzip/deflate/br/zstd)."""
    data = r.raw.read(decode_content=False)
    return encoding.decode(data, r.headers.get("content-encoding", "identity"))


# ---- buffered bodies: every content type x every encoding ----------------------------------
@pytest.mark.parametrize("enc", list(ENCODERS))
@pytest.mark.parametrize("doc", list(DOCS))
def test_body_every_type_and_encoding(gw, up, mint, doc, enc):
    ctype, body = DOCS[doc]
    path = f"/body/{doc}/{enc}"
    up.routes[path] = lambda req, s: send(s, 200, ENCODERS[enc](body),
                                          {"Content-Type": ctype, "Content-Encoding": enc})
    r = gw.session("app", mint("app")).get(cards(up, path), stream=True)
    assert r.status_code == 200
    got = raw_body(r)
    want, n = mask_body(M, body, ctype)
    assert got == want and n >= len(PANS)
    assert raw_pans_in(got) == []
    for fp in FALSE_POSITIVES.values():  # harmless numbers untouched
        if fp in body.decode():
            assert fp.encode() in got
    rid = r.headers["X-Pangate-Request-Id"]
    rec = gw.records_for(rid)[0]
    assert rec["pans_masked"] >= len(PANS)
    assert_clean_at_rest(gw, rid)


# ---- headers, URL and query ------------------------------------------------------------------
def test_response_headers_masked(gw, up, mint):
    up.routes["/hdr"] = lambda req, s: send(s, 200, b"ok", {
        "X-Card": "4111 1111 1111 1111", "Location": "/x?pan=5500%200000%200000%200004",
        "X-Ts": "1732800000000"})
    r = gw.session("app", mint("app")).get(cards(up, "/hdr"))
    assert r.headers["X-Card"] == "4111 11** **** 1111"
    assert r.headers["Location"] == "/x?pan=5500%2000**%20****%200004"
    assert r.headers["X-Ts"] == "1732800000000"
    assert_clean_at_rest(gw, r.headers["X-Pangate-Request-Id"])


@pytest.mark.parametrize("query", ["pan=4111111111111111", "pan=4111%201111%201111%201111",
                                   "pan=4111+1111+1111+1111", "pan=%34%31%31%31111111111111",
                                   "a=1&card=3782-822463-10005"])
def test_url_to_card_destination_passes_and_is_masked_at_rest(gw, up, mint, query):
    path = f"/lookup/{len(up.received)}"
    r = gw.session("app", mint("app")).get(cards(up, f"{path}?{query}"))
    assert r.status_code == 200
    # the card processor got the number as sent (requests may normalise %34 to 4)
    assert raw_pans_in(unquote(up.wait_request(path).path), ["4111111111111111", "378282246310005"])
    rid = r.headers["X-Pangate-Request-Id"]
    rec = gw.records_for(rid)[0]
    assert "*" in rec["destination"]["query"]
    assert_clean_at_rest(gw, rid)


# ---- outbound DLP ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["json", "form_plus", "query_pct", "header", "gzip_body", "multipart"])
def test_pan_to_non_card_destination_is_refused(gw, up, mint, how):
    path = f"/dlp/{how}"
    s = gw.session("app", mint("app"))
    pan = "4111 1111 1111 1111"
    if how == "json":
        r = s.post(plain(up, path), json={"card": pan})
    elif how == "form_plus":
        r = s.post(plain(up, path), data="card=4111+1111+1111+1111",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    elif how == "query_pct":
        r = s.get(plain(up, path) + "?card=4111%201111%201111%201111")
    elif how == "header":
        r = s.get(plain(up, path), headers={"X-Card": pan})
    elif how == "gzip_body":
        r = s.post(plain(up, path), data=gzip.compress(b'{"pan": "4111111111111111"}'),
                   headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    else:
        r = s.post(plain(up, path), files={"card": ("c.txt", pan.encode())})
    assert r.status_code == 403
    doc = r.json()
    assert doc["code"] == "pan_to_non_card_destination" and doc["request_id"]
    assert "4111" not in r.text and "card number" in doc["reason"]
    assert not any(q.path.startswith(path) for q in up.received)
    assert_clean_at_rest(gw, doc["request_id"])


def test_harmless_numbers_to_non_card_destination_pass(gw, up, mint):
    body = json.dumps({"ts": 1732800000000, "imei": "356938035643809", "uuid": FALSE_POSITIVES["uuid"]})
    r = gw.session("app", mint("app")).post(plain(up, "/dlp/harmless"), data=body)
    assert r.status_code == 200
    assert up.wait_request("/dlp/harmless").body == body.encode()


def test_pan_to_card_destination_passes_and_is_masked_at_rest(gw, up, mint):
    r = gw.session("app", mint("app")).post(cards(up, "/charge"), json={"card": "4111111111111111"})
    assert r.status_code == 200
    assert b"4111111111111111" in up.wait_request("/charge").body
    assert_clean_at_rest(gw, r.headers["X-Pangate-Request-Id"])


def test_streamed_request_to_non_card_destination_is_cut(gws, up, mint):
    """Over stream_large_bodies: scanned as it passes; the PAN never leaves, the flow is reset."""
    body = b"x" * 300_000 + b" 4111 1111 1111 1111 " + b"y" * 300_000
    with pytest.raises(requests.exceptions.ConnectionError):
        gws.session("app", mint("app")).post(plain(up, "/dlp/stream"), data=body)
    req = up.wait_request("/dlp/stream")
    assert not req.complete and b"4111" not in req.body and len(req.body) < len(body)
    assert_clean_at_rest(gws)


def test_streamed_request_without_pan_passes(gws, up, mint):
    body = b"z" * 500_000
    r = gws.session("app", mint("app")).post(plain(up, "/dlp/stream-ok"), data=body)
    assert r.status_code == 200 and up.wait_request("/dlp/stream-ok").body == body


# ---- reveal --------------------------------------------------------------------------------------
def test_reveal_for_one_identity_and_destination_only(gw, up, mint):
    ctype, body = DOCS["json"]
    up.routes["/reveal"] = lambda req, s: send(s, 200, body, {"Content-Type": ctype, "X-Card": "4111111111111111"})
    r = gw.session("auditor", mint("auditor")).get(cards(up, "/reveal"))
    assert r.content == body  # full numbers for the auditor
    assert r.headers["X-Card"] == "411111******1111"  # headers stay masked
    rid = r.headers["X-Pangate-Request-Id"]
    rec = gw.records_for(rid)[0]
    assert rec["reveal"]["justification"] == "chargeback disputes need the full card number"
    assert rec["reveal"]["pans_revealed"] >= len(PANS)
    assert_clean_at_rest(gw, rid)
    other = gw.session("app", mint("app")).get(cards(up, "/reveal"))
    assert other.content == mask_body(M, body, ctype)[0]
    assert "reveal" not in gw.records_for(other.headers["X-Pangate-Request-Id"])[0]


# ---- chunked and streamed responses ----------------------------------------------------------------
def _split_pans_chunks() -> tuple[bytes, list[bytes]]:
    """A body cut so that PANs straddle chunk boundaries at every offset."""
    body = b"".join(b"row %d card 4111 1111 1111 1111 and 378282246310005 ts 1732800000000\n" % k
                    for k in range(120))
    cuts, k, step = [], 0, 1
    while k < len(body):
        cuts.append(body[k:k + step])
        k += step
        step = step % 37 + 1
    return body, cuts


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
def test_chunked_response_split_pans(gw, gws, up, mint, mode):
    body, chunks = _split_pans_chunks()
    up.routes["/chunked"] = lambda req, s: send_chunked(s, chunks, {"Content-Type": "text/plain"})
    g = gw if mode == "buffered" else gws
    r = g.session("app", mint("app")).get(cards(up, "/chunked"))
    assert r.content == M.mask(body)[0] and b"4111 1111 1111 1111" not in r.content
    rid = r.headers["X-Pangate-Request-Id"]
    assert g.records_for(rid)[0]["pans_masked"] == 240
    assert_clean_at_rest(g, rid)


@pytest.mark.parametrize("mode", ["buffered", "streamed"])
def test_card_numbers_and_sad_are_counted_apart(gw, gws, up, mint, mode):
    # Two card numbers (one of them JSON-escaped, so only a normalized view finds it), a CVC and
    # a PIN, in the body and a header: pans_masked counts the card numbers, sad_masked the rest.
    body = (b'{"pan": "4111111111111111", "alt": "\\u0035500000000000004", "cvv": "123", '
            b'"pin": "9876", "note": "order 81723"}')
    head = {"Content-Type": "application/json", "X-Card": "5105105105105100"}
    if mode == "buffered":
        up.routes["/sad"] = lambda req, s: send(s, 200, body, head)
    else:  # no length: the streaming gateway masks it chunk by chunk
        up.routes["/sad"] = lambda req, s: send_chunked(s, [body[:30], body[30:70], body[70:]], head)
    g = gw if mode == "buffered" else gws
    r = g.session("app", mint("app")).get(cards(up, "/sad"))
    assert r.status_code == 200 and b"123" not in r.content and b"9876" not in r.content
    rec = g.records_for(r.headers["X-Pangate-Request-Id"])[0]
    assert (rec["pans_masked"], rec["sad_masked"]) == (3, 2)


@pytest.mark.parametrize("enc", list(ENCODERS))
def test_streamed_encoded_response(gws, up, mint, enc):
    ctype, doc = DOCS["text"]
    body = doc * 60  # > 64 KB: streamed
    data = ENCODERS[enc](body)
    path = f"/big/{enc}"
    up.routes[path] = lambda req, s: send_chunked(s, [data[i:i + 4001] for i in range(0, len(data), 4001)],
                                                  {"Content-Type": ctype, "Content-Encoding": enc})
    r = gws.session("app", mint("app")).get(cards(up, path), stream=True)
    assert r.status_code == 200 and "content-encoding" not in r.headers  # decoded while streaming
    got = r.raw.read(decode_content=False)
    assert got == M.mask(body)[0]
    assert_clean_at_rest(gws, r.headers["X-Pangate-Request-Id"])


def test_large_content_length_body_keeps_its_length(gws, up, mint):
    body = DOCS["csv"][1] * 100
    up.routes["/cl"] = lambda req, s: send(s, 200, body, {"Content-Type": "text/csv"})
    r = gws.session("app", mint("app")).get(cards(up, "/cl"))
    assert r.headers["Content-Length"] == str(len(body)) and r.content == M.mask(body)[0]


def test_stream_that_cannot_be_decoded_is_cut(gws, up, mint):
    junk = b"4111 1111 1111 1111 not gzip at all " * 4000
    up.routes["/badgz"] = lambda req, s: send_chunked(s, [junk[:70000], junk[70000:]],
                                                      {"Content-Encoding": "gzip"})
    got = b""
    with pytest.raises((requests.exceptions.RequestException, urllib3.exceptions.HTTPError)):
        r = gws.session("app", mint("app")).get(cards(up, "/badgz"), stream=True)
        for part in r.raw.stream(4096, decode_content=False):
            got += part
    assert b"4111" not in got
    assert_clean_at_rest(gws)


def test_unknown_encoding_is_refused(gws, up, mint):
    up.routes["/compress"] = lambda req, s: send_chunked(s, [b"4111111111111111 " * 5000],
                                                         {"Content-Encoding": "compress"})
    r = gws.session("auditor", mint("auditor")).get(cards(up, "/compress"))
    assert r.status_code == 502 and r.json()["code"] == "unsupported_encoding"
    assert "4111" not in r.text
    assert "reveal" not in gws.records_for(r.headers["X-Pangate-Request-Id"])[0]  # nothing was shown


@pytest.mark.parametrize("reveal", [False, True])
def test_streamed_body_echoing_the_credential_is_redacted(gws, up, mint, reveal):
    def echo(req, s):
        text = ("auth was " + req.headers["authorization"] + " card 4111111111111111\n").encode() * 3
        send_chunked(s, [text[k:k + 7] for k in range(0, len(text), 7)], {"Content-Type": "text/plain"})

    up.routes["/echo-secret"] = echo
    who = "auditor" if reveal else "app"
    r = gws.session(who, mint(who)).get(cards(up, "/echo-secret"))
    assert r.status_code == 200
    assert UPSTREAM_SECRET not in r.text and r.text.count("*" * len(UPSTREAM_SECRET)) == 3
    assert ("4111111111111111" in r.text) == reveal
    rec = gws.records_for(r.headers["X-Pangate-Request-Id"])[0]
    assert rec["credential"]["echo_redacted"] is True
    assert UPSTREAM_SECRET not in "\n".join(gws.audit_lines()) + gws.log.text()


def test_server_sent_events_are_masked_and_prompt(gws, up, mint):
    first_seen = threading.Event()

    def sse(req, s):
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        ev1 = b'data: {"card": "4111 1111 1111 1111"}\n\n'
        s.sendall(b"%x\r\n%s\r\n" % (len(ev1), ev1))
        first_seen.wait(15)  # the client must get event 1 before event 2 exists
        for part in (b"data: 3782 822463", b" 10005 at 1732800000000\n\n"):
            s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        s.sendall(b"0\r\n\r\n")

    up.routes["/sse"] = sse
    r = gws.session("app", mint("app")).get(cards(up, "/sse"), stream=True, timeout=20)
    lines = r.iter_lines()
    assert next(lines) == b'data: {"card": "4111 11** **** 1111"}'
    first_seen.set()
    rest = b"\n".join(lines)
    assert b"3782 82**** *0005 at 1732800000000" in rest
    assert_clean_at_rest(gws, r.headers["X-Pangate-Request-Id"])


# ---- HTTP/2 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["small", "streamed"])
def test_http2_client(gws, up, mint, size):
    ctype, body = DOCS["json"]
    if size == "streamed":
        body = body * 40
    up.routes["/h2"] = lambda req, s: send(s, 200, gzip.compress(body),
                                           {"Content-Type": ctype, "Content-Encoding": "gzip"})
    res = gws.curl(cards(up, "/h2?pan=4111%201111%201111%201111"), "--http2", "--compressed",
                  "-w", "\n%{http_version} %{http_code}", identity="app", token=mint("app"))
    out, status = res.stdout.rsplit("\n", 1)
    assert status == "2 200", res.stderr
    assert out.encode() == mask_body(M, body, ctype)[0]
    assert_clean_at_rest(gws)


# ---- websockets ------------------------------------------------------------------------------------
def _ws_handler(up):
    def handler(req, s):
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(req.raw_head)
        for ev in ws.events():
            if isinstance(ev, Request):
                s.sendall(ws.send(AcceptConnection()))
        s.sendall(ws.send(TextMessage(data="server says 4111 1111 1111 1111 at 1732800000000")))
        while True:
            data = s.recv(65536)
            if not data:
                return False
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, TextMessage):
                    up.ws_received.append(ev.data)
                    s.sendall(ws.send(TextMessage(data="echo " + ev.data)))
                elif isinstance(ev, CloseConnection):
                    s.sendall(ws.send(ev.response()))
                    return False
    return handler


def _ws_client(gw, token, host, port, path):
    auth = base64.b64encode(f"app:{token}".encode()).decode()
    tls = open_tunnel(gw, f"{host}:{port}", f"Basic {auth}")
    ws = WSConnection(ConnectionType.CLIENT)
    tls.sendall(ws.send(Request(host=host, target=path)))
    return tls, ws


def _ws_recv(tls, ws) -> list:
    """Events of one read (waits for at least one)."""
    while True:
        data = tls.recv(65536)
        if not data:
            return [None]
        ws.receive_data(data)
        evs = list(ws.events())
        if evs:
            return evs


def _ws_next_text(tls, ws) -> str | None:
    while True:
        for ev in _ws_recv(tls, ws):
            if ev is None:
                return None
            if isinstance(ev, TextMessage):
                return ev.data


def test_websocket_both_ways(gw, up, mint):
    up.routes["/ws"] = _ws_handler(up)
    tls, ws = _ws_client(gw, mint("app"), "localhost", up.port, "/ws")
    assert any(isinstance(e, AcceptConnection) for e in _ws_recv(tls, ws))
    assert _ws_next_text(tls, ws) == "server says 4111 11** **** 1111 at 1732800000000"
    tls.sendall(ws.send(TextMessage(data="pay with 5500 0000 0000 0004")))
    # card destination: the PAN reaches it; the echo back is masked
    assert _ws_next_text(tls, ws) == "echo pay with 5500 00** **** 0004"
    assert up.ws_received[-1] == "pay with 5500 0000 0000 0004"
    tls.sendall(ws.send(CloseConnection(code=1000)))
    _ws_recv(tls, ws)
    tls.close()
    gw.log.wait_for(r"WebSocket connection closed")
    assert_clean_at_rest(gw)


def test_websocket_pan_to_non_card_destination_is_cut(gw, up, mint):
    up.routes["/ws"] = _ws_handler(up)
    tls, ws = _ws_client(gw, mint("app"), "127.0.0.1", up.port, "/ws")
    assert any(isinstance(e, AcceptConnection) for e in _ws_recv(tls, ws))
    _ws_next_text(tls, ws)
    n = len(up.ws_received)
    tls.sendall(ws.send(TextMessage(data="leak 4111111111111111")))
    try:
        assert _ws_next_text(tls, ws) is None  # the connection is cut, nothing echoed
    except (ConnectionError, ssl.SSLError):
        pass
    assert up.ws_received[n:] == []
    assert_clean_at_rest(gw)


# ---- a large streamed body: bounded memory, every PAN masked --------------------------------------
def test_streamed_64mb_bounded_memory(gws, up, mint):
    """scripts/stream_1gb.py runs the same check on 1 GB (for the benchmark suite)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from stream_1gb import ok, stream_check

    res = stream_check(gws, up, mint("app"), 64)
    assert res["raw"] == 0 and res["masked"] == res["pans"] > 15_000 and res["bytes_ok"], res
    assert ok(res, max_rss_mb=250), res


# ---- at rest: mitmproxy's own flow files (runs last: it reads what the tests above saved) ----------
def test_saved_flows_hold_no_raw_pan(gw, gws):
    from mitmproxy.io import FlowReader
    from mitmproxy.exceptions import FlowReadException

    seen = 0
    for g in (gw, gws):
        with open(g.workdir / "flows.mitm", "rb") as f:
            try:
                for flow in FlowReader(f).stream():
                    seen += 1
                    parts = [flow.request.url, str(flow.request.headers), flow.request.raw_content or b"",
                             str(flow.metadata)]
                    if flow.response is not None:
                        parts += [str(flow.response.headers), flow.response.raw_content or b""]
                        if flow.response.raw_content and "content-encoding" in flow.response.headers:
                            parts.append(flow.response.get_content(strict=False) or b"")
                    if flow.websocket is not None:
                        parts += [m.content for m in flow.websocket.messages]
                    for p in parts:
                        text = p if isinstance(p, str) else p.decode("latin-1")
                        assert raw_pans_in(unquote(text.replace("+", " "))) == [], flow.request.path
            except FlowReadException:
                pass  # the file's last flow may still be being written
    assert seen > 50


def test_open_websocket_stops_when_the_gateway_script_breaks(start_gateway, token_key, up, mint, tmp_path):
    """An open websocket must not keep relaying, unmasked, once the controls are unloaded."""
    import shutil

    from harness import ROOT

    script = tmp_path / "gateway.py"
    shutil.copy(ROOT / "addons" / "gateway.py", script)
    gw = start_gateway(policy=_policy(token_key, up), script=script)
    up.routes["/ws"] = _ws_handler(up)
    tls, ws = _ws_client(gw, mint("app"), "localhost", up.port, "/ws")
    assert any(isinstance(e, AcceptConnection) for e in _ws_recv(tls, ws))
    assert _ws_next_text(tls, ws) == "server says 4111 11** **** 1111 at 1732800000000"
    mark = gw.log.mark()
    script.write_text(script.read_text() + "\nthis is not python\n")
    gw.log.wait_for(r"error in script", start=mark)
    n = len(up.ws_received)
    tls.sendall(ws.send(TextMessage(data="pay with 5500 0000 0000 0004")))
    try:
        assert _ws_next_text(tls, ws) is None  # cut: nothing relayed back, masked or not
    except (ConnectionError, ssl.SSLError):
        pass
    assert up.ws_received[n:] == []
