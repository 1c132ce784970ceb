"""The exchange endpoint's HTTPS listener: stdlib http.server in its own threads.

Plain module, no mitmproxy import. It only moves bytes: each POST /token is
handed to `handle(peer, headers, body)` (the glue runs it on the proxy's event
loop, where the verifier and the audit trail live) and its answer is written
back. TLS handshakes happen in the connection's thread, never in the accept
loop, so a slow client holds up nobody but itself; connections beyond
MAX_CONNECTIONS are closed unanswered.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from pangate.exchange.grant import MAX_BODY

log = logging.getLogger("pangate")
PATH = "/token"
MAX_CONNECTIONS = 32
TIMEOUT = 10.0

Answer = tuple[int, dict, bytes]


def parse_listen(value: str) -> tuple[str, int]:
    """`PORT` (loopback) or `HOST:PORT` / `[v6]:PORT`; ValueError otherwise."""
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value.strip()
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected PORT or HOST:PORT, got {value!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"listen on an IP address (or localhost), not {host!r}") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def json_answer(status: int, body: dict, extra: dict | None = None) -> Answer:
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache",
               **(extra or {})}
    return status, headers, (json.dumps(body) + "\n").encode()


class _Handler(BaseHTTPRequestHandler):
    server_version = "pangate-exchange"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT

    def log_message(self, format, *args):  # request lines are not logged; the audit trail records exchanges
        pass

    def _send(self, answer: Answer) -> None:
        status, headers, body = answer
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _refuse(self, status: int, error: str, code: str, description: str, extra: dict | None = None) -> None:
        self._send(json_answer(status, {"error": error, "error_description": description, "code": code}, extra))

    def do_POST(self):
        if self.path.split("?")[0] != PATH:
            return self._refuse(404, "invalid_request", "not_found", f"the token endpoint is POST {PATH}")
        if "?" in self.path:  # credentials in a URL end up in logs: RFC 6749 3.2 wants them in the body
            return self._refuse(400, "invalid_request", "query_not_allowed", "send parameters in the body")
        if self.headers.get("Transfer-Encoding"):
            return self._refuse(411, "invalid_request", "length_required", "send a Content-Length body")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._refuse(411, "invalid_request", "length_required", "send a Content-Length body")
        if not 0 <= length <= MAX_BODY:
            return self._refuse(413, "invalid_request", "too_large", "request body too large")
        body = self.rfile.read(length)
        if len(body) != length:
            return
        self._send(self.server.handle(f"{self.client_address[0]}:{self.client_address[1]}", self.headers, body))

    def _not_allowed(self):
        self._refuse(405, "invalid_request", "method_not_allowed", f"the token endpoint is POST {PATH}",
                     {"Allow": "POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed


class ExchangeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, tls: ssl.SSLContext,
                 handle: Callable[[str, object, bytes], Answer]):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.tls, self.handle = tls, handle
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: this one is dropped, the others go on
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request, client_address):
        request.settimeout(TIMEOUT)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # not TLS, or a failed handshake: nothing to answer
        try:
            self.RequestHandlerClass(conn, client_address, self)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def start(self) -> "ExchangeServer":
        self._thread = threading.Thread(target=self.serve_forever, name="pangate-exchange", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
