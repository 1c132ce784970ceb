"""Transports of the SIEM exporters: each sends one batch of audit lines or raises.

A transport is one class, registered for its URL scheme(s) with @transport:

    @transport("myproto")
    class MySink:
        @classmethod
        def from_url(cls, url: str) -> "MySink": ...   # check the URL, no I/O; ExportError says what is wrong
        def send(self, lines: list[bytes]) -> None: ... # one batch of audit lines (JSON, no newline)
        def close(self) -> None: ...                    # drop the connection; send() may reconnect

`send` returns only when the collector has acknowledged the batch; raising
(ExportError or OSError) makes the exporter close the transport and retry the
same batch later (at-least-once). `from_url` turns a `pangate_export` URL into a
transport of the class registered for its scheme.

A stream without application acknowledgement (syslog over TCP/TLS) also has

        confirms = True
        def confirm(self, timeout: float) -> bool: ... # everything sent so far is delivered?
        def check(self) -> None: ...                   # raise if the collector went away

and then `send` returning means only "handed to the kernel": the exporter keeps
those records in flight, resends them after a failure, and counts them delivered
only when `confirm` says so (see SyslogStream for how it knows).

Every message carries a stable id so that a repeat (after a failure nobody can
tell apart from a lost answer) is detectable or harmless: the record's seq
(syslog: RFC 5424 `[meta sequenceId=...]`; HEC: fields.pangate_seq) and the
SHA-256 of its audit line, which is the chain hash the next record's `prev`
holds (HEC: fields.pangate_id; Elasticsearch: the document `_id`, written with
`create`, so a repeat is refused as a 409 and counted delivered).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import select
import socket
import ssl
import struct
import sys
import termios
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from pangate.common import http
from pangate.common.webhook import is_loopback

HOSTNAME = socket.gethostname() or "-"
log = logging.getLogger("pangate")


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


def record_id(line: bytes) -> str:
    """A record's stable id: SHA-256 of its exact audit line (the chain hash of that record)."""
    return hashlib.sha256(line).hexdigest()


def syslog_frame(line: bytes, rec: dict) -> bytes:
    """One RFC 5424 message: alerts at severity warning, the rest notice; facility auth (4).

    The audit seq goes in the IANA `meta` SD element (sequenceId), so a collector sees
    a gap or a repeat without parsing the message; alerts sent directly have no seq."""
    sev = 4 if rec.get("alert") else 5
    ts = rec.get("time") or "-"
    msgid = str(rec.get("event") or "-")[:32]
    seq = rec.get("seq")
    sd = f'[meta sequenceId="{seq}"]' if isinstance(seq, int) and 0 < seq < 2**31 else "-"
    return f"<{4 * 8 + sev}>1 {ts} {HOSTNAME} pangate {os.getpid()} {msgid} {sd} ".encode() + line


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


