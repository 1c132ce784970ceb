"""The second wall through a real mitmdump: nothing the gateway writes or prints holds a raw PAN
or an injected secret, whatever carried it in.

Each test sends a card number where testers found one escaping: a websocket ping payload and
close reason, data an upstream sends unasked, a status line's reason phrase, a CONNECT target,
a refused path, a Host header and an SNI, a request body and websocket message in escaped
forms; and an upstream that echoes the injected credential in other spellings. mitmdump runs
with debug logging and full flow detail (headers, bodies, websocket messages), so every line
mitmproxy can print about them is printed. The last test stops the gateway and scans
everything it left: its output, the audit trail, the recordings (which `mitmdump -r` must
still read).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from urllib.parse import quote

import pytest
from mitmproxy.io import FlowReader
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request, TextMessage

import leakscan
from conftest import STATIC_KEY, UPSTREAM_SECRET, raw_connect
from harness import VENV_BIN, open_tunnel
from pan_upstream import PanUpstream, send

# One card number per carrier, so a leak names its way out.
PING_PAN = "4000056655665556"
PONG_PAN = "5555555555554444"
CLOSE_PAN = "4242424242424242"
UNEXPECTED_PAN = "371449635398431"
REASON_PAN = "6011111111111117"
CONNECT_PAN = "4012888888881881"
PATH_PAN = "5105105105105100"
HOST_PAN = "4222222222222"
SNI_PAN = "3530111333300000"
BODY_PAN = "6011000990139424"
WS_PAN = "5200828282828210"
DLP_PAN = "378282246310005"
# Characters that make the echo forms differ: JSON escapes "/", URLs encode "/", "+" and "=".
SECRET = "sk_live/Zq8+" + "Xr4tWm9Pq2Lk7Vn3" + "=="

POLICY = """
version: 1
issuers:
  pangate: {{type: pangate, public_key_file: {pubkey}}}
identities:
  app: {{issuer: pangate, roles: [app]}}
roles:
  app:
    allow:
      - {{destination: cards, methods: [GET, POST], paths: ["/ok", "/ws", "/reason", "/unexpected", "/echo-forms"]}}
      - {{destination: plain, methods: [GET, POST], paths: ["/**"]}}
destinations:
  cards:
    host: localhost
    port: {port}
    card_data: true
    addresses: [127.0.0.1/32]
    credential: {{type: bearer, env: UPSTREAM_KEY}}
  plain: {{host: 127.0.0.1, port: {port}, addresses: [127.0.0.1/32]}}
"""


def _ws_handler(req, s):
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(req.raw_head)
    for ev in ws.events():
        if isinstance(ev, Request):
            s.sendall(ws.send(AcceptConnection()))
    s.sendall(ws.send(Ping(payload=f"server ping {PONG_PAN}".encode())))
    while True:
        data = s.recv(65536)
        if not data:
            return False
        ws.receive_data(data)
        for ev in ws.events():
            if isinstance(ev, Ping):
                s.sendall(ws.send(ev.response()))
            elif isinstance(ev, TextMessage):
                s.sendall(ws.send(TextMessage(data="got it")))
            elif isinstance(ev, CloseConnection):
                s.sendall(ws.send(ev.response()))
                return False


def _reason_handler(req, s):
    body = b'{"ok": true}'
    s.sendall(f"HTTP/1.1 200 Card {REASON_PAN} accepted\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def _unexpected_handler(req, s):
    send(s, 200, b'{"ok": true}', {"Content-Type": "application/json"})
    s.sendall(f"surprise {UNEXPECTED_PAN}\r\n".encode())  # no request is waiting for this
    return False


def _echo_forms_handler(req, s):
    """An upstream debug endpoint that hands back the credential it received, in other spellings."""
    token = req.headers.get("authorization", "").removeprefix("Bearer ")
    body = json.dumps({"json": token, "base64": base64.b64encode(token.encode()).decode(),
                       "url": quote(token, safe=""), "lower": token.lower()}).replace("/", "\\/").encode()
    send(s, 200, body, {"Content-Type": "application/json", "X-Echo": quote(token, safe="")})


@pytest.fixture(scope="module")
def up(pki):
    server = PanUpstream(pki.cert, pki.key)
    server.routes.update({"/ws": _ws_handler, "/reason": _reason_handler, "/unexpected": _unexpected_handler,
                          "/echo-forms": _echo_forms_handler})
    yield server
    server.close()


# The harness sets termlog_verbosity on the command line (once only): the gateway script is
# extended to turn debug logging on once running, and to say so in a debug line.
DEBUG_ON = """

