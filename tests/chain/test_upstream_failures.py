"""Upstreams that stall or break are answered by pangate, in time, in JSON, and recorded.

Real mitmdump, real clients, and upstreams misbehaving on purpose: one that
accepts and never answers, one that never completes TLS, one that resets its
connection halfway through a body.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
import requests

from pangate.chain import upstream as upstream_mod

POLICY = """
version: 1
issuers:
  pangate:
    type: pangate
    public_key_file: {pubkey}
identities:
  reader:
    issuer: pangate
    roles: [r]
roles:
  r:
    allow:
      - {{destination: stall, methods: [GET], paths: ["/**"]}}
      - {{destination: notls, methods: [GET], paths: ["/**"]}}
      - {{destination: reset, methods: [GET], paths: ["/**"]}}
destinations:
  stall: {{host: localhost, port: {stall}, addresses: [127.0.0.1/32]}}
  notls: {{host: localhost, port: {notls}, addresses: [127.0.0.1/32]}}
  reset: {{host: localhost, port: {reset}, addresses: [127.0.0.1/32]}}
"""


class Bad:
    """A loopback upstream that misbehaves in one way; counts what it saw."""

    def __init__(self, behaviour: str, pki):
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(pki.cert, pki.key)
        self.held: list[socket.socket] = []
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _read_request(self, conn) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        self.requests += 1

    def _one(self, conn):
        self.held.append(conn)
        try:
            if self.behaviour == "notls":
                return  # reads nothing, answers nothing: the TLS handshake never completes
            conn = self.tls.wrap_socket(conn, server_side=True)
            self.held.append(conn)
            self._read_request(conn)
            if self.behaviour == "stall":
                return  # accepted, TLS done, request read: never answers
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500)
            time.sleep(0.2)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # with linger 0: a reset, halfway through the body
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.held:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def bad(pki):
    servers = {b: Bad(b, pki) for b in ("stall", "notls", "reset")}
    yield servers
    for s in servers.values():
        s.close()


@pytest.fixture(scope="module")
def gw(start_gateway, token_key, bad):
    policy = POLICY.format(pubkey=token_key + ".pub", **{k: s.port for k, s in bad.items()})
    return start_gateway(policy, options={"pangate_upstream_connect_timeout": "2s",
                                          "pangate_upstream_tls_timeout": "2s",
                                          "pangate_upstream_response_timeout": "2s"})


def _get(gw, mint, port: int, path: str = "/x") -> tuple[requests.Response, float]:
    s = gw.session("reader", mint("reader"))
    t0 = time.monotonic()
    r = s.get(f"https://localhost:{port}{path}", timeout=60)
    return r, time.monotonic() - t0


def _record(gw, rid: str) -> dict:
    recs = [r for r in gw.records_for(rid) if r.get("event") == "request"]
    assert len(recs) == 1, recs
    return recs[0]


def test_an_upstream_that_never_answers_gets_a_504_in_time(gw, bad, mint):
    r, took = _get(gw, mint, bad["stall"].port)
    assert r.status_code == 504, r.text
    assert r.headers["Content-Type"] == "application/json"
    doc = r.json()
    assert doc["error"] == "gateway_timeout" and doc["code"] == "upstream_timeout" and doc["reason"]
    assert doc["request_id"] == r.headers["X-Pangate-Request-Id"]
    assert 1.5 <= took < 15, took  # the 2 s response timeout, not mitmproxy's minutes
    assert bad["stall"].requests >= 1
    rec = _record(gw, doc["request_id"])
    assert rec["outcome"] == "error" and rec["status"] == 504 and rec["code"] == "upstream_timeout", rec


def test_an_upstream_that_never_completes_tls_gets_a_502_and_a_record(gw, bad, mint):
    r, took = _get(gw, mint, bad["notls"].port)
    assert r.status_code == 502, r.text
    doc = r.json()
    assert doc["code"] == "upstream_tls_failed" and doc["error"] == "bad_gateway"
    assert doc["request_id"] == r.headers["X-Pangate-Request-Id"]
    assert took < 15, took  # one TLS timeout, not one per attempt
    rec = _record(gw, doc["request_id"])
    assert rec["outcome"] == "error" and rec["status"] == 502 and rec["code"] == "upstream_tls_failed", rec


def test_a_reset_mid_body_is_a_502_json_and_recorded_as_an_error(gw, bad, mint):
    r, _ = _get(gw, mint, bad["reset"].port)
    # The body was not streamed: nothing had reached the client, so it gets pangate's answer.
    assert r.status_code == 502, r.text
    assert "<html" not in r.text.lower()
    doc = r.json()
    assert doc["code"] == "upstream_reset" and doc["request_id"] == r.headers["X-Pangate-Request-Id"]
    rec = _record(gw, doc["request_id"])
    assert rec["outcome"] == "error" and rec["code"] == "upstream_reset" and rec["status"] != 200, rec
    assert rec["status"] == 502


def test_a_streamed_body_reset_midway_is_cut_and_recorded_as_an_error(start_gateway, token_key, bad, mint):
    policy = POLICY.format(pubkey=token_key + ".pub", **{k: s.port for k, s in bad.items()})
    g = start_gateway(policy, options={"stream_large_bodies": "100"})
    s = g.session("reader", mint("reader"))
    with pytest.raises(requests.exceptions.RequestException):
        r = s.get(f"https://localhost:{bad['reset'].port}/x", timeout=30, stream=True)
        rid = r.headers["X-Pangate-Request-Id"]
        assert r.status_code == 200  # the headers went out before the upstream broke off
        r.content  # noqa: B018  (reading the body hits the cut)
    rec = [x for x in g.audit_records() if x.get("event") == "request"
           and x["destination"]["port"] == bad["reset"].port]
    deadline = time.monotonic() + 10
    while not rec and time.monotonic() < deadline:
        time.sleep(0.05)
        rec = [x for x in g.audit_records() if x.get("event") == "request"
               and x["destination"]["port"] == bad["reset"].port]
    assert rec and rec[-1]["outcome"] == "error" and rec[-1]["code"] == "upstream_reset", rec
    assert rid


def test_the_error_page_patch_fails_safe(monkeypatch, caplog):
    """If mitmproxy's send paths are not what the patch expects, nothing is patched and it says so."""
    from mitmproxy.proxy.layers.http import _http1, _http2

    monkeypatch.setattr(upstream_mod, "_PATCHED", {})
    h1 = _http1.Http1Server.send
    monkeypatch.setattr(_http2, "Http2Server", object())  # no _handle_event to wrap
    with caplog.at_level("ERROR", logger="pangate"):
        assert upstream_mod.install_error_pages() is False
    assert _http1.Http1Server.send is h1
    assert "error pages are mitmproxy's own" in caplog.text


def test_a_page_no_flow_explains_is_still_pangate_json():
    from mitmproxy.proxy.layers.http import ErrorCode

    page = upstream_mod.page_for("no-such-client", "server closed connection", ErrorCode.GENERIC_SERVER_ERROR, 502)
    assert page.status_code == 502 and page.headers["Content-Type"] == "application/json"
    assert page.json()["code"] == "upstream_reset"
