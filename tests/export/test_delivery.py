"""Delivery to SIEM collectors counts only what the collector acknowledged: a syslog collector that
hangs and is killed loses nothing (what was in flight is resent, repeats carry their seq), a slow
HEC gets each record once, and alerts about the audit trail reach the collectors while the trail
itself cannot be written."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pangate.audit.keys import load_or_create_signing_key
from pangate.audit.log import AuditWriter
from pangate.export.delivery import DirectAlerts, Exporter
from pangate.export.transport import ExportError, from_url, record_id

from conftest import UPSTREAM_SECRET, policy_text
from harness import Gateway

HERE = Path(__file__).parent
HEC_TOKEN = "hec-delivery-token"


class CollectorProcess:
    """tests/export/syslog_collector.py as a real process, and the seqs it printed."""

    def __init__(self, port: int = 0):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "syslog_collector.py"), str(port)],
                                     stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        assert first.startswith("port "), first
        self.port = int(first.split()[1])
        self.seqs: collections.Counter = collections.Counter()
        self.direct: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            kind, _, value = line.strip().partition(" ")
            with self.cond:
                if kind == "seq":
                    self.seqs[int(value)] += 1
                else:
                    self.direct.append(value)
                self.cond.notify_all()

    def wait_for(self, pred, timeout: float = 30) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self), timeout), f"collector saw {len(self.seqs)} seqs"

    def kill(self):
        self.proc.kill()
        self.proc.wait(5)


def _prefilled_workdir(tmp_path_factory, n: int) -> tuple[Path, int]:
    """A gateway workdir whose audit trail already holds n bulky records: enough to fill every
    socket buffer between the gateway and a collector that stopped reading."""
    workdir = tmp_path_factory.mktemp("gateway")
    key = load_or_create_signing_key(str(workdir / "audit-signing.key"))
    with AuditWriter(str(workdir / "audit"), key, fsync=False) as w:
        for i in range(n):
            w.append({"event": "request", "outcome": "allowed", "identity": {"name": "reader"},
                      "note": f"record {i} " + "x" * 400})
        last = w.last_seq + 2  # audit_stop and the close checkpoint
    return workdir, last


def test_hung_then_killed_syslog_collector_loses_nothing(tmp_path_factory, confdir, pki, token_key, upstream):
    workdir, last = _prefilled_workdir(tmp_path_factory, 3000)
    hung = CollectorProcess()
    port = hung.port
    os.kill(hung.proc.pid, signal.SIGSTOP)  # hangs: accepts (in the kernel) but never reads
    gw = Gateway(workdir, policy_text(token_key, upstream.port), confdir, pki.ca_cert,
                 env={"UPSTREAM_KEY": UPSTREAM_SECRET},
                 options={"pangate_export": [f"syslog+tcp://127.0.0.1:{port}?confirm_timeout=1"]})
    new = None
    try:
        # Everything fits in socket buffers, and nothing is confirmed: the gateway says so.
        gw.log.wait_for(r"pangate ALERT export_failing.*syslog-tcp", timeout=20)
        state = gw.audit_dir / f".export-syslog-tcp-127-0-0-1-{port}.state"
        assert not state.exists() or json.loads(state.read_text())["acked_seq"] < last
        hung.proc.send_signal(signal.SIGKILL)  # a stopped process dies too; its buffers with it
        hung.proc.wait(5)
        new = CollectorProcess(port)
        new.wait_for(lambda c: set(range(1, last + 1)) <= set(c.seqs), timeout=40)
        # Every record arrived; a repeat is possible only for what was in flight, and shows by seq.
        repeats = sum(n - 1 for n in new.seqs.values())
        assert repeats <= Exporter.MAX_IN_FLIGHT + Exporter.BATCH, repeats
        deadline = time.monotonic() + 10
        while not state.exists() or json.loads(state.read_text())["acked_seq"] < last:
            assert time.monotonic() < deadline, "the new collector's confirmation was never saved"
            time.sleep(0.05)
    finally:
        gw.stop()
        for c in (hung, new):
            if c is not None and c.proc.poll() is None:
                c.kill()


class SlowHec(ThreadingHTTPServer):
    """A Splunk HEC over HTTPS that answers each batch only after `delay` seconds."""

    daemon_threads = True

    def __init__(self, tls, delay: float):
        import ssl

        self.delay, self.events, self.posts = delay, collections.Counter(), 0
        self.ids: dict[int, str] = {}
        self.cond = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Authorization"] == f"Splunk {HEC_TOKEN}"
                time.sleep(server.delay)  # indexing takes a while
                with server.cond:
                    server.posts += 1
                    for line in body.splitlines():
                        doc = json.loads(line)
                        seq = doc["event"].get("seq")
                        if seq is not None:
                            server.events[seq] += 1
                            server.ids[seq] = doc["fields"]["pangate_id"]
                    server.cond.notify_all()
                data = b'{"text":"Success","code":0}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*tls)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


def test_slow_hec_gets_each_record_once(start_gateway, pki, upstream, mint, monkeypatch):
    hec = SlowHec((pki.cert, pki.key), delay=2.5)
    url = f"hec://localhost:{hec.port}/services/collector?token_env=HEC_TOKEN&ca={pki.ca_cert}"
    # The answer takes longer than a too-short timeout would wait: that resends (same ids)...
    monkeypatch.setenv("HEC_TOKEN", HEC_TOKEN)
    short = from_url(url + "&timeout=1")
    with pytest.raises(ExportError, match="ReadTimeout"):
        short.send([json.dumps({"seq": 10**6, "event": "probe"}).encode()])
    short.close()
    # ...so the gateway's exporter waits as long as configured, and nothing is sent twice.
    gw = start_gateway(env={"HEC_TOKEN": HEC_TOKEN}, options={"pangate_export": [url + "&timeout=10"]})
    s = gw.session("reader", mint("reader"))
    for _ in range(3):
        assert s.get(f"https://localhost:{upstream.port}/v1/charges").status_code == 200
    last = max(r["seq"] for r in gw.audit_records())
    with hec.cond:
        assert hec.cond.wait_for(lambda: set(range(1, last + 1)) <= set(hec.events), 30), sorted(hec.events)
    assert gw.stop() == 0
    lines = {json.loads(line)["seq"]: line.encode() for line in gw.audit_lines()}
    with hec.cond:
        twice = {seq: n for seq, n in hec.events.items() if n != 1 and seq != 10**6}
        assert not twice, twice
        for seq in range(1, last + 1):  # the stable id is the record's hash
            assert hec.ids[seq] == record_id(lines[seq])
    hec.shutdown()


def test_audit_outage_alerts_reach_the_collector_directly(tmp_path_factory, confdir, pki, token_key, upstream,
                                                          mint):
    collector = CollectorProcess()
    workdir = tmp_path_factory.mktemp("gateway")
    gw = Gateway(workdir, policy_text(token_key, upstream.port), confdir, pki.ca_cert,
                 env={"UPSTREAM_KEY": UPSTREAM_SECRET},
                 options={"pangate_export": [f"syslog+tcp://127.0.0.1:{collector.port}"],
                          "pangate_audit_strict": "true"})
    away = gw.audit_dir.with_name("audit.away")
    try:
        s = gw.session("reader", mint("reader"))
        assert s.get(f"https://localhost:{upstream.port}/v1/charges").status_code == 200
        os.rename(gw.audit_dir, away)
        gw.audit_dir.write_text("not a directory")
        assert s.get(f"https://localhost:{upstream.port}/v1/charges").status_code == 503
        # The trail cannot be written, so the SIEM cannot learn it from the trail: it is told directly.
        collector.wait_for(lambda c: "audit_write_failed" in c.direct, timeout=15)
        gw.audit_dir.unlink()
        os.rename(away, gw.audit_dir)
        collector.wait_for(lambda c: "audit_write_recovered" in c.direct, timeout=15)
    finally:
        if gw.audit_dir.is_file():
            gw.audit_dir.unlink()
            os.rename(away, gw.audit_dir)
        gw.stop()
        collector.kill()
    assert collector.direct.count("audit_write_failed") == 1  # sent once, not once per retry


def test_direct_alerts_fan_out_bounded():
    alerts = DirectAlerts()
    a, b = alerts.subscribe(), alerts.subscribe()
    for i in range(DirectAlerts.MAX + 5):
        alerts.push("audit_write_failed", alert=True, reason=f"r{i}")
    assert len(a) == len(b) == DirectAlerts.MAX and alerts.dropped == 10
    rec = json.loads(a[-1])
    assert rec["direct"] is True and "seq" not in rec and rec["reason"] == f"r{DirectAlerts.MAX + 4}"
    alerts.unsubscribe(a)
    alerts.push("x")
    assert len(b) == DirectAlerts.MAX and a[-1] != b[-1]


class FakeBulk:
    """Answers for ElasticBulk.check: a repeat (409) counts as delivered, any other refusal does not."""

    @staticmethod
    def answer(*statuses) -> bytes:
        return json.dumps({"errors": any(s != 201 for s in statuses),
                           "items": [{"create": {"status": s, "error": {"type": "x"} if s >= 300 else None}}
                                     for s in statuses]}).encode()


def test_elasticsearch_repeat_is_delivered_other_refusals_are_not():
    es = from_url("es+http://127.0.0.1:9200/pangate")
    line = json.dumps({"seq": 1, "event": "request"}, separators=(",", ":")).encode()
    assert b'{"create":{"_index":"pangate","_id":"%s"}}' % record_id(line).encode() in es.body([line])
    es.check(200, FakeBulk.answer(201, 409, 409))
    with pytest.raises(ExportError, match="HTTP 429"):
        es.check(200, FakeBulk.answer(201, 409, 429))
    with pytest.raises(ExportError, match="without saying"):
        es.check(200, b'{"errors": true}')


def test_unconfirmed_stream_is_resent_in_process(tmp_path):
    """The exporter keeps what a stream transport has not confirmed and sends it again."""
    d = tmp_path / "audit"
    with AuditWriter(str(d), Ed25519PrivateKey.generate(), fsync=False) as w:
        for i in range(10):
            w.append({"event": "request", "i": i})
    last = w.last_seq
    got, confirms = [], iter([False, True])

    class Stream:
        confirms = True
        confirm_timeout = 0.1

        def send(self, lines):
            got.extend(json.loads(line)["seq"] for line in lines)

        def check(self):
            pass

        def confirm(self, timeout=None):
            return next(confirms, True)

        def close(self):
            pass

    exp = Exporter("mem://x", str(d), Stream(), alerts=None)
    exp.CONFIRM_IDLE = 0.05
    exp.start()
    deadline = time.monotonic() + 10
    while exp.acked < last:
        assert time.monotonic() < deadline, (exp.acked, got)
        time.sleep(0.02)
    exp.stop()
    assert got == list(range(1, last + 1)) * 2 and exp.resent == last  # once unconfirmed, then again
    assert json.loads(open(exp.state_path).read())["acked_seq"] == last