class _DebugLogging:
    def running(self):
        import logging
        from mitmproxy import ctx
        ctx.options.update(termlog_verbosity="debug")
        logging.getLogger("pangate").debug("pangate test: debug logging on")


addons.append(_DebugLogging())
"""


@pytest.fixture(scope="module")
def gw(start_gateway, token_key, up, tmp_path_factory):
    from harness import ROOT

    script = tmp_path_factory.mktemp("script") / "gateway.py"
    script.write_text((ROOT / "addons" / "gateway.py").read_text() + DEBUG_ON)
    gw = start_gateway(policy=POLICY.format(pubkey=token_key + ".pub", port=up.port), env={"UPSTREAM_KEY": SECRET},
                       options={"flow_detail": "3"}, script=script)
    gw.log.wait_for(r"pangate test: debug logging on")
    return gw


@pytest.fixture(scope="module")
def token(mint):
    return mint("app")


def _auth(token) -> str:
    return "Basic " + base64.b64encode(f"app:{token}".encode()).decode()


def _url(up, path: str, host: str = "localhost") -> str:
    return f"https://{host}:{up.port}{path}"


def _recv(tls, ws) -> list:
    while True:
        data = tls.recv(65536)
        if not data:
            return [None]
        ws.receive_data(data)
        evs = list(ws.events())
        if evs:
            return evs


def _until(tls, ws, kind):
    while True:
        for ev in _recv(tls, ws):
            if ev is None or isinstance(ev, kind):
                return ev
            if isinstance(ev, Ping):  # the server's ping: answer it like any client
                tls.sendall(ws.send(ev.response()))


def _no_raw_pan(data) -> None:
    assert not leakscan.pans_in(data), data


def test_websocket_ping_message_and_close_reason(gw, up, token):
    mark = gw.log.mark()
    tls = open_tunnel(gw, f"localhost:{up.port}", _auth(token))
    ws = WSConnection(ConnectionType.CLIENT)
    tls.sendall(ws.send(Request(host="localhost", target="/ws")))
    assert isinstance(_until(tls, ws, AcceptConnection), AcceptConnection)
    tls.sendall(ws.send(Ping(payload=f"ping {PING_PAN}".encode())))
    assert isinstance(_until(tls, ws, Pong), Pong)
    escaped = "".join(f"\\u{ord(c):04x}" for c in WS_PAN)
    tls.sendall(ws.send(TextMessage(data=f'{{"card": "{escaped}"}}')))
    assert isinstance(_until(tls, ws, TextMessage), TextMessage)
    tls.sendall(ws.send(CloseConnection(code=1000, reason=f"done with {CLOSE_PAN}")))
    _until(tls, ws, CloseConnection)
    tls.close()
    gw.log.wait_for(r"WebSocket connection closed by client", start=mark)
    out = gw.log.text()
    # mitmproxy printed each of them (masked): the test reached every carrier.
    assert "Received WebSocket ping from client" in out and "Received WebSocket ping from server" in out
    assert f"{CLOSE_PAN[:6]}******{CLOSE_PAN[-4:]}" in out


def test_unexpected_data_from_server(gw, up, token):
    mark = gw.log.mark()
    r = gw.session("app", token).get(_url(up, "/unexpected"))
    assert r.status_code == 200
    m = gw.log.wait_for(r"Unexpected data from server.*", start=mark)
    assert UNEXPECTED_PAN[:6] in m.group() and UNEXPECTED_PAN not in m.group()


def test_status_line_reason_phrase(gw, up, token):
    r = gw.session("app", token).get(_url(up, "/reason"))
    assert r.status_code == 200
    gw.decision(r.headers["X-Pangate-Request-Id"])
    gw.log.wait_for(rf"200 Card {REASON_PAN[:6]}\*+{REASON_PAN[-4:]}")


def test_connect_to_a_host_named_with_a_card_number(gw, token):
    mark = gw.log.mark()
    status, reason, headers, body = raw_connect(gw, f"{CONNECT_PAN}.example:443", _auth(token))
    assert status == 403
    _no_raw_pan(body)
    _no_raw_pan(reason)
    rec = gw.records_for(headers["X-Pangate-Request-Id"])[0]
    _no_raw_pan(json.dumps(rec, ensure_ascii=False))
    assert rec["destination"]["host"] == f"{CONNECT_PAN[:6]}******{CONNECT_PAN[-4:]}.example"
    gw.log.wait_for(rf"pangate decision id={headers['X-Pangate-Request-Id']}", start=mark)


def test_plain_proxy_request_to_a_host_named_with_a_card_number(gw, token):
    r = gw.session("app", token).get(f"http://{CONNECT_PAN}.example/pay")
    assert r.status_code in (403, 407)
    _no_raw_pan(r.content)
    _no_raw_pan(json.dumps(gw.records_for(r.headers["X-Pangate-Request-Id"]), ensure_ascii=False))


def test_refused_path_with_a_card_number(gw, up, token):
    r = gw.session("app", token).get(_url(up, f"/v1/cards/{PATH_PAN}/refund"))
    assert r.status_code == 403
    _no_raw_pan(r.content)
    recs = gw.records_for(r.headers["X-Pangate-Request-Id"])
    assert recs and recs[0]["outcome"] == "denied"
    _no_raw_pan(json.dumps(recs, ensure_ascii=False))


def test_card_number_to_a_non_card_host_is_refused_without_quoting_it(gw, up, token):
    r = gw.session("app", token).get(_url(up, f"/lookup?q=card+{DLP_PAN}", host="127.0.0.1"))
    assert r.status_code == 403, r.text
    _no_raw_pan(r.content)
    _no_raw_pan(json.dumps(gw.records_for(r.headers["X-Pangate-Request-Id"]), ensure_ascii=False))


def test_host_header_and_sni_with_card_numbers(gw, up, token):
    tls = open_tunnel(gw, f"localhost:{up.port}", _auth(token), server_hostname=f"{SNI_PAN}.localhost")
    tls.sendall(f"GET /ok HTTP/1.1\r\nHost: {HOST_PAN}.localhost:{up.port}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLError, OSError):
            break
        if not chunk:
            break
        data += chunk
    tls.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), data[:200]
    _no_raw_pan(body)
    rid = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
               if line.lower().startswith(b"x-pangate-request-id:"))
    _no_raw_pan(json.dumps(gw.records_for(rid), ensure_ascii=False))


def test_card_number_in_escaped_request_bodies(gw, up, token):
    s = gw.session("app", token)
    forms = {"json": "".join(f"\\u{ord(c):04x}" for c in BODY_PAN),
             "html": "".join(f"&#{ord(c)};" for c in BODY_PAN),
             "url": "".join(f"%{ord(c):02X}" for c in BODY_PAN)}
    r = s.post(_url(up, "/ok"), data=f'{{"card": "{forms["json"]}", "h": "{forms["html"]}", "u": "{forms["url"]}"}}',
               headers={"Content-Type": "application/json", "X-Card-Ref": forms["url"]})
    assert r.status_code == 200  # a card host: the number reaches it
    assert BODY_PAN in up.wait_request("/ok").body.decode("unicode_escape")
    gw.decision(r.headers["X-Pangate-Request-Id"])


def test_injected_credential_echoed_in_other_spellings(gw, up, token):
    r = gw.session("app", token).get(_url(up, "/echo-forms"))
    assert r.status_code == 200
    assert up.wait_request("/echo-forms").headers["authorization"] == f"Bearer {SECRET}"  # it was injected
    gw.records_for(r.headers["X-Pangate-Request-Id"])


def test_nothing_at_rest_and_recordings_still_read(gw, up, token):
    """Last: stops the gateway (recordings are sealed on close) and scans what it left."""
    assert gw.stop() == 0
    found = leakscan.leaks(gw.workdir, gw.log.text(), [SECRET, UPSTREAM_SECRET, STATIC_KEY])
    assert not found, "\n".join(found)
    recordings = sorted((gw.workdir / "var" / "recordings").glob("*.mitm"))
    assert recordings
    flows = []
    for path in recordings:
        with open(path, "rb") as fh:
            flows += list(FlowReader(fh).stream())
        res = subprocess.run([str(VENV_BIN / "mitmdump"), "-n", "-r", str(path), "--set", "flow_detail=1"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
    paths = [f.request.path for f in flows if hasattr(f, "request")]
    assert "/ws" in paths and "/echo-forms" in paths
    assert any(f.websocket is not None and f.websocket.close_reason.startswith("done with ") for f in flows)
    for text in ("\n".join(gw.audit_lines()), gw.log.text()):
        assert not leakscan.pans_in(text)
        assert not leakscan.secrets_in(text, [SECRET])

