"""Human approval end to end: held flows in a real mitmweb (driven through its HTTP API) and a
real mitmdump (driven by the real `pangate approve|deny` CLI), a webhook receiver, the audit trail."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pangate.dev.demo_upstream import TEST_PANS, charges
from pangate.pan.engine import find_pans
from pangate.identity.tokens import keygen

from conftest import UPSTREAM_SECRET, policy_text
from harness import VENV_BIN, WebAPI

PAN = TEST_PANS[0]
APPROVALS = """
approvers:
  alice: {{groups: [leads], public_key_file: {keys}/alice.key.pub}}
  bob: {{groups: [leads], public_key_file: {keys}/bob.key.pub}}
  writer: {{groups: [leads], public_key_file: {keys}/writer.key.pub}}   # a person named like the workload
approvals:
  refund-run:
    identities: [writer]
    destination: upstream
    methods: [POST]
    paths: ["/v1/refunds"]
    approvers: ["group:leads"]
    timeout: 20s
    ui_resume: true
  quick-export:
    identities: [writer]
    methods: [POST]
    paths: ["/v1/exports"]
    approvers: [alice]
    timeout: 2s
  vault-write:
    identities: [writer]
    methods: [PUT]
    paths: ["/v1/vault/**"]
    approvers: ["group:leads"]
    required: 2
    timeout: 20s
  bulk-export:
    roles: [charges-reader]
    destination: upstream
    paths: ["/v1/charges"]
    query: {{limit: "> 50"}}
    approvers: [alice, bob]
    mode: grant
    grant_window: 3s
    timeout: 20s
"""


class Receiver(ThreadingHTTPServer):
    """A webhook receiver: keeps every JSON it gets, signals each approval id."""

    def __init__(self):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()
                with self.server.cond:
                    self.server.got.append(doc)
                    self.server.cond.notify_all()

        super().__init__(("127.0.0.1", 0), H)
        self.got: list[dict] = []
        self.cond = threading.Condition()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def wait_for(self, approval_id: str, timeout: float = 10) -> dict:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(d["approval_id"] == approval_id for d in self.got), timeout)
            assert ok, f"no webhook for {approval_id}: {self.got}"
            return next(d for d in self.got if d["approval_id"] == approval_id)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("approver-keys")
    for name in ("alice", "bob", "writer"):
        keygen(d / f"{name}.key")
    return d


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.shutdown()


def _start(start_gateway, token_key, upstream, keys, receiver, tool):
    upstream.routes["/v1/refunds"] = lambda h, seen: (200, json.dumps({"refunded": charges(2)}).encode(),
                                                      "application/json", {})
    gw = start_gateway(policy=policy_text(token_key, upstream.port, APPROVALS.format(keys=keys)), tool=tool,
                       options={"pangate_control_listen": "127.0.0.1:0",
                                "pangate_approval_webhook": f"http://127.0.0.1:{receiver.server_port}/hook"})
    gw.control = gw.log.wait_for(r"pangate control endpoint listening at (http://\S+)").group(1)
    return gw


@pytest.fixture(scope="module")
def web(start_gateway, token_key, upstream, keys, receiver):
    return _start(start_gateway, token_key, upstream, keys, receiver, "mitmweb")


@pytest.fixture(scope="module")
def dump(start_gateway, token_key, upstream, keys, receiver):
    return _start(start_gateway, token_key, upstream, keys, receiver, "mitmdump")


def _url(upstream, path):
    return f"https://localhost:{upstream.port}{path}"


def _send(pool, gw, upstream, mint, method, path, identity="writer", **kw):
    """Start a client request in a thread; return (future, approval id, request id) once it is held."""
    mark = gw.log.mark()
    s = gw.session(identity, mint(identity))
    fut = pool.submit(s.request, method, _url(upstream, path), timeout=30, **kw)
    m = gw.log.wait_for(r"pangate approval held id=(\S+) request_id=(\S+)", start=mark)
    return fut, m.group(1), m.group(2)


def _flow_id(api, approval_id):
    for f in api.get("/flows").json():
        if approval_id in (f.get("comment") or ""):
            return f["id"], f
    raise AssertionError(f"no mitmweb flow shows {approval_id}")


def _events(gw, kind, approval_id, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in gw.audit_records() if r.get("event") == kind and r.get("approval_id") == approval_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _flow_record(gw, request_id, timeout=10):
    """The flow's own audit record (the approval events carry its request id too)."""
    gw.decision(request_id, timeout)
    deadline = time.monotonic() + timeout
    while True:
        recs = [r for r in gw.audit_records() if r.get("request_id") == request_id and r["event"] == "request"]
        if recs or time.monotonic() > deadline:
            assert recs, f"no flow record for {request_id}"
            return recs[0]
        time.sleep(0.05)


