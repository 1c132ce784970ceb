"""The audit trail and session recordings of a real mitmdump run: tamper evidence,
readable recordings, nothing sensitive at rest, fail closed when records cannot be written."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pangate.audit.log import dumps_line, line_hash, list_audit_files
from pangate.dev.demo_upstream import TEST_PANS
from pangate.pan.engine import find_pans

from conftest import STATIC_KEY, UPSTREAM_SECRET
from harness import VENV_BIN

SENT_PANS = ["4000056655665556", "4111111111111111"]  # cards the client sends (body, query)


def _url(upstream, path: str) -> str:
    return f"https://localhost:{upstream.port}{path}"


def pangate(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "pangate"), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def run(start_gateway, upstream, mint):
    """A gateway that saw allowed, denied, refused and card-carrying traffic, then stopped cleanly."""
    gw = start_gateway(options={"pangate_audit_strict": "true"})
    tokens = {"reader": mint("reader"), "writer": mint("writer")}
    reader, writer = gw.session("reader", tokens["reader"]), gw.session("writer", tokens["writer"])
    ids = []
    for path in ("/v1/charges", "/gzip", "/echo", "/v1/charges?limit=5", "/admin"):
        ids.append(reader.get(_url(upstream, path)).headers["X-Pangate-Request-Id"])
    r = writer.post(_url(upstream, f"/v1/charges?card={SENT_PANS[1]}&api_key=abc123"),
                    json={"card": {"number": SENT_PANS[0], "cvc": "987"}},
                    headers={"Cookie": "session=s3cr3t-cookie", "Authorization": "Bearer client-held"})
    assert r.status_code == 200, r.text
    ids.append(r.headers["X-Pangate-Request-Id"])
    bad = gw.session("reader", "not-a-token")
    with pytest.raises(Exception):
        bad.get(_url(upstream, "/v1/charges"))
    for rid in ids:
        gw.decision(rid)
    assert gw.stop() == 0
    return gw, ids, tokens


def test_untouched_log_and_recordings_verify(run):
    gw, ids, _ = run
    res = pangate("audit", "verify", str(gw.audit_dir), "--pubkey", str(gw.workdir / "audit-signing.key.pub"),
                  "--recordings", str(gw.workdir / "var" / "recordings"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK" in res.stdout and "signatures: verified" in res.stdout
    assert "reader" in res.stdout and "writer" in res.stdout  # identities
    assert "time range: 20" in res.stdout and "recordings: 1 signed, 0 failed" in res.stdout
    recs = {r.get("request_id"): r for r in gw.audit_records()}
    assert all(rid in recs for rid in ids)
    events = {r["event"] for r in gw.audit_records()}
    assert {"gateway_started", "gateway_stopped", "token_refused", "request"} <= events
    assert next(r for r in gw.audit_records() if r["event"] == "gateway_started")["policy"]  # its digest
    # stderr is no TTY here, so the bar must be asked for; cwd has no certs/: no default key either
    res = pangate("audit", "verify", str(gw.audit_dir), "--progress", cwd=gw.workdir)
    assert res.returncode == 0 and "100%" in res.stderr and "NOT checked" in res.stdout, res.stderr
    res = pangate("audit", "show", str(gw.audit_dir), "--identity", "reader", "--outcome", "denied")
    assert res.returncode == 0 and ids[4] in res.stdout and ids[0] not in res.stdout, res.stdout
    post = recs[ids[-1]]
    assert post["destination"]["query"] == f"card={SENT_PANS[1][:6]}******{SENT_PANS[1][-4:]}&api_key=[redacted]"
    assert post["identity"]["token_id"] and post["bytes_sent"] > 0 and post["bytes_received"] > 0
    assert recs[ids[4]]["outcome"] == "denied"


def _tampered(run, tmp_path, change) -> subprocess.CompletedProcess:
    gw = run[0]
    d = tmp_path / "audit"
    shutil.copytree(gw.audit_dir, d)
    f = list_audit_files(str(d))[-1]
    with open(f, "rb") as fh:
        lines = fh.read().splitlines()
    mid = next(i for i in range(len(lines) // 2, len(lines)) if b'"event":"request"' in lines[i])
    lines = change(lines, mid)
    with open(f, "wb") as fh:
        fh.write(b"".join(line + b"\n" for line in lines))
    return pangate("audit", "verify", str(d), "--pubkey", str(gw.workdir / "audit-signing.key.pub"))


def _edit(lines, i):
    rec = json.loads(lines[i])
    rec["outcome"] = "allowed" if rec["outcome"] != "allowed" else "denied"
    return lines[:i] + [dumps_line(rec)] + lines[i + 1:]


def _insert(lines, i):
    rec = json.loads(lines[i])
    forged = dict(rec, seq=rec["seq"] + 1, prev=line_hash(lines[i]), request_id="forged")
    return lines[:i + 1] + [dumps_line(forged)] + lines[i + 1:]


def _forge_sig(lines, i):
    cp = json.loads(lines[-1])
    cp["sig"] = base64.b64encode(Ed25519PrivateKey.generate().sign(b"x")).decode()
    return lines[:-1] + [dumps_line(cp)]


def _drop_sig(lines, i):
    cp = json.loads(lines[-1])
    del cp["sig"]
    return lines[:-1] + [dumps_line(cp)]


@pytest.mark.parametrize("name,change,kind", [
    ("edit", _edit, "edited"),
    ("delete", lambda lines, i: lines[:i] + lines[i + 1:], "deleted"),
    ("insert", _insert, "inserted"),
    ("reorder", lambda lines, i: lines[:i] + [lines[i + 1], lines[i]] + lines[i + 2:], "reordered"),
    ("truncate", lambda lines, i: lines[:-2], "truncated"),
    ("forged signature", _forge_sig, "bad_signature"),
    ("missing signature", _drop_sig, "missing_signature"),
])
def test_tampering_is_caught(run, tmp_path, name, change, kind):
    res = _tampered(run, tmp_path, change)
    assert res.returncode == 1, res.stdout
    assert f"FAILED ({kind})" in res.stdout and "first broken place: " in res.stdout, res.stdout


def test_tampered_recording_is_caught(run, tmp_path):
    gw = run[0]
    rec = tmp_path / "rec"
    shutil.copytree(gw.workdir / "var" / "recordings", rec)
    f = next(rec.glob("*.mitm"))
    pub = str(gw.workdir / "audit-signing.key.pub")
    data = f.read_bytes()
    f.write_bytes(data.replace(b"reader", b"Reader", 1))
    res = pangate("audit", "verify", str(gw.audit_dir), "--pubkey", pub, "--recordings", str(rec))
    assert res.returncode == 1 and "FAILED (edited)" in res.stdout, res.stdout
    f.write_bytes(data)
    os.unlink(str(f) + ".sig")
    res = pangate("audit", "verify", str(gw.audit_dir), "--pubkey", pub, "--recordings", str(rec))
    assert res.returncode == 1 and "FAILED (missing_signature)" in res.stdout, res.stdout


def test_recordings_are_readable_by_mitmdump(run, tmp_path):
    gw, ids, _ = run
    (f,) = (gw.workdir / "var" / "recordings").glob("*.mitm")
    res = subprocess.run([str(VENV_BIN / "mitmdump"), "-n", "-r", str(f), "--set", f"confdir={tmp_path}",
                          "--flow-detail", "1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "GET https://localhost" in res.stdout and "/v1/charges" in res.stdout
    assert "POST https://localhost" in res.stdout and "<< 200" in res.stdout
    assert "403" in res.stdout  # the denied /admin
    from mitmproxy.io import FlowReader
    with open(f, "rb") as fh:
        flows = list(FlowReader(fh).stream())
    rids = {fl.metadata["pangate"]["request_id"] for fl in flows}
    assert set(ids) <= rids
    post = next(fl for fl in flows if fl.request.method == "POST")
    assert "cookie" not in post.request.headers and "authorization" not in post.request.headers
    assert SENT_PANS[0][-4:] in post.request.get_text() and SENT_PANS[0] not in post.request.get_text()


def test_mitmweb_reads_recordings(run, tmp_path):
    gw = run[0]
    (f,) = (gw.workdir / "var" / "recordings").glob("*.mitm")
    with socket.socket() as probe:  # mitmweb -n reports port 0 literally: pick a free port first
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([str(VENV_BIN / "mitmweb"), "-n", "-r", str(f), "--set", f"confdir={tmp_path}",
                             "--web-host", "127.0.0.1", "--web-port", str(port), "--set", "web_open_browser=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    from harness import LogWatcher
    try:
        out = LogWatcher(proc.stdout)
        token = out.wait_for(r"Web server listening at http://\S+token=([0-9a-f]+)").group(1)
        base = f"http://127.0.0.1:{port}"
        import requests
        s = requests.Session()
        s.trust_env = False
        deadline = time.monotonic() + 20
        while True:  # the file is read in the background after startup
            flows = s.get(f"{base}/flows", headers={"Authorization": f"Bearer {token}"}).json()
            if len(flows) >= 6 or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # polling a condition with a deadline, not waiting a fixed time
        assert len(flows) >= 6
        assert {fl["request"]["path"].split("?")[0] for fl in flows} >= {"/v1/charges", "/echo", "/admin"}
    finally:
        os.killpg(proc.pid, 2)
        proc.wait(15)


def test_nothing_sensitive_at_rest(run):
    gw, _, tokens = run
    secrets = [*TEST_PANS, *SENT_PANS, *tokens.values(), UPSTREAM_SECRET, STATIC_KEY, "s3cr3t-cookie",
               "client-held", "abc123", '"cvc": "987"']
    texts = {"gateway log": gw.log.text().encode()}
    for root, _dirs, names in os.walk(gw.workdir):
        for n in names:
            if n not in ("policies.yaml",) and not n.endswith(".key"):
                texts[os.path.join(root, n)] = open(os.path.join(root, n), "rb").read()
    assert any(p.endswith(".mitm") for p in texts) and any(p.endswith(".jsonl") for p in texts)
    for where, data in texts.items():
        for s in secrets:
            assert s.encode() not in data, f"{s!r} found in {where}"
        assert not find_pans(data), f"card number in {where}: {find_pans(data)}"


def test_fail_closed_when_records_cannot_be_written(start_gateway, upstream, mint):
    gw = start_gateway(options={"pangate_audit_strict": "true"})
    s = gw.session("reader", mint("reader"))
    allowed = []
    for _ in range(3):
        r = s.get(_url(upstream, "/v1/charges"))
        assert r.status_code == 200
        allowed.append(r.headers["X-Pangate-Request-Id"])
    away = gw.audit_dir.with_name("audit.away")
    mark = gw.log.mark()
    os.rename(gw.audit_dir, away)
    gw.audit_dir.write_text("not a directory")  # root ignores chmod; a replaced dir it cannot miss
    try:
        r = s.get(_url(upstream, "/v1/charges"))
        assert r.status_code == 503 and r.json()["code"] == "audit_unavailable", r.text
        gw.log.wait_for(r"pangate ALERT audit_write_failed", start=mark)
        r = s.get(_url(upstream, "/v1/charges"))
        assert r.status_code == 503 and "audit records cannot be written" in r.json()["reason"], r.text
    finally:
        mark = gw.log.mark()
        gw.audit_dir.unlink()
        os.rename(away, gw.audit_dir)
    gw.log.wait_for(r"audit log writing recovered", start=mark)
    r = s.get(_url(upstream, "/v1/charges"))
    assert r.status_code == 200, r.text
    allowed.append(r.headers["X-Pangate-Request-Id"])
    assert gw.stop() == 0
    recs = gw.audit_records()
    logged = {r.get("request_id"): r for r in recs}
    for rid in allowed:
        assert logged[rid]["outcome"] == "allowed"
    assert {"audit_write_failed", "audit_recovered", "audit_write_recovered"} <= {r["event"] for r in recs}
    res = pangate("audit", "verify", str(gw.audit_dir), "--pubkey", str(gw.workdir / "audit-signing.key.pub"))
    assert res.returncode == 0, res.stdout
