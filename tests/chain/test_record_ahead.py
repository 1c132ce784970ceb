"""kill -9 under load: what reached the upstream, or the client, without an audit record.

Strict mode (`pangate_audit_strict`): an allowed request's `intent` record
is durable before it is forwarded, so no request may reach the upstream
without one, however the gateway dies. Default mode: records are
group-committed within pangate_audit_flush_ms, so what a crash may lose is
bounded by that window: only responses delivered within it before the kill
may lack a record.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

POLICY = """
version: 1
issuers:
  pangate:
    type: pangate
    public_key_file: {pubkey}
identities:
  writer:
    issuer: pangate
    roles: [w]
roles:
  w:
    allow:
      - {{destination: sink, methods: [POST], paths: ["/k/*"]}}
destinations:
  sink: {{host: localhost, port: {port}, addresses: [127.0.0.1/32]}}
"""
CLIENTS = 6


class Sink:
    """An HTTPS upstream that remembers every path it received (each request's path is unique)."""

    def __init__(self, pki):
        seen = self.seen = set()
        lock = self.lock = threading.Lock()

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    seen.add(self.path)  # the upstream effect: it happened
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(pki.cert, pki.key)
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def sink(pki):
    s = Sink(pki)
    yield s
    s.close()


def _records(gw) -> list[dict]:
    """Every whole record on disk (a kill -9 may leave the last line half-written)."""
    out = []
    for f in sorted(gw.audit_dir.glob("*.jsonl")):
        for line in f.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _load_and_kill(gw, sink, token: str, after: int) -> tuple[list, float]:
    """CLIENTS loops of POSTs to unique paths; kill -9 the gateway once `after` responses came back.

    Returns ([(path, delivered_at or None)], kill time)."""
    results: list = []
    lock = threading.Lock()
    stop = threading.Event()
    done = threading.Semaphore(0)
    delivered = [0]

    def loop():
        s = gw.session("writer", token)
        while not stop.is_set():
            path = f"/k/{uuid.uuid4().hex}"
            try:
                r = s.post(f"https://localhost:{sink.port}{path}", data=b"x" * 64, timeout=20)
                at = time.monotonic() if r.status_code == 200 else None
            except requests.RequestException:
                at = None
            with lock:
                results.append((path, at))
                if at is not None:
                    delivered[0] += 1
                    if delivered[0] == after:
                        done.release()
        done.release()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    assert done.acquire(timeout=120), "the load never got going"
    killed_at = time.monotonic()
    os.killpg(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    return results, killed_at


def test_strict_mode_kill_9_leaves_nothing_upstream_without_a_record(start_gateway, token_key, sink, mint):
    gw = start_gateway(POLICY.format(pubkey=token_key + ".pub", port=sink.port),
                       options={"pangate_audit_strict": "true"})
    results, _ = _load_and_kill(gw, sink, mint("writer"), after=60)
    recorded = {r["destination"]["path"] for r in _records(gw) if r.get("event") in ("intent", "request")}
    with sink.lock:
        upstream = {p for p, _ in results if p in sink.seen}
    assert len(upstream) >= 60
    missing = sorted(upstream - recorded)
    assert not missing, f"{len(missing)} requests reached the upstream with no record: {missing[:5]}"
    intents = [r for r in _records(gw) if r.get("event") == "intent"]
    assert intents and all(r["identity"]["name"] == "writer" and r["rule"] == "w/0" for r in intents)


def test_default_mode_kill_9_loses_at_most_the_group_commit_window(start_gateway, token_key, sink, mint):
    flush_ms = 50
    gw = start_gateway(POLICY.format(pubkey=token_key + ".pub", port=sink.port),
                       options={"pangate_audit_flush_ms": str(flush_ms)})
    results, killed_at = _load_and_kill(gw, sink, mint("writer"), after=60)
    recorded = {r["destination"]["path"] for r in _records(gw) if r.get("event") == "request"}
    lost = [(p, at) for p, at in results if at is not None and p not in recorded]
    # The bound (README, Durability): only responses delivered within the group-commit window
    # before the crash (plus the writer's scheduling on a loaded machine) may lack their record.
    window = flush_ms / 1000 + 0.5
    late = [killed_at - at for _, at in lost if killed_at - at > window]
    print(f"default mode: {len(lost)} of {sum(1 for _, at in results if at)} delivered responses lost their record")
    assert not late, f"{len(late)} responses lost their record though delivered {max(late):.2f}s before the kill"
    assert len(lost) <= CLIENTS * 4, lost
