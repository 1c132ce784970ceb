"""The 407 challenge: one Proxy-Authenticate header per scheme, Basic first.

Java's HttpClient reads one scheme per header: a single comma-joined
`Bearer ..., Basic ...` header left it unable to authenticate at all.
"""

from __future__ import annotations

import socket


def _challenges(gw, request: bytes) -> tuple[bytes, list[str]]:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    values = [line.split(":", 1)[1].strip() for line in lines[1:]
              if line.split(":", 1)[0].strip().lower() == "proxy-authenticate"]
    return lines[0].encode(), values


def test_connect_challenge_is_one_header_per_scheme_basic_first(gateway, upstream):
    target = f"localhost:{upstream.port}"
    status, values = _challenges(gateway, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert status.startswith(b"HTTP/1.1 407"), status
    assert values == ['Basic realm="pangate"', 'Bearer realm="pangate"']


def test_plain_proxy_request_challenge_is_the_same(gateway, upstream):
    url = f"http://localhost:{upstream.port}/v1/charges"
    status, values = _challenges(gateway, f"GET {url} HTTP/1.1\r\nHost: localhost:{upstream.port}\r\n"
                                          "Connection: close\r\n\r\n".encode())
    assert status.startswith(b"HTTP/1.1 407"), status
    assert values == ['Basic realm="pangate"', 'Bearer realm="pangate"']


def test_bad_token_challenge_too(gateway, upstream):
    target = f"localhost:{upstream.port}"
    status, values = _challenges(gateway, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                                          "Proxy-Authorization: Bearer not-a-token\r\n\r\n".encode())
    assert status.startswith(b"HTTP/1.1 407"), status
    assert values == ['Basic realm="pangate"', 'Bearer realm="pangate"']
