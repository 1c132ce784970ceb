"""kill -9 under load: every answered flow is in a recording, and every recording reads and verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

from mitmproxy.io import FlowReader

from conftest import UPSTREAM_SECRET, policy_text
from harness import VENV_BIN, Gateway


def _ids(path) -> list[str]:
    with open(path, "rb") as fh:
        return [f.metadata.get("pangate", {}).get("request_id") for f in FlowReader(fh).stream()]


def test_kill_9_loses_no_answered_flow_and_leaves_no_unreadable_file(tmp_path, confdir, pki, token_key,
                                                                       upstream, mint):
    policy = policy_text(token_key, upstream.port)
    env = {"UPSTREAM_KEY": UPSTREAM_SECRET}
    gw = Gateway(tmp_path, policy, confdir, pki.ca_cert, env=env,
                 options={"pangate_audit_strict": "true"})  # strict: no answered flow may go unrecorded
    s = gw.session("reader", mint("reader"))
    answered, enough, stop = [], threading.Event(), threading.Event()

    def loop():
        while not stop.is_set():
            try:
                r = s.get(f"https://localhost:{upstream.port}/v1/charges", timeout=10)
            except Exception:
                return  # the gateway is gone
            if r.status_code == 200:
                answered.append(r.headers["X-Pangate-Request-Id"])
            if len(answered) >= 40:
                enough.set()

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    assert enough.wait(120), "the request loop did not get going"
    os.killpg(gw.proc.pid, signal.SIGKILL)  # mid-loop: requests in flight
    gw.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(20)

    gw2 = Gateway(tmp_path, policy, confdir, pki.ca_cert, env=env)  # same directories: seals the leftovers
    assert gw2.stop() == 0
    rec_dir = tmp_path / "var" / "recordings"
    files = sorted(rec_dir.glob("*.mitm"))
    recorded = set()
    for f in files:
        recorded.update(_ids(f))
        out = subprocess.run([str(VENV_BIN / "mitmdump"), "-n", "-r", str(f), "--set", "flow_detail=0"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{f.name}: {out.stdout[-500:]} {out.stderr[-500:]}"
    missing = [rid for rid in answered if rid not in recorded]
    assert not missing, f"{len(missing)} of {len(answered)} answered flows are not recorded"
    res = subprocess.run([str(VENV_BIN / "pangate"), "audit", "verify", str(gw2.audit_dir),
                          "--pubkey", str(tmp_path / "audit-signing.key.pub"), "--recordings", str(rec_dir)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
    assert "0 failed" in res.stdout
