"""SIEM export from a real gateway to real collectors on loopback: syslog over UDP,
TCP and TLS, Splunk HEC over HTTPS and Elasticsearch bulk over HTTP. A collector
outage loses nothing: the exporters resume from their last acknowledged seq."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
import socketserver
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pangate.export import transport
from pangate.export.transport import ExportError, from_url

HEC_TOKEN = "hec-" + secrets.token_hex(8)


class Collector:
    """Remembers every audit seq it received; tests wait on it."""

    def __init__(self, name: str):
        self.name = name
        self.seqs: set[int] = set()
        self.direct: list[dict] = []  # alerts sent directly (no seq)
        self.bad: list = []
        self.cond = threading.Condition()

    def got(self, rec: dict) -> None:
        with self.cond:
            if "seq" in rec:
                self.seqs.add(rec["seq"])
            else:
                self.direct.append(rec)
            self.cond.notify_all()

    def wait_all(self, last: int, timeout: float = 30) -> None:
        want = set(range(1, last + 1))
        with self.cond:
            assert self.cond.wait_for(lambda: want <= self.seqs, timeout), \
                f"{self.name}: missing seqs {sorted(want - self.seqs)[:20]}"


SD_SEQ = re.compile(rb'^\[meta sequenceId="(\d+)"\] ')


def syslog_json(msg: bytes) -> dict:
    """The record of one RFC 5424 message; its seq is also in the meta SD element."""
    parts = msg.split(b" ", 6)  # <pri>1 time host app pid msgid, then SD and the message
    assert parts[0].startswith(b"<") and parts[0].endswith(b">1") and parts[3] == b"pangate", parts[:6]
    rest = parts[6]
    m = SD_SEQ.match(rest)
    if m:
        rec = json.loads(rest[m.end():])
        assert int(m.group(1)) == rec["seq"], (m.group(1), rec["seq"])
        return rec
    assert rest.startswith(b"- "), rest[:40]
    rec = json.loads(rest[2:])
    assert "seq" not in rec and rec.get("direct")  # only alerts sent directly carry no seq
    return rec


class UdpSyslog(Collector):
    def __init__(self):
        super().__init__("syslog+udp")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                data = self.sock.recv(65535)
            except OSError:
                return
            self.got(syslog_json(data))

    def stop(self):
        self.sock.close()


class StreamSyslog(Collector):
    """Octet-counted RFC 5424 over TCP, or TLS when given a certificate. Restartable on its port."""

    def __init__(self, tls: tuple[str, str] | None = None):
        super().__init__("syslog+tls" if tls else "syslog+tcp")
        self.ctx = None
        if tls:
            self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ctx.load_cert_chain(*tls)
        self.port = 0
        self.start()

    def start(self):
        collector = self

        class Handler(socketserver.StreamRequestHandler):
            def setup(self):
                if collector.ctx:
                    self.request = collector.ctx.wrap_socket(self.request, server_side=True)
                collector.conns.append(self.request)
                super().setup()

            def handle(self):
                while True:
                    n = b""
                    while (c := self.rfile.read(1)) not in (b" ", b""):
                        n += c
                    if not n:
                        return
                    collector.got(syslog_json(self.rfile.read(int(n))))

            def finish(self):
                super().finish()
                if collector.ctx:  # the TLS wrapper owns the socket now: close it, as a collector does
                    self.request.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.conns = []
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        for c in self.conns:  # the gateway must see the collector go away
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass


class HttpCollector(Collector):
    """Splunk HEC (/services/collector) and Elasticsearch bulk (/_bulk), one connection per request."""

    def __init__(self, name: str, tls: tuple[str, str] | None = None):
        super().__init__(name)
        self.tls = tls
        self.port = 0
        self.start()

    def start(self):
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # no keep-alive: stopping the server really stops it

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/services/collector":
                    if self.headers.get("Authorization") != f"Splunk {HEC_TOKEN}":
                        collector.bad.append(self.headers.get("Authorization"))
                        return self._answer(401, {"text": "Invalid token", "code": 4})
                    for line in body.splitlines():
                        doc = json.loads(line)
                        event = doc["event"]
                        raw = line[line.index(b',"event":') + 9:-1]  # the audit line, as sent
                        assert doc["fields"]["pangate_id"] == hashlib.sha256(raw).hexdigest()
                        assert doc["fields"].get("pangate_seq") == event.get("seq")
                        collector.got(event)
                    return self._answer(200, {"text": "Success", "code": 0})
                lines = body.splitlines()
                for action, doc in zip(lines[::2], lines[1::2]):
                    rec = json.loads(doc)
                    assert json.loads(action)["create"] == {"_index": "pangate-audit",
                                                            "_id": hashlib.sha256(doc).hexdigest()}
                    collector.got(rec)
                return self._answer(200, {"errors": False, "items": []})

            def _answer(self, status, doc):
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*self.tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def collectors(pki):
    cs = {"udp": UdpSyslog(), "tcp": StreamSyslog(), "tls": StreamSyslog(tls=(pki.cert, pki.key)),
          "hec": HttpCollector("hec", tls=(pki.cert, pki.key)), "es": HttpCollector("es")}
    yield cs
    for c in cs.values():
        c.stop()


@pytest.fixture(scope="module")
def exporting(start_gateway, collectors, pki):
    c = collectors
    urls = [f"syslog+udp://127.0.0.1:{c['udp'].port}", f"syslog+tcp://127.0.0.1:{c['tcp'].port}",
            f"syslog+tls://localhost:{c['tls'].port}?ca={pki.ca_cert}",
            f"hec://localhost:{c['hec'].port}/services/collector?token_env=HEC_TOKEN&ca={pki.ca_cert}",
            f"es+http://127.0.0.1:{c['es'].port}/pangate-audit", "stdout:"]
    return start_gateway(env={"HEC_TOKEN": HEC_TOKEN}, options={"pangate_export": urls})


def _traffic(gw, upstream, mint, n: int) -> None:
    s = gw.session("reader", mint("reader"))
    for _ in range(n):
        r = s.get(f"https://localhost:{upstream.port}/v1/charges")
        assert r.status_code == 200
        gw.records_for(r.headers["X-Pangate-Request-Id"])


def _last_seq(gw) -> int:
    return max(r["seq"] for r in gw.audit_records())


def test_every_record_reaches_every_collector(exporting, collectors, upstream, mint):
    _traffic(exporting, upstream, mint, 5)
    last = _last_seq(exporting)
    for c in collectors.values():
        c.wait_all(last)
    assert not collectors["hec"].bad
    exporting.log.wait_for(r'^\{.*"event":"gateway_started"')  # stdout: JSON lines
    assert HEC_TOKEN not in exporting.log.text()
    deadline = time.monotonic() + 10  # syslog streams save once the collector confirmed (idle close)
    while len(states := sorted(p.name for p in exporting.audit_dir.glob(".export-*.state"))) < 6:
        assert time.monotonic() < deadline, states
        time.sleep(0.05)


def test_collector_outage_loses_nothing(exporting, collectors, upstream, mint):
    down = [collectors[k] for k in ("tcp", "tls", "hec", "es")]
    for c in down:
        c.stop()
    mark = exporting.log.mark()
    _traffic(exporting, upstream, mint, 4)  # the data path does not wait for the collectors
    for name in ("syslog-tcp", "syslog-tls", "hec", "es-http"):
        exporting.log.wait_for(rf"pangate ALERT export_failing.*'exporter': '{name}", start=mark)
    last = _last_seq(exporting)
    for c in down:
        assert last not in c.seqs
        c.start()  # same port again
    for c in down:
        c.wait_all(last)


def test_resume_after_restart_from_state(start_gateway, collectors, upstream, mint, pki):
    """A gateway restarted on the same audit dir resends nothing acked and loses nothing."""
    c = collectors["es"]
    url = f"es+http://127.0.0.1:{c.port}/pangate-audit"
    gw = start_gateway(options={"pangate_export": [url]})
    _traffic(gw, upstream, mint, 2)
    c.wait_all(_last_seq(gw))
    c.stop()
    assert gw.stop() == 0
    state = json.loads(next(gw.audit_dir.glob(".export-*.state")).read_text())
    assert 0 < state["acked_seq"] <= _last_seq(gw)
    c.seqs.clear()
    c.start()
    from harness import Gateway
    gw2 = Gateway(gw.workdir, gw.policy_path.read_text(), gw.confdir, pki.ca_cert,
                  env={"UPSTREAM_KEY": "x"}, options={"pangate_export": [url]})
    try:
        gw2.log.wait_for(r"pangate gateway live")
        last = _last_seq(gw2)
        with c.cond:
            assert c.cond.wait_for(lambda: set(range(state["acked_seq"] + 1, last + 1)) <= c.seqs, 30)
        assert min(c.seqs) == state["acked_seq"] + 1  # resumed after the last ack, nothing resent
    finally:
        gw2.stop()


@pytest.mark.parametrize("url,why", [
    ("ftp://x:1", "unknown export destination"),
    ("syslog+tcp://127.0.0.1", "needs HOST:PORT"),
    ("syslog+tls://h:1?ca=/nonexistent.pem", "does not exist"),
    ("hec://h:1/services/collector", "token_env"),
    ("hec://h:1/services/collector?token_env=PANGATE_NO_SUCH_VAR", "is not set"),
    ("es://h:9200", "index name"),
    ("hec://user:pw@h:1/x?token_env=HOME", "no credentials"),
    ("hec+http://collector.example:8088/services/collector?token_env=HOME", "only to a loopback"),
    ("es+http://collector.example:9200/pangate", "only to a loopback"),
])
def test_bad_export_urls_are_refused(url, why):
    with pytest.raises(ExportError, match=why):
        from_url(url)


def test_export_urls_make_their_transports(pki, monkeypatch):
    monkeypatch.setenv("PANGATE_TEST_TOKEN", "t0k")
    hec = from_url(f"hec://h.example:8088/services/collector?token_env=PANGATE_TEST_TOKEN&ca={pki.ca_cert}")
    assert isinstance(hec, transport.SplunkHEC)
    assert (hec.url, hec.ca, hec.token) == ("https://h.example:8088/services/collector", pki.ca_cert, "t0k")
    es = from_url("es+http://[::1]:9200/pangate")
    assert isinstance(es, transport.ElasticBulk) and (es.url, es.index, es.token) == ("http://[::1]:9200/_bulk",
                                                                                      "pangate", None)
    tls = from_url(f"syslog+tls://localhost:6514?ca={pki.ca_cert}")
    assert isinstance(tls, transport.SyslogStream) and tls.ctx is not None and tls.ctx.check_hostname
    tcp = from_url("syslog+tcp://127.0.0.1:514")
    assert isinstance(tcp, transport.SyslogStream) and tcp.ctx is None
    assert isinstance(from_url("syslog+udp://127.0.0.1:514"), transport.SyslogUDP)
    assert isinstance(from_url("stdout:"), transport.Stdout)


def test_a_new_sink_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(transport, "TRANSPORTS", dict(transport.TRANSPORTS))
    sent = []

    @transport.transport("memory")
    class Memory:
        def __init__(self, target):
            self.target = target

        @classmethod
        def from_url(cls, url):
            return cls(transport.Target.parse(url))

        def send(self, lines):
            sent.extend(lines)

        def close(self):
            pass

    sink = from_url("memory://127.0.0.1:1/x")
    assert isinstance(sink, Memory) and (sink.target.host, sink.target.port) == ("127.0.0.1", 1)
    with pytest.raises(ExportError, match="needs HOST:PORT"):  # the shared URL checks apply to it too
        from_url("memory://127.0.0.1")
    with pytest.raises(ValueError, match="registered twice"):
        transport.transport("memory")(Memory)


def test_bad_export_option_stops_the_gateway(start_gateway):
    with pytest.raises(TimeoutError) as e:
        start_gateway(options={"pangate_export": "ftp://127.0.0.1:1"})
    assert "unknown export destination" in str(e.value)


def test_http_transport_verifies_tls(collectors, pki, monkeypatch):
    """The collector's certificate is checked against ?ca= or the system roots, never the environment."""
    port = collectors["hec"].port
    monkeypatch.setenv("HEC_TOKEN", HEC_TOKEN)
    line = json.dumps({"seq": 10**9, "event": "probe"}).encode()
    good = from_url(f"hec://localhost:{port}/services/collector?token_env=HEC_TOKEN&ca={pki.ca_cert}")
    good.send([line])
    good.close()
    assert 10**9 in collectors["hec"].seqs
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_cert)  # ignored: trust comes from the URL only
    untrusted = from_url(f"hec://localhost:{port}/services/collector?token_env=HEC_TOKEN")
    with pytest.raises(ExportError, match="SSLError.*CERTIFICATE_VERIFY_FAILED"):
        untrusted.send([line])
