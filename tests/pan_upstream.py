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


# ---- raw responses for adversarial tests (tests/leakproof) --------------------------------------
def send_raw(sock, status_line: str, body: bytes, headers: list | dict | None = None,
             content_length: bool = True) -> None:
    """A response with a status line written as given (reason phrase included) and headers in
    order, repeated names allowed: [(name, value), ...]."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    head = status_line + "\r\n"
    if content_length:
        head += f"Content-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in items)
    sock.sendall(head.encode("latin-1") + b"\r\n" + body)


def send_chunked_trailers(sock, chunks, trailers: dict, headers: dict | None = None) -> None:
    """Chunked transfer ending with trailer fields (announced in a Trailer header)."""
    hdrs = {"Trailer": ", ".join(trailers), **(headers or {})}
    head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    sock.sendall(head.encode() + b"\r\n")
    for c in chunks:
        if c:
            sock.sendall(b"%x\r\n%s\r\n" % (len(c), c))
    sock.sendall(b"0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in trailers.items()).encode() + b"\r\n")


def range_handler(body: bytes, headers: dict | None = None):
    """Honours `Range: bytes=A-B` (one range) with a 206 and the slice, as object stores do."""
    import re

    def handler(req, sock):
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("range", "").strip())
        hdrs = {"Accept-Ranges": "bytes", "ETag": '"v1"', **(headers or {})}
        if not m or not (m.group(1) or m.group(2)):
            send(sock, 200, body, hdrs)
            return
        if m.group(1):
            a = int(m.group(1))
            b = min(int(m.group(2)) if m.group(2) else len(body) - 1, len(body) - 1)
        else:  # suffix range: the last N bytes
            a, b = max(0, len(body) - int(m.group(2))), len(body) - 1
        part = body[a:b + 1]
        send_raw(sock, "HTTP/1.1 206 Partial Content", part,
                 {**hdrs, "Content-Range": f"bytes {a}-{b}/{len(body)}"})
    return handler


def ws_script_handler(up, script):
    """A websocket upstream that, once the handshake is done, sends `script` (wsproto events,
    e.g. Ping, TextMessage, CloseConnection) and then records what the client sends: data
    messages in up.ws_received, control frames as ("ping"|"pong"|"close", payload) in
    up.ws_control."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Pong, Request

    if not hasattr(up, "ws_control"):
        up.ws_control = []

    def handler(req, s):
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(req.raw_head)
        for ev in ws.events():
            if isinstance(ev, Request):
                s.sendall(ws.send(AcceptConnection()))
        for ev in script:
            s.sendall(ws.send(ev))
            if isinstance(ev, CloseConnection):
                break
        while True:
            data = s.recv(65536)
            if not data:
                return False
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, Message):
                    up.ws_received.append(ev.data)
                elif isinstance(ev, Ping):
                    up.ws_control.append(("ping", bytes(ev.payload)))
                    s.sendall(ws.send(ev.response()))
                elif isinstance(ev, Pong):
                    up.ws_control.append(("pong", bytes(ev.payload)))
                elif isinstance(ev, CloseConnection):
                    up.ws_control.append(("close", (ev.reason or "").encode()))
                    try:
                        s.sendall(ws.send(ev.response()))
                    except Exception:
                        pass
                    return False
    return handler
