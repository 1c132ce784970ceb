"""The README's walkthrough, run as written: scripts/run in a copy of the checkout, then the
README's shell blocks in a second shell against it.

The copy shares this checkout's .venv and code (symlinks) and gets its own certs/, var/
and free ports: the proxy and control ports through scripts/run's environment variables,
the demo processor's through its policy. The blocks' literal 8080 and 9443 are replaced by
those ports; nothing else in them is changed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from harness import LogWatcher, free_port

ROOT = Path(__file__).resolve().parents[2]


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def shell_blocks(section: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", section, re.S)


class Run:
    """scripts/run in its own process group (Ctrl-C goes to the group, as a terminal sends it)."""

    def __init__(self, clone: Path, env: dict, *args: str):
        self.proc = subprocess.Popen([str(clone / "scripts" / "run"), *args], cwd=clone, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.log = LogWatcher(self.proc.stdout)

    def ctrl_c(self, timeout: float = 30) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A checkout as a new user has it: the tracked files, no certs or var yet."""
    d = tmp_path_factory.mktemp("checkout")
    # Everything ensure_venv hashes is shared too, so scripts/run finds the suite's install current.
    for name in ("scripts", "addons", "README.md", "setup.cfg", "setup.py", "pyproject.toml", ".venv"):
        os.symlink(ROOT / name, d / name)
    (d / "certs").mkdir()
    demo_port = free_port()
    policy = (ROOT / "policies.yaml").read_text()
    assert "    port: 9443\n" in policy
    (d / "policies.yaml").write_text(policy.replace("    port: 9443\n", f"    port: {demo_port}\n"))
    return d, demo_port


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") and not k.startswith("PANGATE_")
           and k != "DEMO_PROCESSOR_KEY"}
    env.update(extra)
    return env


def test_walkthrough_as_written(clone):
    d, demo_port = clone
    port, control = free_port(), free_port()
    env = clean_env(PANGATE_PORT=str(port), PANGATE_CONTROL_PORT=str(control))
    run = Run(d, env)
    try:
        run.log.wait_for(r"pangate is ready on 127\.0\.0\.1:%d" % port, timeout=90)
        run.log.wait_for(r"export HTTPS_PROXY=http://demo-client:\$TOKEN@127\.0\.0\.1:%d" % port, timeout=5)

        blocks = shell_blocks(readme_section("Five-minute walkthrough"))
        assert blocks[0].strip() == "scripts/run"
        script = ""
        for i, block in enumerate(blocks[1:], 1):
            block = block.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("localhost:9443",
                                                                                 f"localhost:{demo_port}")
            script += f"{block}\necho '--- block {i} rc='$?\n"
        shell = subprocess.run(["bash", "-c", script], cwd=d, env=env, capture_output=True, text=True, timeout=60)
        out = shell.stdout
        parts = re.split(r"--- block \d+ rc=\d+\n", out)
        assert len(parts) == len(blocks), out + shell.stderr
        calls, show, refused, env_proxy, checks = parts[:5]
        assert '"number": "424242******4242"' in calls and '"cvc": "***"' in calls, out + shell.stderr
        assert "4242424242424242" not in out
        assert "id (jti)" in shell.stderr and "expires" in shell.stderr
        # What the README says the first shell shows: the injected key, never the proxy credential.
        run.log.wait_for(r"demo upstream received GET /v1/charges: Authorization: Bearer sk_demo_… "
                         r"\(= \$DEMO_PROCESSOR_KEY, injected by the gateway\); no Proxy-Authorization", timeout=5)
        assert "request" in show and "demo-client" in show and "allowed" in show, show
        assert refused.startswith("407\n") and '"code": "no_rule"' in refused, refused
        assert '"number": "424242******4242"' in env_proxy, env_proxy
        assert "audit log verification: OK" in checks, out + shell.stderr
        assert "is writing this log" in shell.stderr
        assert "all checks passed" in checks, checks

        # Ctrl-C with a request still held for approval: a clean stop, no traceback.
        held = subprocess.Popen(
            ["curl", "-s", "--cacert", "certs/mitmproxy-ca-cert.pem", "--proxy", f"http://127.0.0.1:{port}",
             "--proxy-user", "demo-client:" + _token(d, env), f"https://localhost:{demo_port}/v1/charges?limit=60"],
            cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run.log.wait_for(r"pangate approval held", timeout=20)
        assert run.ctrl_c() == 0
        held.wait(20)
        text = "\n".join(run.log.lines)
        assert "Traceback" not in text and "CancelledError" not in text, text[-3000:]
        # Stopped: the log is sealed and verifies without any flag.
        r = subprocess.run(["scripts/pangate", "audit", "verify", "var/audit"], cwd=d, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "writing this log" not in r.stderr, r.stdout + r.stderr
    finally:
        run.kill()


def _token(d: Path, env: dict) -> str:
    return subprocess.run(["scripts/pangate", "token", "issue", "--identity", "demo-client", "--ttl", "5m"], cwd=d,
                          env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def test_user_set_options_replace_the_scripts(clone, tmp_path):
    """`--set pangate_policy=X --set pangate_audit_dir=Y`: the gateway runs X (checked first) and writes Y."""
    d, _ = clone
    other = d / "other-policy.yaml"
    other.write_text("version: 1\nissuers:\n  pangate: {type: pangate, public_key_file: certs/token-signing.key.pub}\n"
                     "identities:\n  demo-client: {issuer: pangate, roles: [r]}\n"
                     "roles:\n  r: {allow: [{destination: ex, methods: [GET], paths: ['/**']}]}\n"
                     "destinations:\n  ex: {host: example.invalid}\n")
    port = free_port()
    audit = tmp_path / "my-audit"
    run = Run(d, clean_env(), "--no-demo", "--port", str(port), "--control-port", str(free_port()),
              "--set", f"pangate_policy={other}", "--set", f"pangate_audit_dir={audit}")
    try:
        run.log.wait_for(rf"ok    policy {re.escape(str(other))}: 1 identities", timeout=90)
        run.log.wait_for(rf"pangate policy loaded from {re.escape(str(other))}", timeout=30)
        run.log.wait_for(r"pangate is ready", timeout=30)
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_connect}", "--proxy",
                            f"http://127.0.0.1:{port}", "https://example.invalid/"], capture_output=True, text=True,
                           timeout=30, env=clean_env())
        assert r.stdout == "407", r.stdout + r.stderr  # answered by pangate, not "503 gateway_not_ready"
        assert run.ctrl_c() == 0
        assert any(audit.glob("audit-*.jsonl"))
    finally:
        run.kill()


def test_a_startup_problem_exits_with_its_fix(clone):
    """--no-demo without DEMO_PROCESSOR_KEY: said before anything starts, with the fix, exit 1."""
    d, _ = clone
    run = Run(d, clean_env(), "--no-demo", "--port", str(free_port()), "--control-port", str(free_port()))
    try:
        assert run.proc.wait(90) == 1
        text = "\n".join(run.log.lines)
        assert "$DEMO_PROCESSOR_KEY is not set" in text and "fix: export DEMO_PROCESSOR_KEY=" in text, text
        assert "pangate: exiting:" in text and "Loading script" not in text, text
    finally:
        run.kill()