def send_queue(sock) -> int:
    """Bytes written to a TCP socket that its peer has not acknowledged yet (Linux SIOCOUTQ).

    For TLS, the socket underneath (same descriptor): ciphertext bytes."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # TIOCOUTQ == SIOCOUTQ
    return struct.unpack("i", buf)[0]


@transport("syslog+tcp", "syslog+tls")
class SyslogStream:
    """RFC 5424 over TCP or TLS with octet counting (RFC 6587 3.4.1).

    Syslog has no acknowledgement, and a kernel that accepted bytes into a socket
    buffer proves nothing: a collector that hangs and is killed loses what sat in
    our send queue and in its receive buffer. So records sent are only in flight
    until `confirm`: we close our side (TLS close_notify, then TCP FIN) and wait
    for the collector to close its side. A collector reads our FIN only after
    every byte before it, and TCP acknowledges the FIN (our send queue, SIOCOUTQ,
    drains to 0) only if nothing was refused, so its orderly close means it read
    everything. A collector that does not close within the timeout but whose TCP
    stack acknowledged everything is counted on that acknowledgement (logged: the
    window is then its receive buffer); one with bytes still unacknowledged is not
    reading, and what is in flight is resent on the next connection.
    """

    confirms = True
    CONFIRM_TIMEOUT = 5.0

    def __init__(self, host: str, port: int, tls: bool = False, ca: str | None = None,
                 confirm_timeout: float | None = None):
        self.host, self.port = host, port
        self.ctx = _tls_context(ca) if tls else None
        self.sock = None
        self.confirm_timeout = confirm_timeout or self.CONFIRM_TIMEOUT
        self._warned_no_close = False

    @classmethod
    def from_url(cls, url: str) -> "SyslogStream":
        t = Target.parse(url)
        tls = t.scheme == "syslog+tls"
        timeout = t.query.get("confirm_timeout")
        try:
            timeout = float(timeout) if timeout else None
        except ValueError:
            raise ExportError(f"{t.where}: confirm_timeout must be a number of seconds") from None
        return cls(t.host, t.port, tls=tls, ca=t.ca if tls else None, confirm_timeout=timeout)

    def _connect(self):
        sock = socket.create_connection((self.host, self.port), timeout=10)  # also each send's timeout
        if self.ctx is not None:
            sock = self.ctx.wrap_socket(sock, server_side=False, server_hostname=self.host)
        return sock

    def _peer_closed(self) -> bool:
        """Has the collector closed (or reset) the connection? Writes would vanish into it.

        A syslog collector never talks back, but TLS does (a TLS 1.3 server sends session
        tickets after the handshake): what is readable is read, and only EOF or an error
        counts as closed."""
        sock = self.sock
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        sock.setblocking(False)
        try:
            while True:
                if sock.recv(65536) == b"":
                    return True
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False  # nothing more to read, and the connection is still up
        except OSError:
            return True
        finally:
            sock.settimeout(10)

    def check(self) -> None:
        if self.sock is not None and self._peer_closed():
            raise ExportError("collector closed the connection with records in flight")

    def send(self, lines: list[bytes]) -> None:
        if self.sock is not None and self._peer_closed():
            raise ExportError("collector closed the connection")
        if self.sock is None:
            self.sock = self._connect()
        data = b"".join(b"%d %s" % (len(f), f) for f in (syslog_frame(line, json.loads(line)) for line in lines))
        self.sock.sendall(data)

    def confirm(self, timeout: float | None = None) -> bool:
        """Close gracefully; True if the collector has everything sent on this connection."""
        sock, self.sock = self.sock, None
        if sock is None:
            return True
        timeout = self.confirm_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            sock.settimeout(timeout)
            raw = sock
            if isinstance(sock, ssl.SSLSocket):
                try:
                    raw = sock.unwrap()  # close_notify; returns once the collector answers with its own
                except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    raw = socket.socket(fileno=sock.detach())  # it closed without close_notify
                except (TimeoutError, ssl.SSLWantReadError):
                    return self._unconfirmed(sock)
            raw.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([raw], [], [], left)
                if readable and raw.recv(65536) == b"":  # EOF: its orderly close
                    if raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and send_queue(raw) == 0:
                        return True
                    return False
            return self._unconfirmed(raw)
        except OSError as e:
            if e.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, None):
                log.warning("pangate export to %s:%s: closing failed: %s", self.host, self.port, e)
            return False
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _unconfirmed(self, sock) -> bool:
        """No orderly close in time: delivered if its TCP stack acknowledged everything."""
        try:
            acked = send_queue(sock) == 0
        except OSError:
            return False
        if acked and not self._warned_no_close:
            self._warned_no_close = True
            log.warning("pangate export to %s:%s: the collector does not close its side when we close ours; "
                        "records count as delivered once its TCP stack acknowledges them, so a crash of "
                        "the collector can lose what its receive buffer held", self.host, self.port)
        return acked

    def close(self) -> None:
        """Drop the connection (after a failure): what was in flight is resent."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class HttpBatch:
    """POSTs a batch to an HTTP collector and checks its answer (common/http.py: TLS verified, no proxy).

    A batch counts as delivered only on the collector's 2xx answer. The wait for it
    (`?timeout=SECONDS`, default TIMEOUT) must outlast a slow indexer: giving up
    earlier resends a batch the collector is still taking, so it would get it twice.
    A batch is resent only after the connection failed or timed out (and then the
    record ids make the repeat harmless or detectable)."""

    TIMEOUT = 120.0  # waiting for the answer; connecting is CONNECT_TIMEOUT
    CONNECT_TIMEOUT = 10.0

    def __init__(self, url: str, ca: str | None = None, token: str | None = None, timeout: float | None = None):
        self.url, self.ca, self.token = url, ca, token
        self.timeout = timeout or self.TIMEOUT
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
                self.client = http.session(self.ca, (self.CONNECT_TIMEOUT, self.timeout))
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


