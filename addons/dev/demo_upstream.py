"""A small HTTPS card-processor stand-in, for the walkthrough and the tests.

It serves charges with real-looking test card numbers, echoes what it
received, and keeps the requests it saw so a test can check what really
arrived upstream (the injected credential, the absence of Proxy-Authorization).
Run as `pangate demo-upstream`, it prints one line per request saying which
credentials arrived, masked.
"""

from __future__ import annotations

import gzip
import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Public test numbers of the card brands (Stripe/Adyen test docs): never real accounts.
TEST_PANS = ["4242424242424242", "5555555555554444", "378282246310005", "6011111111111117",
             "3566002020360505", "6200000000000005"]


def charges(n: int = 3) -> list[dict]:
    return [{"id": f"ch_{i:08d}", "amount": 1999 + i, "currency": "eur", "created": 1732800000000 + i,
             "card": {"number": TEST_PANS[i % len(TEST_PANS)], "exp": "12/30", "cvc": "123"}}
            for i in range(n)]


class Handler(BaseHTTPRequestHandler):
    server_version = "demo-upstream/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the tests read `received`
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body}
        if getattr(self.server, "client_ca", None):  # an mTLS upstream notes whose certificate the client presented
            subject = dict(x[0] for x in self.connection.getpeercert().get("subject", ()))
            seen["client_cert"] = subject.get("commonName")
        self.server.received.append(seen)
        if getattr(self.server, "announce", False):
            print(f"demo upstream received {self.command} {self.path.split('?')[0]}: {what_arrived(seen)}", flush=True)
        route = self.server.routes.get(self.path.split("?")[0])
        if route is not None:
            status, payload, ctype, headers = route(self, seen)
            return self._send(status, payload, ctype, headers)
        path = self.path.split("?")[0]
        if path.startswith("/v1/charges"):
            return self._send(200, json.dumps({"object": "list", "data": charges()}).encode())
        if path == "/echo":
            return self._send(200, json.dumps({k: v for k, v in seen.items() if k != "body"}).encode())
        if path == "/gzip":
            data = gzip.compress(json.dumps({"data": charges()}).encode())
            return self._send(200, data, headers={"Content-Encoding": "gzip"})
        return self._send(200, json.dumps({"ok": True, "path": path}).encode())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


def what_arrived(seen: dict, expected_key: str | None = None) -> str:
    """The credentials a request carried, masked: what the walkthrough shows the processor got."""
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    auth = headers.get("authorization")
    expected_key = os.environ.get("DEMO_PROCESSOR_KEY") if expected_key is None else expected_key
    if auth is None:
        said = "no Authorization"
    else:
        scheme, _, secret = auth.partition(" ")
        shown = f"{secret[:8]}…" if len(secret) > 12 else "…"
        said = f"Authorization: {scheme} {shown}"
        if expected_key and secret == expected_key:
            said += " (= $DEMO_PROCESSOR_KEY, injected by the gateway)"
    return said + ("; Proxy-Authorization present!" if "proxy-authorization" in headers else
                   "; no Proxy-Authorization")


class DemoUpstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, cert: str, key: str, client_ca: str | None = None):
        super().__init__((host, port), Handler)
        self.received: list[dict] = []
        self.routes: dict = {}  # path -> fn(handler, seen) -> (status, body, ctype, headers)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.client_ca = client_ca
        if client_ca:  # mTLS: a client without a certificate from client_ca is refused in the handshake
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)

    def start(self) -> "DemoUpstream":
        threading.Thread(target=self.serve_forever, daemon=True, name="demo-upstream").start()
        return self

    @property
    def port(self) -> int:
        return self.server_address[1]


def register(sub) -> None:
    p = sub.add_parser("demo-upstream", help="serve a local HTTPS card-processor stand-in (walkthrough)")
    p.add_argument("--port", type=int, default=9443)
    p.add_argument("--certs", default="certs", help="where its CA and certificate are made")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pangate.dev.pki import make_ca, make_leaf

    ca = make_ca(args.certs, "demo-upstream-ca")
    cert, key = make_leaf(ca, args.certs, ["localhost", "127.0.0.1"], "demo-upstream")
    server = DemoUpstream("127.0.0.1", args.port, cert, key)
    server.announce = True  # one line per request on stdout: what the gateway sent
    print(f"demo upstream on https://localhost:{args.port} (CA: {ca[0]})", flush=True)
    server.serve_forever()
    return 0
