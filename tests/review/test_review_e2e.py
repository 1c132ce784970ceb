"""Access review, sign-off, least-privilege suggestions and the evidence pack, on a real audit trail.

One gateway sees traffic that uses some grants and not others (a static-key
identity, a report-mode role, an idle identity); a reviewer signs off while it
runs (the gateway records the sign-off); then the commands read its trail.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from pangate.common.files import create_key_pair

import leakscan
from conftest import STATIC_KEY, UPSTREAM_SECRET
from harness import VENV_BIN

POLICY = """
version: 1
issuers:
  pangate: {{type: pangate, public_key_file: {pubkey}}}
identities:
  svc: {{issuer: pangate, roles: [reader, admin]}}
  legacy: {{roles: [reader], static_key: {{sha256: "sha256:{static_sha}", reason: "old cron job, retire by Q3"}}}}
  shadow: {{issuer: pangate, roles: [observe]}}
  idle: {{issuer: pangate, roles: [reader]}}
roles:
  reader:
    allow:
      - destination: upstream
        methods: [GET, HEAD]
        paths: ["/v1/charges", "/v1/charges/*"]
        query: {{limit: "<= 100"}}
      - destination: upstream
        methods: [GET]
        paths: ["/public/**"]
  admin:
    allow:
      - destination: upstream
        methods: [POST, DELETE]
        paths: ["/v1/**"]
  observe:
    mode: report
    allow:
      - destination: upstream
        methods: [GET]
        paths: ["/v1/charges"]
destinations:
  upstream:
    host: localhost
    port: {port}
    card_data: true
    addresses: [127.0.0.1/32]
    credential: {{type: bearer, env: UPSTREAM_KEY}}
approvers:
  alice: {{public_key_file: {alice}}}