def _timeout(t: Target) -> float | None:
    v = t.query.get("timeout")
    if not v:
        return None
    try:
        timeout = float(v)
    except ValueError:
        timeout = 0
    if not 0 < timeout <= 3600:
        raise ExportError(f"{t.where}: timeout must be a number of seconds (0..3600)")
    return timeout


@transport("hec", "hec+http")
class SplunkHEC(HttpBatch):
    @classmethod
    def from_url(cls, url: str) -> "SplunkHEC":
        t = Target.parse(url).tls_or_loopback()
        if t.token is None:
            raise ExportError("hec:// needs token_env=VARIABLE holding the HEC token")
        return cls(t.http_url(t.path or "/services/collector"), t.ca, t.token, _timeout(t))

    def headers(self) -> dict:
        return {"Content-Type": "application/json", "Authorization": f"Splunk {self.token}"}

    def body(self, lines: list[bytes]) -> bytes:
        # fields: indexed with the event, so searches can find a repeat by id or a gap by seq.
        out = []
        for line in lines:
            fields = {"pangate_id": record_id(line)}
            seq = json.loads(line).get("seq")
            if seq is not None:
                fields["pangate_seq"] = seq
            out.append(b'{"sourcetype":"pangate:audit","source":"pangate","fields":%s,"event":%s}\n'
                       % (json.dumps(fields, sort_keys=True).encode(), line))
        return b"".join(out)


@transport("es", "es+http")
class ElasticBulk(HttpBatch):
    def __init__(self, index: str, url: str, ca: str | None = None, token: str | None = None,
                 timeout: float | None = None):
        super().__init__(url, ca, token, timeout)
        self.index = index

    @classmethod
    def from_url(cls, url: str) -> "ElasticBulk":
        t = Target.parse(url).tls_or_loopback()
        index = t.path.strip("/")
        if not index or "/" in index:
            raise ExportError(f"{t.where}: es:// needs an index name as the path, e.g. es://host:9200/pangate")
        return cls(index, t.http_url("/_bulk"), t.ca, t.token, _timeout(t))

    def headers(self) -> dict:
        h = {"Content-Type": "application/x-ndjson"}
        if self.token:
            h["Authorization"] = f"ApiKey {self.token}"
        return h

    def body(self, lines: list[bytes]) -> bytes:
        # create with _id = the record's hash: a batch resent after a lost answer is refused
        # (409) for what already arrived instead of being indexed twice, and ids of two
        # gateways sharing an index never collide (seq would).
        index = json.dumps(self.index).encode()
        return b"".join(b'{"create":{"_index":%s,"_id":"%s"}}\n%s\n' % (index, record_id(line).encode(), line)
                        for line in lines)

    def check(self, status: int, body: bytes) -> None:
        super().check(status, body)
        try:
            doc = json.loads(body)
        except ValueError:
            raise ExportError("elasticsearch answered something that is not JSON") from None
        if not isinstance(doc, dict) or not doc.get("errors"):
            return
        if not doc.get("items"):
            raise ExportError("elasticsearch reported errors without saying which documents")
        for item in doc["items"]:
            res = (item or {}).get("create") or {}
            if res.get("status", 200) // 100 != 2 and res.get("status") != 409:  # 409: it is there already
                err = res.get("error") or {}
                raise ExportError(f"elasticsearch refused a document: HTTP {res.get('status')} "
                                  f"{err.get('type') if isinstance(err, dict) else err}")


def _tls_context(ca: str | None) -> ssl.SSLContext:
    if ca and not os.path.isfile(ca):
        raise ExportError(f"CA file {ca} does not exist")
    return ssl.create_default_context(cafile=ca)  # verifies chain and host name