def _cli(gw, keys, *args, who="alice"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANGATE_")}
    env.update(PANGATE_APPROVER=who, PANGATE_APPROVER_KEY_FILE=str(keys / f"{who}.key"), PANGATE_CONTROL=gw.control)
    return subprocess.run([str(VENV_BIN / "pangate"), *args], capture_output=True, text=True, env=env, timeout=30)


def _no_pan(text: str):
    assert PAN not in text and not find_pans(text.encode()), text[:2000]


# ----------------------------------------------------------------------------- mitmweb

def test_mitmweb_resume_approves_and_nothing_raw_is_visible(web, upstream, mint, receiver):
    api = WebAPI(web)
    with ThreadPoolExecutor(1) as pool:
        fut, aid, rid = _send(pool, web, upstream, mint, "POST", "/v1/refunds?card=" + PAN,
                              json={"card": PAN, "amount": 10})
        fid, f = _flow_id(api, aid)
        assert f["intercepted"] and f["marked"] and "writer" in f["comment"] and "refund-run" in f["comment"]
        # While held: the list, the request body and the URL show no card number, no credential.
        _no_pan(api.get("/flows").text)
        _no_pan(api.get(f"/flows/{fid}/request/content.data").text)
        assert UPSTREAM_SECRET not in api.get("/flows").text
        hook = receiver.wait_for(aid)
        assert hook["requester"] == "writer" and hook["rule"] == "refund-run" and aid in hook["text"]
        _no_pan(json.dumps(hook))
        api.call("POST", f"/flows/{fid}/resume")
        r = fut.result()
    assert r.status_code == 200, r.text
    _no_pan(r.text)  # the response was masked for the client
    seen = [x for x in upstream.received if x["path"].startswith("/v1/refunds")][-1]
    assert PAN.encode() in seen["body"] and PAN in seen["path"]  # the real request went upstream
    assert seen["headers"]["Authorization"] == f"Bearer {UPSTREAM_SECRET}"
    # After completion: request and response as mitmweb shows them are masked, no credential.
    _no_pan(api.get("/flows").text)
    _no_pan(api.get(f"/flows/{fid}/request/content.data").text)
    _no_pan(api.get(f"/flows/{fid}/response/content.data").text)
    assert UPSTREAM_SECRET not in api.get("/flows").text
    granted = _events(web, "approval_granted", aid)
    assert granted and granted[0]["requester"] == "writer" and granted[0]["approver"] == "mitmweb-ui"
    rec = _flow_record(web, rid)
    assert rec["approval"]["status"] == "granted" and rec["approval"]["decided_by"] == "mitmweb-ui"
    assert rec["identity"]["name"] == "writer" and rec["status"] == 200


def test_mitmweb_kill_answers_403_at_once(web, upstream, mint):
    api = WebAPI(web)
    with ThreadPoolExecutor(1) as pool:
        fut, aid, rid = _send(pool, web, upstream, mint, "POST", "/v1/refunds", json={"n": 1})
        fid, _ = _flow_id(api, aid)
        t0 = time.monotonic()
        api.call("POST", f"/flows/{fid}/kill")
        r = fut.result(timeout=5)
    assert time.monotonic() - t0 < 3
    assert r.status_code == 403 and r.json()["code"] == "approval_denied"
    assert "denied by reviewer mitmweb-ui" in r.json()["reason"]
    denied = _events(web, "approval_denied", aid)
    assert denied and denied[0]["requester"] == "writer" and denied[0]["approver"] == "mitmweb-ui"
    assert _flow_record(web, rid)["approval"]["status"] == "denied"


def test_mitmweb_left_alone_times_out(web, upstream, mint):
    with ThreadPoolExecutor(1) as pool:
        fut, aid, rid = _send(pool, web, upstream, mint, "POST", "/v1/exports", json={})
        r = fut.result(timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "approval_timed_out"
    out = _events(web, "approval_timed_out", aid)
    assert out and out[0]["requester"] == "writer" and out[0]["approver"] is None
    assert not any(x["path"] == "/v1/exports" for x in upstream.received)


def test_mitmweb_edit_then_resume_is_denied(web, upstream, mint):
    api = WebAPI(web)
    with ThreadPoolExecutor(1) as pool:
        fut, aid, rid = _send(pool, web, upstream, mint, "POST", "/v1/refunds", json={"amount": 10},
                              headers={"X-Mark": "edit-me"})
        fid, _ = _flow_id(api, aid)
        api.call("PUT", f"/flows/{fid}", json={"request": {"content": '{"amount": 99999}'}})
        api.call("POST", f"/flows/{fid}/resume")
        r = fut.result(timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "approval_denied" and "edited" in r.json()["reason"]
    assert not any(x["headers"].get("X-Mark") == "edit-me" for x in upstream.received)
    denied = _events(web, "approval_denied", aid)
    assert denied and "edited" in denied[0]["reason"] and denied[0]["requester"] == "writer"


def test_mitmweb_resume_without_ui_resume_keeps_holding(web, upstream, mint, keys):
    api = WebAPI(web)
    with ThreadPoolExecutor(1) as pool:
        mark = web.log.mark()
        fut, aid, rid = _send(pool, web, upstream, mint, "PUT", "/v1/vault/k1", json={"v": 1})
        fid, _ = _flow_id(api, aid)
        api.call("POST", f"/flows/{fid}/resume")
        web.log.wait_for(r"mitmweb resume ignored", start=mark)
        assert _events(web, "approval_ui_resume_refused", aid)
        assert not fut.done() and api.get("/flows").json() and _flow_id(api, aid)[1]["intercepted"]
        res = _cli(web, keys, "deny", aid, "--reason", "not today", who="bob")
        assert res.returncode == 0, res.stderr
        r = fut.result(timeout=10)
    assert r.status_code == 403 and "bob" in r.json()["reason"]


def test_mitmweb_replay_is_a_new_unauthenticated_request(web, upstream, mint):
    api = WebAPI(web)
    r = web.session("writer", mint("writer")).post(_url(upstream, "/echo"), json={"x": 1},
                                                     headers={"X-Mark": "replay-src"})
    assert r.status_code == 200
    src = [f for f in api.get("/flows").json()
           if f["type"] == "http" and f["request"]["path"] == "/echo" and f["request"]["method"] == "POST"][-1]
    mark = web.log.mark()
    api.call("POST", f"/flows/{src['id']}/replay")
    m = web.log.wait_for(r"pangate decision id=(\S+) identity=(\S+) outcome=(\S+)", start=mark)
    assert m.group(2) == "None" and m.group(3) == "token_refused"
    rec = _flow_record(web, m.group(1))
    assert rec["identity"] is None and rec["replayed_from"] == r.headers["X-Pangate-Request-Id"]
    assert sum(x["headers"].get("X-Mark") == "replay-src" for x in upstream.received) == 1


# ----------------------------------------------------------------------------- mitmdump + CLI

def test_cli_approve_and_list(dump, upstream, mint, keys, receiver):
    with ThreadPoolExecutor(1) as pool:
        fut, aid, rid = _send(pool, dump, upstream, mint, "POST", "/v1/refunds", json={"card": PAN})
        listed = _cli(dump, keys, "approvals")
        assert listed.returncode == 0 and aid in listed.stdout and "refund-run" in listed.stdout, listed
        _no_pan(listed.stdout)
        receiver.wait_for(aid)
        res = _cli(dump, keys, "approve", aid)
        assert res.returncode == 0 and "approved" in res.stdout, res
        r = fut.result(timeout=10)
    assert r.status_code == 200
    g = _events(dump, "approval_granted", aid)
    assert g and g[0]["approver"] == "alice" and g[0]["requester"] == "writer" and g[0]["request_id"] == rid
    assert _flow_record(dump, rid)["approval"]["decided_by"] == "alice"


def test_cli_deny(dump, upstream, mint, keys):
    with ThreadPoolExecutor(1) as pool:
        fut, aid, rid = _send(pool, dump, upstream, mint, "POST", "/v1/refunds", json={})
        res = _cli(dump, keys, "deny", aid, "--reason", "refund run not scheduled", who="bob")
        assert res.returncode == 0 and "denied" in res.stdout, res
        r = fut.result(timeout=10)
    assert r.status_code == 403
    assert r.json()["reason"] == "denied by reviewer bob: refund run not scheduled"
    d = _events(dump, "approval_denied", aid)
    assert d and d[0]["approver"] == "bob" and d[0]["requester"] == "writer"


def test_requester_cannot_approve_itself_and_two_approvers_needed(dump, upstream, mint, keys):
    with ThreadPoolExecutor(1) as pool:
        fut, aid, rid = _send(pool, dump, upstream, mint, "PUT", "/v1/vault/k2", json={"v": 2})
        res = _cli(dump, keys, "approve", aid, who="writer")
        assert res.returncode == 1 and "four eyes" in res.stderr, res
        assert _events(dump, "approval_self_refused", aid)
        res = _cli(dump, keys, "approve", aid, who="alice")
        assert res.returncode == 0 and "1/2" in res.stdout, res
        res = _cli(dump, keys, "approve", aid, who="alice")
        assert res.returncode == 1 and "already approved" in res.stderr, res
        assert not fut.done()
        res = _cli(dump, keys, "approve", aid, who="bob")
        assert res.returncode == 0 and "approved" in res.stdout, res
        r = fut.result(timeout=10)
    assert r.status_code == 200
    g = _events(dump, "approval_granted", aid)
    assert g and g[0]["approvers"] == ["alice", "bob"] and g[0]["requester"] == "writer"


def test_forged_approval_is_refused(dump, upstream, mint, keys, tmp_path):
    keygen(tmp_path / "mallory.key")
    with ThreadPoolExecutor(1) as pool:
        fut, aid, rid = _send(pool, dump, upstream, mint, "POST", "/v1/refunds", json={})
        env = {**os.environ, "PANGATE_APPROVER": "alice", "PANGATE_APPROVER_KEY_FILE": str(tmp_path / "mallory.key"),
               "PANGATE_CONTROL": dump.control}
        res = subprocess.run([str(VENV_BIN / "pangate"), "approve", aid], capture_output=True, text=True, env=env)
        assert res.returncode == 1 and "bad signature" in res.stderr, res
        assert not fut.done()
        assert _cli(dump, keys, "deny", aid, "--reason", "cleanup", who="bob").returncode == 0
        assert fut.result(timeout=10).status_code == 403


def test_grant_mode_just_in_time(dump, upstream, mint, keys, receiver):
    s = dump.session("reader", mint("reader"))
    url = _url(upstream, "/v1/charges?limit=80")
    r = s.get(url)
    assert r.status_code == 403 and r.json()["code"] == "approval_required"
    aid = r.headers["X-Pangate-Approval-Id"]
    assert aid in r.json()["reason"]
    assert s.get(url).headers["X-Pangate-Approval-Id"] == aid  # asked once, not twice
    assert receiver.wait_for(aid)["mode"] == "grant"
    assert s.get(_url(upstream, "/v1/charges?limit=10")).status_code == 200  # below the rule: no approval
    res = _cli(dump, keys, "approve", aid, who="bob")
    assert res.returncode == 0, res
    r = s.get(url)
    assert r.status_code == 200
    rec = _flow_record(dump, r.headers["X-Pangate-Request-Id"])
    assert rec["approval"]["decided_by"] == "bob" and rec["approval"]["requester"] == "reader"
    assert dump.session("writer", mint("writer")).get(url).status_code == 403  # another identity: no grant
    deadline = time.monotonic() + 10
    while (r := s.get(url)).status_code == 200:  # the window (3s) closes
        assert time.monotonic() < deadline, "the grant never expired"
    assert r.status_code == 403 and r.headers["X-Pangate-Approval-Id"] != aid
    g = _events(dump, "approval_granted", aid)
    assert g and g[0]["approver"] == "bob" and g[0]["requester"] == "reader"


def test_approval_records_hold_no_pan_or_secret(dump, web):
    for gw in (dump, web):
        text = "\n".join(gw.audit_lines())
        assert "approval_pending" in text
        _no_pan(text)
        assert UPSTREAM_SECRET not in text