"""


def pangate(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "pangate"), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def trail(start_gateway, upstream, mint, token_key, tmp_path_factory):
    import hashlib

    keys = tmp_path_factory.mktemp("reviewer")
    create_key_pair(str(keys / "alice.key"))
    policy = POLICY.format(pubkey=token_key + ".pub", port=upstream.port, alice=keys / "alice.key.pub",
                           static_sha=hashlib.sha256(STATIC_KEY.encode()).hexdigest())
    gw = start_gateway(policy, options={"pangate_control_listen": ""})
    base = f"https://localhost:{upstream.port}"
    svc, shadow = gw.session("svc", mint("svc")), gw.session("shadow", mint("shadow"))
    legacy = gw.session("legacy", STATIC_KEY)
    ids = []
    for r in (svc.get(base + "/v1/charges?limit=5"), svc.get(base + "/v1/charges?limit=40"),
              svc.get(base + "/v1/charges/ch_1"), svc.get(base + "/v1/charges?limit=500"),
              legacy.get(base + "/v1/charges?limit=10"),
              shadow.get(base + "/v1/charges?limit=7"), shadow.get(base + "/v2/exports/today"),
              shadow.get(base + "/v2/exports/today")):
        ids.append(r.headers["X-Pangate-Request-Id"])
    statuses = [svc.get(base + "/admin").status_code]
    for rid in ids:
        gw.decision(rid)
    res = pangate("review", "--since", "1d", "--audit-dir", gw.audit_dir, "--policy", gw.policy_path,
                  "--sign-off", "alice", "--key", keys / "alice.key", "--note", "quarterly review")
    assert res.returncode == 0, res.stderr
    # The running gateway picks the sign-off up and records it in its trail.
    deadline = time.monotonic() + 15
    while not any(r.get("event") == "access_review_signed" for r in gw.audit_records()):
        assert time.monotonic() < deadline, "the gateway did not record the sign-off"
        time.sleep(0.1)
    assert gw.stop() == 0
    return gw, keys, statuses


def _review(gw, *args) -> subprocess.CompletedProcess:
    return pangate("review", "--since", "1d", "--audit-dir", gw.audit_dir, "--policy", gw.policy_path, *args)


def test_review_lists_used_and_unused_grants(trail):
    gw, _, statuses = trail
    assert statuses == [403]
    res = _review(gw, "--format", "csv")
    assert res.returncode == 0, res.stderr
    rows = {(r["identity"], r["rule"]): r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert rows[("svc", "reader/0")]["uses"] == "3" and rows[("svc", "reader/0")]["used"] == "True"
    assert rows[("svc", "reader/1")]["uses"] == "0" and rows[("svc", "reader/1")]["used"] == "False"
    assert rows[("svc", "admin/0")]["used"] == "False"
    assert rows[("legacy", "reader/0")]["uses"] == "1" and rows[("legacy", "reader/0")]["static_key"] == "True"
    assert rows[("idle", "reader/0")]["uses"] == "0" and rows[("idle", "reader/0")]["last_activity"] == ""
    assert rows[("shadow", "observe/0")]["uses"] == "1"
    assert rows[("svc", "reader/0")]["query"] == "limit <= 100"
    md = _review(gw).stdout
    assert "## svc" in md and "NEVER USED" in md and "STATIC KEY" in md
    assert "2 request(s) allowed only by report mode" in md
    assert "alice at " in md and "signature verified" in md  # the last sign-off
    res = _review(gw, "--out", gw.workdir / "r.md")
    assert res.returncode == 0 and (gw.workdir / "r.md").read_text().startswith("# Access review"), res.stderr


def _png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and raw RGB(A) rows of a PNG (8-bit, no interlace), unfiltered."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    w, h, depth, color = ihdr[:4]
    assert depth == 8 and color in (2, 6)
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (scripts/test installs it)")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp / 'profile'}", *args], capture_output=True, text=True,
                          timeout=90)


def test_review_html_draws_its_charts_in_chromium(trail, tmp_path):
    gw, _, _ = trail
    out = tmp_path / "review.html"
    res = _review(gw, "--out", out)
    assert res.returncode == 0, res.stderr
    page = out.read_text()
    assert "<script src" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    dom = _chromium("--dump-dom", out.as_uri(), tmp=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-charts="drawn"' in dom.stdout, dom.stdout[-2000:]
    assert dom.stdout.count('class="series"') >= 3  # svc, legacy, shadow were active
    assert dom.stdout.count('class="bar used"') == 4 and dom.stdout.count('class="bar unused"') == 4
    shot = tmp_path / "review.png"
    res = _chromium(f"--screenshot={shot}", "--window-size=1200,1400", "--hide-scrollbars", out.as_uri(), tmp=tmp_path)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    w, h, rows = _png_pixels(shot)
    assert (w, h) == (1200, 1400)
    bpp = len(rows[0]) // w
    colors, dark = set(), 0
    for row in rows[::4]:
        for x in range(0, w * bpp, bpp * 4):
            px = row[x:x + 3]
            colors.add(px)
            dark += sum(px) < 600
    assert len(colors) > 20 and dark > 500, (len(colors), dark)  # text and coloured chart lines, not a blank page
    assert any(px[1] > 120 and px[0] < 100 and px[2] < 100 for px in colors)  # the green "used" bars
    assert any(px[0] > 180 and px[1] < 80 and px[2] < 80 for px in colors)  # the red "never used" bars


def test_sign_off_is_verified_recorded_and_refused_with_a_wrong_key(trail, tmp_path):
    gw, keys, _ = trail
    rec = [r for r in gw.audit_records() if r.get("event") == "access_review_signed"]
    assert len(rec) == 1 and rec[0]["reviewer"] == "alice" and len(rec[0]["report_sha256"]) == 64
    create_key_pair(str(tmp_path / "mallory.key"))
    res = _review(gw, "--sign-off", "alice", "--key", tmp_path / "mallory.key")
    assert res.returncode == 2 and "is not the key of approver alice" in res.stderr
    res = _review(gw, "--sign-off", "bob", "--key", tmp_path / "mallory.key")
    assert res.returncode == 2 and "no approver" in res.stderr
    # A sign-off edited after signing no longer verifies.
    f = next((gw.audit_dir / "reviews").glob("signoff-*.json"))
    doc = json.loads(f.read_text())
    from pangate.policy.model import load_policy
    from pangate.review import signoff

    assert signoff.verify(str(f), load_policy(str(gw.policy_path)))["ok"]
    forged = tmp_path / f.name
    forged.write_text(json.dumps({**doc, "reviewer": "alice", "note": "approved everything"}))
    assert not signoff.verify(str(forged), load_policy(str(gw.policy_path)))["ok"]


def test_suggest_yields_a_policy_that_allows_exactly_what_was_used(trail, tmp_path):
    gw, _, _ = trail
    out = gw.workdir / "suggested.yaml"  # beside the policy: its key paths are relative to it
    res = pangate("policy", "suggest", "--since", "1d", "--audit-dir", gw.audit_dir, "--policy", gw.policy_path,
                  "--out", out)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("---") and "+++" in res.stdout  # a diff
    assert "removed admin/0: never used" in res.stderr and "removed reader/1" in res.stderr
    check = pangate("policy", "check", out)
    assert check.returncode == 0, check.stderr
    from pangate.policy.decide import decide
    from pangate.policy.model import load_policy
    from pangate.review.suggest import request_of

    new, old = load_policy(str(out)), load_policy(str(gw.policy_path))
    recs = [r for r in gw.audit_records() if r.get("event") == "request"]
    for r in recs:
        req = request_of(r)
        was_used = r["outcome"] in ("allowed", "report_only")
        d = decide(new, req)
        assert (d.allowed and d.enforced) == was_used, (r["destination"], r["outcome"], d)
    # Narrowed: the upper bound is the largest limit used; HEAD and the unused rules are gone.
    rule = new.roles["reader"].rules[0]
    assert rule.methods == frozenset({"GET"}) and [(q.param, q.op, q.value) for q in rule.query] == [
        ("limit", "<=", 40.0)]
    assert len(new.roles["reader"].rules) == 1 and new.roles["admin"].rules == ()
    from pangate.policy.decide import Request

    probe = Request("svc", "https", "localhost", old.destinations["upstream"].ports[0], "GET", "/v1/charges",
                    (("limit", "90"),))
    assert decide(old, probe).allowed and not decide(new, probe).allowed
    # Report-mode traffic became a rule: enforcing the role would now break nothing that ran.
    paths = {p for r in new.roles["observe"].rules for p in r.paths}
    assert "/v2/exports/today" in paths and "/v1/charges" in paths


def test_evidence_pack_maps_every_requirement_and_holds_no_secret(trail, tmp_path):
    gw, _, _ = trail
    out = tmp_path / "pack"
    res = pangate("evidence", "--since", "1d", "--audit-dir", gw.audit_dir, "--policy", gw.policy_path,
                  "--out", out, "--key", gw.workdir / "audit-signing.key")
    assert res.returncode == 0, res.stderr
    index = (out / "index.html").read_text()
    reqs = json.loads((out / "requirements.json").read_text())
    ids = {r["id"] for r in reqs}
    want = {"3.3.1", "3.4.1", "3.5.1", "4.2.1", "7.2.1", "7.2.2", "7.2.5", "7.2.5.1", "8.2.1", "8.6.1", "8.6.2",
            "8.6.3", "10.2.1", "10.2.1.1", "10.2.1.4", "10.2.2", "10.3.2", "10.3.3", "10.3.4", "10.4.1.1",
            "10.5.1", "10.7.2"}
    assert want <= ids
    import re

    for r in reqs:
        section = re.search(rf'<section class="requirement" id="req-{re.escape(r["id"])}">(.*?)</section>',
                            index, re.S)
        assert section, r["id"]
        links = re.findall(r'class="evidence" href="([^"]+)"', section.group(1))
        assert links and all((out / link).is_file() for link in links), (r["id"], links)
    ver = json.loads((out / "audit" / "verification.json").read_text())
    assert ver["ok"] and ver["signatures_checked"] and not ver["live"]
    history = json.loads((out / "policy" / "history.json").read_text())
    assert history and history[0]["event"] in ("gateway_started", "policy_loaded")
    from pangate.policy.model import load_policy

    assert history[0]["digest"] == load_policy(str(gw.policy_path)).digest
    offs = json.loads((out / "reviews" / "signoffs.json").read_text())
    assert [o["ok"] for o in offs] == [True]
    assert "7.2.5.1" in index and "alice" in next(r for r in reqs if r["id"] == "7.2.5.1")["shows"]
    # Signed and checkable; any change is seen.
    res = pangate("evidence", "verify", out, "--pubkey", gw.workdir / "audit-signing.key.pub")
    assert res.returncode == 0 and "OK: signature verified" in res.stdout, res.stdout + res.stderr
    if shutil.which("openssl"):
        ossl = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey",
                               str(gw.workdir / "audit-signing.key.pub"), "-rawin", "-in", str(out / "SHA256SUMS"),
                               "-sigfile", str(out / "SHA256SUMS.sig")], capture_output=True, text=True)
        assert ossl.returncode == 0, ossl.stdout + ossl.stderr
    sums = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    found = leakscan.leaks(out, "", [UPSTREAM_SECRET, STATIC_KEY])
    assert not found, found
    with open(out / "audit" / "counts.json", "a") as f:
        f.write(" ")
    res = pangate("evidence", "verify", out, "--pubkey", gw.workdir / "audit-signing.key.pub")
    assert res.returncode == 1 and "changed: audit/counts.json" in res.stdout
    # And the pack goes into a new directory only.
    res = pangate("evidence", "--since", "1d", "--audit-dir", gw.audit_dir, "--policy", gw.policy_path,
                  "--out", out, "--key", gw.workdir / "audit-signing.key")
    assert res.returncode == 2 and "not empty" in res.stderr
