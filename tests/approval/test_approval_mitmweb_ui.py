"""What a reviewer sees of a held request in mitmweb: a mark the browser can draw, the reason in the
flow list, and a refused resume said on the flow itself. Checked through mitmweb's API and, where
Chromium is installed, in the page it renders."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import policy_text
from harness import WebAPI

HOLD = """
approvers:
  alice: {groups: [leads]}
approvals:
  vault-write:
    identities: [writer]
    methods: [PUT]
    paths: ["/v1/vault/**"]
    approvers: [alice]
    timeout: 30s
    ui_resume: false
"""


@pytest.fixture(scope="module")
def web(start_gateway, token_key, upstream):
    return start_gateway(policy=policy_text(token_key, upstream.port, HOLD), tool="mitmweb")


def _held(api, web, pool, mint, upstream):
    mark = web.log.mark()
    s = web.session("writer", mint("writer"))
    fut = pool.submit(s.put, f"https://localhost:{upstream.port}/v1/vault/k1", json={"v": 1}, timeout=40)
    aid = web.log.wait_for(r"pangate approval held id=(\S+)", start=mark).group(1)
    flow = next(f for f in api.get("/flows").json() if aid in (f.get("comment") or ""))
    return fut, aid, flow


def _glyph_fonts(char: str) -> str:
    r = subprocess.run(["fc-list", f":charset={ord(char):x}", "family"], capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def test_held_flow_shows_mark_and_reason_in_the_list_and_a_refused_resume(web, mint, upstream):
    api = WebAPI(web)
    with ThreadPoolExecutor(1) as pool:
        fut, aid, f = _held(api, web, pool, mint, upstream)
        try:
            # mitmweb sends the mark as the character it draws: one that text fonts have.
            assert f["marked"] == "⚠", f["marked"]
            if shutil.which("fc-list"):
                assert _glyph_fonts(f["marked"]), "no installed font draws the held mark"
            assert f["comment"].startswith("HELD for approval: rule vault-write, requested by writer; "
                                           f"pangate approve {aid}"), f["comment"]
            assert "comment" in api.get("/options").json()["web_columns"]["value"]

            mark = web.log.mark()
            api.call("POST", f"/flows/{f['id']}/resume")
            web.log.wait_for(r"mitmweb resume ignored", start=mark)
            f = next(x for x in api.get("/flows").json() if x["id"] == f["id"])
            assert f["intercepted"] and f["comment"].startswith(
                "RESUME REFUSED: rule vault-write has ui_resume: false. HELD for approval"), f["comment"]

            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            if chromium:
                # The page loads its flows after the document: under load, a dump may come first.
                for budget in (5000, 15000, 30000):
                    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                          f"--virtual-time-budget={budget}", "--dump-dom",
                                          f"{web.web_url}/?token={web.web_token}"],
                                         capture_output=True, text=True, timeout=120).stdout
                    if "col-comment\">RESUME" in dom:
                        break
                assert '<span class="marker float-right">⚠</span>' in dom, dom[-2000:]
                assert '<td class="col-comment">RESUME REFUSED: rule vault-write' in dom, dom[-2000:]
        finally:
            api.call("POST", f"/flows/{f['id']}/kill")
            r = fut.result(timeout=20)
    assert r.status_code == 403
