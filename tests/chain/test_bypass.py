"""Ways around the checks that the gateway must close: raw bytes in a tunnel, bypass options."""

from __future__ import annotations

import base64
import socket
import ssl

import pytest

from harness import open_tunnel


def _tunnel(gw, target: str, token: str) -> ssl.SSLSocket:
    return open_tunnel(gw, target, "Basic " + base64.b64encode(f"reader:{token}".encode()).decode())


def _read_all(tls: ssl.SSLSocket) -> bytes:
    out = b""
    try:
        while chunk := tls.recv(4096):
            out += chunk
    except (ssl.SSLError, ConnectionError, socket.timeout):
        pass
    return out


def test_non_http_bytes_in_a_tunnel_are_not_relayed(gateway, upstream, mint):
    before = len(upstream.received)
    tls = _tunnel(gateway, f"localhost:{upstream.port}", mint("reader"))
    tls.sendall(b"\x00\x01\x02 not http at all\r\nDELETE /admin HTTP/1.1\r\nX-Card: 4111111111111111\r\n\r\n")
    answer = _read_all(tls)
    tls.close()
    assert len(upstream.received) == before
    assert b"4111111111111111" not in answer and b"200 OK" not in answer


@pytest.mark.parametrize("option,value,tool", [("ignore_hosts", "example\\.com", "mitmdump"),
                                               ("tcp_hosts", ".*", "mitmdump"), ("map_remote", "|.*|x|y", "mitmdump"),
                                               ("intercept", "~q", "mitmweb")])  # mitmdump has no intercept
def test_options_that_bypass_the_checks_stop_the_gateway(start_gateway, option, value, tool):
    gw = start_gateway(options={option: value}, tool=tool, wait_live=False)
    gw.log.wait_for(rf"pangate refuses {option}")
    assert gw.proc.wait(20) != 0


def test_request_smuggling_guard_cannot_be_switched_off(start_gateway):
    gw = start_gateway(options={"validate_inbound_headers": "false"}, wait_live=False)
    gw.log.wait_for(r"pangate needs validate_inbound_headers on")
    assert gw.proc.wait(20) != 0


@pytest.mark.parametrize("target,code", [("https://evil.example/v1/charges", "absolute_form"),
                                         ("//admin/v1/charges", "unsafe_path"),
                                         ("/v1/charges?a=1#&limit=100000", "unsafe_path"),
                                         ("/v1/charges/..;/admin", "unsafe_path")])
def test_ambiguous_request_targets_are_refused(gateway, upstream, mint, target, code):
    before = len(upstream.received)
    tls = _tunnel(gateway, f"localhost:{upstream.port}", mint("reader"))
    tls.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost:{upstream.port}\r\nConnection: close\r\n\r\n".encode())
    answer = _read_all(tls).decode("utf-8", "replace")
    tls.close()
    assert answer.startswith("HTTP/1.1 403"), answer[:200]
    assert f'"code": "{code}"' in answer
    assert len(upstream.received) == before
