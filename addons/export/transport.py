"""Transports of the SIEM exporters: each sends one batch of audit lines or raises.

`send` returns only when the collector has the batch (as far as the protocol
lets us know); raising makes the exporter retry the same batch later.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import sys
from urllib.parse import parse_qs, urlsplit

HOSTNAME = socket.gethostname() or "-"
from pangate.common.webhook import is_loopback


class ExportError(Exception):
    """A destination that is misconfigured or refused a batch."""


def syslog_frame(line: bytes, rec: dict) -> bytes:
    """One RFC 5424 message: alerts at severity warning, the rest notice; facility auth (4)."""
    sev = 4 if rec.get("alert") else 5
    ts = rec.get("time") or "-"
    msgid = str(rec.get("event") or "-")[:32]
    return f"<{4 * 8 + sev}>1 {ts} {HOSTNAME} pangate {os.getpid()} {msgid} - ".encode() + line


class Stdout:
    def __init__(self):
        pass

    def send(self, lines: list[bytes]) -> None:
        out = sys.stdout.buffer
        out.write(b"".join(line + b"\n" for line in lines))
        out.flush()

    def close(self) -> None:
        pass


class SyslogUDP:
    """Datagrams have no acknowledgement: a collector that is down loses them (say so in the docs)."""

    def __init__(self, host: str, port: int):
        self.addr = (host, port)
        self.sock = None

    def send(self, lines: list[bytes]) -> None:
        if self.sock is None:
            self.sock = socket.socket(socket.AF_INET6 if ":" in self.addr[0] else socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.connect(self.addr)  # connected: an ICMP "port unreachable" surfaces as an error
        for line in lines:
            self.sock.send(syslog_frame(line, json.loads(line)))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class SyslogStream:
    """RFC 5424 over TCP or TLS with octet counting (RFC 6587 3.4.1)."""

    def __init__(self, host: str, port: int, tls: bool = False, ca: str | None = None):
        self.host, self.port = host, port
        self.ctx = _tls_context(ca) if tls else None
        self.sock = None

    def _connect(self):
        sock = socket.create_connection((self.host, self.port), timeout=10)
        if self.ctx is not None:
            sock = self.ctx.wrap_socket(sock, server_hostname=self.host)
        return sock

    def _peer_closed(self) -> bool:
        # A syslog collector never talks back: anything readable means it closed
        # (or reset) the connection, and writes would vanish into a dead socket.
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def send(self, lines: list[bytes]) -> None:
        if self.sock is not None and self._peer_closed():
            self.close()
        if self.sock is None:
            self.sock = self._connect()
        data = b"".join(b"%d %s" % (len(f), f) for f in (syslog_frame(line, json.loads(line)) for line in lines))
        self.sock.sendall(data)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class HttpBatch:
    """POSTs a batch to an HTTP collector and checks its answer."""

    def __init__(self, host: str, port: int, path: str, tls: bool, ca: str | None, token: str | None):
        self.host, self.port, self.path = host, port, path
        self.ctx = _tls_context(ca) if tls else None
        self.token = token
        self.conn = None

    def headers(self) -> dict:
        return {"Content-Type": "application/json"}

    def body(self, lines: list[bytes]) -> bytes:
        raise NotImplementedError

    def check(self, status: int, body: bytes) -> None:
        if status // 100 != 2:
            raise ExportError(f"collector answered HTTP {status}: {body[:200]!r}")

    def send(self, lines: list[bytes]) -> None:
        if self.conn is None:
            self.conn = (http.client.HTTPSConnection(self.host, self.port, timeout=15, context=self.ctx)
                         if self.ctx else http.client.HTTPConnection(self.host, self.port, timeout=15))
        try:
            self.conn.request("POST", self.path, body=self.body(lines), headers=self.headers())
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise ExportError(f"{type(e).__name__}: {e}") from None
        self.check(resp.status, data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class SplunkHEC(HttpBatch):
    def headers(self) -> dict:
        return {"Content-Type": "application/json", "Authorization": f"Splunk {self.token}"}

    def body(self, lines: list[bytes]) -> bytes:
        return b"".join(b'{"sourcetype":"pangate:audit","source":"pangate","event":%s}\n' % line for line in lines)


class ElasticBulk(HttpBatch):
    def __init__(self, index: str, **kw):
        super().__init__(path="/_bulk", **kw)
        self.index = index

    def headers(self) -> dict:
        h = {"Content-Type": "application/x-ndjson"}
        if self.token:
            h["Authorization"] = f"ApiKey {self.token}"
        return h

    def body(self, lines: list[bytes]) -> bytes:
        # _id = seq: a batch resent after a lost answer overwrites itself instead of duplicating.
        return b"".join(b'{"index":{"_index":%s,"_id":"%d"}}\n%s\n'
                        % (json.dumps(self.index).encode(), json.loads(line)["seq"], line) for line in lines)

    def check(self, status: int, body: bytes) -> None:
        super().check(status, body)
        try:
            if json.loads(body).get("errors"):
                raise ExportError("elasticsearch rejected some documents of the batch")
        except ValueError:
            raise ExportError("elasticsearch answered something that is not JSON") from None


TRANSPORTS = {"stdout": Stdout, "syslog+udp": SyslogUDP, "syslog+tcp": SyslogStream, "syslog+tls": SyslogStream,
              "hec": SplunkHEC, "hec+http": SplunkHEC, "es": ElasticBulk, "es+http": ElasticBulk}


def _tls_context(ca: str | None) -> ssl.SSLContext:
    if ca and not os.path.isfile(ca):
        raise ExportError(f"CA file {ca} does not exist")
    return ssl.create_default_context(cafile=ca)  # verifies chain and host name


def parse_url(url: str) -> tuple[str, dict]:
    """(transport name, constructor arguments) for one export URL; ExportError says what is wrong."""
    u = urlsplit(url)
    kind = u.scheme.lower()
    if kind not in TRANSPORTS:
        raise ExportError(f"unknown export destination {url.split('?')[0]!r} (use one of: {', '.join(TRANSPORTS)})")
    if kind == "stdout":
        return kind, {}
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    if u.username or u.password:
        raise ExportError("put no credentials in an export URL; name an environment variable with token_env=")
    try:
        port = u.port
    except ValueError as e:
        raise ExportError(f"{url.split('?')[0]}: {e}") from None
    if not u.hostname or not port:
        raise ExportError(f"{url.split('?')[0]}: needs HOST:PORT")
    ca = q.get("ca")
    if ca and not os.path.isfile(ca):
        raise ExportError(f"CA file {ca} does not exist")
    token = None
    if q.get("token_env"):
        token = os.environ.get(q["token_env"])
        if not token:
            raise ExportError(f"environment variable {q['token_env']} (token_env) is not set")
    if kind.startswith("syslog"):
        args = {"host": u.hostname, "port": port}
        if kind == "syslog+tls":
            args.update(tls=True, ca=ca)
        return kind, args
    tls = not kind.endswith("+http")
    if not tls and not is_loopback(u.hostname or ""):
        # A token and every audit record in clear: only to a collector on this machine.
        raise ExportError(f"{kind}:// sends records and the token unencrypted: only to a loopback collector")
    if kind.startswith("hec"):
        if token is None:
            raise ExportError("hec:// needs token_env=VARIABLE holding the HEC token")
        return kind, {"host": u.hostname, "port": port, "path": u.path or "/services/collector",
                      "tls": tls, "ca": ca, "token": token}
    index = u.path.strip("/")
    if not index or "/" in index:
        raise ExportError(f"{url.split('?')[0]}: es:// needs an index name as the path, e.g. es://host:9200/pangate")
    return kind, {"index": index, "host": u.hostname, "port": port, "tls": tls, "ca": ca, "token": token}
