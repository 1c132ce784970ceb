"""A raw HTTPS/1.1 upstream for masking tests: chunked, SSE, websocket, bodies made on the fly.

DemoUpstream (http.server) always sends Content-Length; these tests need to
control framing, chunk boundaries and timing, so this one writes bytes itself.
Handlers: fn(req, sock) -> None; they write the whole response.
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field


@dataclass
class Req:
    method: str
    path: str
    headers: dict
    raw_head: bytes
    body: bytes = b""
    complete: bool = True
    done: threading.Event = field(default_factory=threading.Event)


class PanUpstream:
    def __init__(self, cert: str, key: str):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.routes: dict = {}
        self.received: list[Req] = []
        self.ws_received: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.sock.close()

    def wait_request(self, path: str, timeout: float = 20) -> Req:
        """The last request to `path` (query aside), once its body has been read (or the connection broke)."""
        with self._cond:
            self._cond.wait_for(lambda: any(r.path.split("?")[0] == path for r in self.received), timeout)
            reqs = [r for r in self.received if r.path.split("?")[0] == path]
        if not reqs:
            raise TimeoutError(f"upstream saw no request to {path}")
        if not reqs[-1].done.wait(timeout):
            raise TimeoutError(f"the request to {path} never finished")
        return reqs[-1]

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw):
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        f = tls.makefile("rb")
        try:
            while self._one(tls, f):
                pass
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            tls.close()

    def _one(self, tls, f) -> bool:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = f.readline(65536)
            if not line:
                return False
            head += line
        first, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = first.split(" ", 2)
        headers = {}
        for h in lines:
            if ":" in h:
                k, v = h.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        req = Req(method, path, headers, head)
        with self._cond:
            self.received.append(req)
            self._cond.notify_all()
        try:
            req.body = self._read_body(f, headers, req)
        except (OSError, ssl.SSLError, ValueError):
            req.complete = False
            req.done.set()
            raise
        req.done.set()
        handler = self.routes.get(path.split("?")[0])
        if handler is None:
            send(tls, 200, b'{"ok": true}', {"Content-Type": "application/json"})
            return True
        return handler(req, tls) is not False

    @staticmethod
    def _read_body(f, headers, req) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            out = bytearray()
            while True:
                size = int(f.readline().split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    f.readline()
                    return bytes(out)
                data = f.read(size + 2)
                if len(data) < size + 2:
                    req.body = bytes(out + data)
                    raise ValueError("truncated chunk")
                out += data[:-2]
                req.body = bytes(out)  # visible as it arrives
        n = int(headers.get("content-length", 0))
        out = bytearray()
        while len(out) < n:
            data = f.read1(min(65536, n - len(out)))
            if not data:
                req.body = bytes(out)
                raise ValueError("truncated body")
            out += data
            req.body = bytes(out)
        return bytes(out)


def send(sock, status: int, body: bytes, headers: dict | None = None) -> None:
    head = f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(head.encode() + b"\r\n" + body)


def send_chunked(sock, chunks, headers: dict | None = None, status: int = 200) -> None:
    """Chunked transfer; each chunk is its own write (and usually its own TLS record)."""
    head = f"HTTP/1.1 {status} OK\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(head.encode() + b"\r\n")
    for c in chunks:
        if c:
            sock.sendall(b"%x\r\n%s\r\n" % (len(c), c))
    sock.sendall(b"0\r\n\r\n")
