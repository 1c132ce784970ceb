"""The image's entry point, run for real outside a container (no engine here): `init` makes the
CA and keys once, `demo-upstream` and `gateway` start, and a workload following
`pangate ca export --client curl` with the token init issued gets its 200 through it.

Paths come from PANGATE_ETC/PANGATE_VAR as in the image; the health listener option is left
unset (PANGATE_HEALTH_LISTEN empty) for gateways that predate it.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness import LogWatcher, free_port

from deploy_helpers import DEPLOY

ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"
VENV_BIN = Path(sys.executable).parent


def env_for(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")
           and k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")}
    return {**env, "PATH": f"{VENV_BIN}{os.pathsep}{env['PATH']}", "PANGATE_PYTHON": sys.executable,
            "PANGATE_ETC": str(tmp / "etc"), "PANGATE_VAR": str(tmp / "var"), "HOME": str(tmp / "var"),
            "PANGATE_HEALTH_LISTEN": "", "PYTHONUNBUFFERED": "1", **extra}


def init(tmp: Path, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), "init"], capture_output=True, text=True, timeout=120,
                          env=env_for(tmp, **extra))


def start(tmp: Path, cmd: str, **extra) -> tuple[subprocess.Popen, LogWatcher]:
    proc = subprocess.Popen(["bash", str(ENTRYPOINT), cmd], cwd=tmp / "cwd", env=env_for(tmp, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, LogWatcher(proc.stdout)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_init_then_gateway_serves_the_demo(tmp_path):
    (tmp_path / "cwd").mkdir()
    (tmp_path / "out").mkdir()
    outputs = dict(PANGATE_CA_OUT=str(tmp_path / "out" / "pangate-ca.pem"), PANGATE_DEMO_UPSTREAM_HOST="localhost",
                   PANGATE_DEMO_TOKEN_FOR="demo-workload", PANGATE_TOKEN_OUT=str(tmp_path / "out" / "token"))
    res = init(tmp_path, **outputs)
    assert res.returncode == 0, res.stderr
    etc = tmp_path / "etc"
    for f in ("certs/mitmproxy-ca.pem", "keys/token-signing.key", "keys/audit-signing.key",
              "certs/upstream-trust.pem", "demo/demo-upstream.pem"):
        assert (etc / f).is_file(), f
    exported = (tmp_path / "out" / "pangate-ca.pem").read_text()
    assert exported.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE" not in exported
    # Idempotent: a second init (every `docker-compose up`) rotates nothing.
    before = {f: (etc / f).read_bytes() for f in ("certs/mitmproxy-ca.pem", "keys/audit-signing.key",
                                                  "keys/token-signing.key")}
    assert init(tmp_path, **outputs).returncode == 0
    assert before == {f: (etc / f).read_bytes() for f in before}

    up_port = free_port()
    policy = (DEPLOY / "compose" / "policies.yaml").read_text()
    policy = (policy.replace("host: upstream", "host: localhost").replace("port: 9443", f"port: {up_port}")
              .replace("addresses: [172.28.0.0/24]", "addresses: [127.0.0.1/32]"))
    (etc / "policies.yaml").write_text(policy)
    upstream, up_log = start(tmp_path, "demo-upstream", PANGATE_DEMO_UPSTREAM_PORT=str(up_port))
    gateway = None
    try:
        up_log.wait_for(r"demo upstream on")
        gateway, log = start(tmp_path, "gateway", PANGATE_LISTEN_HOST="127.0.0.1", PANGATE_LISTEN_PORT="0",
                             PANGATE_INSTANCE="gw-1", DEMO_PROCESSOR_KEY="sk_demo_entrypoint_test")
        port = int(log.wait_for(r"HTTP\(S\) proxy listening at .*?:(\d+)").group(1))
        log.wait_for(r"pangate gateway live")
        recipe = subprocess.run([str(VENV_BIN / "pangate"), "ca", "export", "--confdir", str(etc / "certs"),
                                 "--client", "curl", "--proxy", f"http://127.0.0.1:{port}",
                                 "--url", f"https://localhost:{up_port}/v1/charges?limit=3"],
                                capture_output=True, text=True, check=True).stdout
        token = (tmp_path / "out" / "token").read_text().strip()
        call = subprocess.run(["bash", "-euo", "pipefail", "-c", recipe], cwd=tmp_path / "cwd", capture_output=True,
                              text=True, timeout=60,
                              env=env_for(tmp_path, PANGATE_IDENTITY="demo-workload", PANGATE_TOKEN=token))
        assert "HTTP 200" in call.stdout, call.stdout + call.stderr + log.text()[-2000:]
        assert "424242******4242" in call.stdout
    finally:
        if gateway:
            stop(gateway)
        stop(upstream)
    # Everything written is under the two volumes, the audit trail per instance.
    assert list((tmp_path / "var" / "audit" / "gw-1").glob("*.jsonl"))
    assert [p.name for p in (tmp_path / "cwd").iterdir()] == ["pangate-ca.pem"]  # the recipe's own file


def test_gateway_refuses_to_start_without_a_ca(tmp_path):
    (tmp_path / "cwd").mkdir()
    res = subprocess.run(["bash", str(ENTRYPOINT), "gateway"], cwd=tmp_path / "cwd", capture_output=True, text=True,
                         timeout=30, env=env_for(tmp_path))
    assert res.returncode == 78 and "no CA" in res.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    status = {"/healthz": 200, "/readyz": 503}

    def do_GET(self):
        self.send_response(self.status.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_health_command_follows_the_endpoint(tmp_path, health_server):
    def health(which: str, port: int) -> int:
        # A proxy in the environment must not capture the probe.
        env = {**env_for(tmp_path), "PANGATE_HEALTH_LISTEN": f"0.0.0.0:{port}", "HTTP_PROXY": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9"}
        return subprocess.run(["bash", str(ENTRYPOINT), "health", which], env=env, capture_output=True,
                              timeout=30).returncode
    assert health("healthz", health_server) == 0
    assert health("readyz", health_server) == 1
    assert health("healthz", free_port()) == 1
