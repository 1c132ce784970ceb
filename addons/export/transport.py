"""Transports of the SIEM exporters: each sends one batch of audit lines or raises.

A transport is one class, registered for its URL scheme(s) with @transport:

    @transport("myproto")
    class MySink:
        @classmethod
        def from_url(cls, url: str) -> "MySink": ...   # check the URL, no I/O; ExportError says what is wrong
        def send(self, lines: list[bytes]) -> None: ... # one batch of audit lines (JSON, no newline)
        def close(self) -> None: ...                    # drop the connection; send() may reconnect

`send` returns only when the collector has the batch (as far as the protocol
lets us know); raising (ExportError or OSError) makes the exporter close the
transport and retry the same batch later. `from_url` turns a `pangate_export`
URL into a transport of the class registered for its scheme.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import sys
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from pangate.common import http
from pangate.common.webhook import is_loopback

HOSTNAME = socket.gethostname() or "-"


class ExportError(Exception):
    """A destination that is misconfigured or refused a batch."""


class Transport(Protocol):
    @classmethod
    def from_url(cls, url: str) -> "Transport": ...

    def send(self, lines: list[bytes]) -> None: ...

    def close(self) -> None: ...


TRANSPORTS: dict[str, type[Transport]] = {}  # URL scheme -> transport class


def transport(*schemes: str):
    """Class decorator: export URLs with these schemes are sent by this class."""
    def register(cls):
        for scheme in schemes:
            if scheme in TRANSPORTS:
                raise ValueError(f"export scheme {scheme!r} registered twice")
            TRANSPORTS[scheme] = cls
        return cls
    return register


def from_url(url: str) -> Transport:
    """The transport for one export URL; ExportError says what is wrong with it."""
    cls = TRANSPORTS.get(urlsplit(url).scheme.lower())
    if cls is None:
        raise ExportError(f"unknown export destination {url.split('?')[0]!r} (use one of: {', '.join(TRANSPORTS)})")
    return cls.from_url(url)


@dataclass(frozen=True)
class Target:
    """What every network transport takes from its URL, checked the same way for all."""

    scheme: str
    host: str
    port: int
    path: str
    query: dict
    ca: str | None  # ?ca=PATH: verify the collector against this CA instead of the system roots
    token: str | None  # from the environment variable named by ?token_env=
    where: str  # the URL without its query, for messages (the query may name secrets' variables)

    @classmethod
    def parse(cls, url: str) -> "Target":
        u = urlsplit(url)
        where = url.split("?")[0]
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        if u.username or u.password:
            raise ExportError("put no credentials in an export URL; name an environment variable with token_env=")
        try:
            port = u.port
        except ValueError as e:
            raise ExportError(f"{where}: {e}") from None
        if not u.hostname or not port:
            raise ExportError(f"{where}: needs HOST:PORT")
        ca = q.get("ca")
        if ca and not os.path.isfile(ca):
            raise ExportError(f"CA file {ca} does not exist")
        token = None
        if q.get("token_env"):
            token = os.environ.get(q["token_env"])
            if not token:
                raise ExportError(f"environment variable {q['token_env']} (token_env) is not set")
        return cls(u.scheme.lower(), u.hostname, port, u.path, q, ca, token, where)

    @property
    def tls(self) -> bool:
        return not self.scheme.endswith("+http")

    def tls_or_loopback(self) -> "Target":
        if not self.tls and not is_loopback(self.host):
            # A token and every audit record in clear: only to a collector on this machine.
            raise ExportError(f"{self.scheme}:// sends records and the token unencrypted: only to a loopback collector")
        return self

    def http_url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"


def syslog_frame(line: bytes, rec: dict) -> bytes:
    """One RFC 5424 message: alerts at severity warning, the rest notice; facility auth (4)."""
    sev = 4 if rec.get("alert") else 5
    ts = rec.get("time") or "-"
    msgid = str(rec.get("event") or "-")[:32]
    return f"<{4 * 8 + sev}>1 {ts} {HOSTNAME} pangate {os.getpid()} {msgid} - ".encode() + line


@transport("stdout")
class Stdout:
    @classmethod
    def from_url(cls, url: str) -> "Stdout":
        return cls()

    def send(self, lines: list[bytes]) -> None:
        out = sys.stdout.buffer
        out.write(b"".join(line + b"\n" for line in lines))
        out.flush()

    def close(self) -> None:
        pass


@transport("syslog+udp")
class SyslogUDP:
    """Datagrams have no acknowledgement: a collector that is down loses them (say so in the docs)."""

    def __init__(self, host: str, port: int):
        self.addr = (host, port)
        self.sock = None

    @classmethod
    def from_url(cls, url: str) -> "SyslogUDP":
        t = Target.parse(url)
        return cls(t.host, t.port)

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


@transport("syslog+tcp", "syslog+tls")
class SyslogStream:
    """RFC 5424 over TCP or TLS with octet counting (RFC 6587 3.4.1)."""

    def __init__(self, host: str, port: int, tls: bool = False, ca: str | None = None):
        self.host, self.port = host, port
        self.ctx = _tls_context(ca) if tls else None
        self.sock = None

    @classmethod
    def from_url(cls, url: str) -> "SyslogStream":
        t = Target.parse(url)
        tls = t.scheme == "syslog+tls"
        return cls(t.host, t.port, tls=tls, ca=t.ca if tls else None)

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
    """POSTs a batch to an HTTP collector and checks its answer (common/http.py: TLS verified, no proxy)."""

    TIMEOUT = 15.0

    def __init__(self, url: str, ca: str | None = None, token: str | None = None):
        self.url, self.ca, self.token = url, ca, token
        self.client: http.Session | None = None  # keeps the connection open between batches

    def headers(self) -> dict:
        return {"Content-Type": "application/json"}

    def body(self, lines: list[bytes]) -> bytes:
        raise NotImplementedError

    def check(self, status: int, body: bytes) -> None:
        if status // 100 != 2:
            raise ExportError(f"collector answered HTTP {status}: {body[:200]!r}")

    def send(self, lines: list[bytes]) -> None:
        try:
            if self.client is None:
                self.client = http.session(self.ca, self.TIMEOUT)
            resp = self.client.post(self.url, data=self.body(lines), headers=self.headers())
            status, data = resp.status_code, resp.content
        except (http.RequestException, ValueError) as e:
            self.close()
            # Not str(e): requests' messages repeat the URL, and a collector URL may carry a secret.
            raise ExportError(f"{type(e).__name__}: {_reason(e)}") from None
        self.check(status, data)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _reason(e: Exception) -> str:
    """The innermost cause of a requests error (e.g. 'Connection refused'), without the URL."""
    # requests' own exceptions are OSErrors too; the socket or TLS error sits further down.
    while e.__context__ is not None and (isinstance(e, http.RequestException) or not isinstance(e, OSError)):
        e = e.__context__
    return getattr(e, "strerror", None) or type(e).__name__


@transport("hec", "hec+http")
class SplunkHEC(HttpBatch):
    @classmethod
    def from_url(cls, url: str) -> "SplunkHEC":
        t = Target.parse(url).tls_or_loopback()
        if t.token is None:
            raise ExportError("hec:// needs token_env=VARIABLE holding the HEC token")
        return cls(t.http_url(t.path or "/services/collector"), t.ca, t.token)

    def headers(self) -> dict:
        return {"Content-Type": "application/json", "Authorization": f"Splunk {self.token}"}

    def body(self, lines: list[bytes]) -> bytes:
        return b"".join(b'{"sourcetype":"pangate:audit","source":"pangate","event":%s}\n' % line for line in lines)


@transport("es", "es+http")
class ElasticBulk(HttpBatch):
    def __init__(self, index: str, url: str, ca: str | None = None, token: str | None = None):
        super().__init__(url, ca, token)
        self.index = index

    @classmethod
    def from_url(cls, url: str) -> "ElasticBulk":
        t = Target.parse(url).tls_or_loopback()
        index = t.path.strip("/")
        if not index or "/" in index:
            raise ExportError(f"{t.where}: es:// needs an index name as the path, e.g. es://host:9200/pangate")
        return cls(index, t.http_url("/_bulk"), t.ca, t.token)

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


def _tls_context(ca: str | None) -> ssl.SSLContext:
    if ca and not os.path.isfile(ca):
        raise ExportError(f"CA file {ca} does not exist")
    return ssl.create_default_context(cafile=ca)  # verifies chain and host name
