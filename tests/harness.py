"""Real processes for end-to-end tests: a mitmdump (or mitmweb) running the gateway.

Tests synchronize on what the gateway logs (it is live, it is listening, a
decision was made), never on sleeps.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ARM_BLOCK = "|~all|503"


class LogWatcher:
    """Collects a process's output lines and lets tests wait for a pattern."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match:
        """Wait until a line from index `start` on matches; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    tail = "\n".join(self.lines[-40:])
                    raise TimeoutError(f"no line matching {pattern!r}; last output:\n{tail}")
                self._cond.wait(left)

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


def free_port() -> int:
    """A loopback port free right now (for servers that cannot report the port they bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """mitmdump/mitmweb with addons/gateway.py, on a free loopback port."""

    def __init__(self, workdir: Path, policy: str, confdir: Path, upstream_ca: str, env: dict | None = None,
                 options: dict | None = None, tool: str = "mitmdump", script: Path | None = None,
                 arm: bool = True, wait_live: bool = True):
        self.workdir = workdir
        self.policy_path = workdir / "policies.yaml"
        self.policy_path.write_text(policy)
        self.audit_dir = workdir / "audit"
        self.confdir = confdir
        self.ca_cert = str(confdir / "mitmproxy-ca-cert.pem")
        self.tool = tool
        args = [str(VENV_BIN / tool), "-s", str(script or ROOT / "addons" / "gateway.py"),
                "--listen-host", "127.0.0.1", "--listen-port", "0"]
        if tool == "mitmweb":
            # mitmweb 12 prints the configured web port, so "0" would be printed as 0: pick one.
            args += ["--web-host", "127.0.0.1", "--web-port", str(free_port()), "--set", "web_open_browser=false"]
        # The test's options replace these (mitmproxy loads no script when an option is set twice).
        # Every listener on a free port, so the suite runs beside a live gateway (which holds 8089).
        defaults = {"confdir": str(confdir), "ssl_verify_upstream_trusted_ca": upstream_ca,
                    "pangate_policy": str(self.policy_path), "pangate_audit_dir": str(self.audit_dir),
                    "pangate_audit_key": str(workdir / "audit-signing.key"), "termlog_verbosity": "info",
                    "pangate_control_listen": "127.0.0.1:0"}
        if arm:
            defaults["block_list"] = ARM_BLOCK
        options = {**defaults, **(options or {})}
        if "pangate_audit_dir" in (options or {}):
            self.audit_dir = Path(options["pangate_audit_dir"])
        for k, v in options.items():
            for item in (v if isinstance(v, (list, tuple)) else [v]):  # a list sets a sequence option
                args += ["--set", f"{k}={item}"]
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, cwd=workdir, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.log = LogWatcher(self.proc.stdout)
        m = self.log.wait_for(r"HTTP\(S\) proxy listening at .*?:(\d+)")
        self.port = int(m.group(1))
        if tool == "mitmweb" and wait_live:
            w = self.log.wait_for(r"Web server listening at (http://\S+)")
            self.web_url = w.group(1).rstrip("/")
            t = re.search(r"token=([0-9a-f]+)", self.web_url)
            self.web_token = t.group(1) if t else None
            self.web_url = self.web_url.split("?")[0].rstrip("/")
        if wait_live:
            self.log.wait_for(r"pangate gateway live")

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def session(self, identity: str | None = None, token: str | None = None) -> requests.Session:
        """A client that goes through the gateway and trusts only its CA."""
        s = requests.Session()
        s.trust_env = False  # the machine's REQUESTS_CA_BUNDLE would win over verify=
        s.verify = self.ca_cert
        auth = f"{identity or 'x'}:{token}@" if token else ""
        s.proxies = {"https": f"http://{auth}127.0.0.1:{self.port}", "http": f"http://{auth}127.0.0.1:{self.port}"}
        return s

    def curl(self, url: str, *args: str, identity: str | None = None, token: str | None = None) -> subprocess.CompletedProcess:
        proxy = f"http://127.0.0.1:{self.port}"
        cmd = ["curl", "-sS", "--max-time", "20", "--cacert", self.ca_cert, "--proxy", proxy,
               "-w", "\n%{http_code}"]
        if token:
            cmd += ["--proxy-user", f"{identity or 'x'}:{token}"]
        env = {k: v for k, v in os.environ.items() if k not in ("CURL_CA_BUNDLE", "SSL_CERT_FILE",
                                                               "HTTPS_PROXY", "https_proxy", "ALL_PROXY")}
        return subprocess.run(cmd + list(args) + [url], capture_output=True, text=True, env=env, timeout=30)

    def decision(self, request_id: str, timeout: float = 10.0) -> re.Match:
        return self.log.wait_for(rf"pangate decision id={request_id}\b.*", timeout)

    def audit_lines(self) -> list[str]:
        out = []
        for f in sorted(self.audit_dir.glob("*.jsonl")):
            text = f.read_text()
            # Read while the writer appends: a last line without its newline is not written yet.
            whole = text if text.endswith("\n") else text[:text.rfind("\n") + 1]
            out += [line for line in whole.splitlines() if line.strip()]
        return out

    def audit_records(self) -> list[dict]:
        return [json.loads(line) for line in self.audit_lines()]

    def records_for(self, request_id: str, timeout: float = 10.0) -> list[dict]:
        """The audit records of one request, once written (written after the decision line)."""
        deadline = time.monotonic() + timeout
        self.decision(request_id, timeout)
        # The writer thread commits in groups within a bounded delay; poll the file for it.
        while True:
            recs = [r for r in self.audit_records() if r.get("request_id") == request_id]
            if recs or time.monotonic() > deadline:
                return recs
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


class WebAPI:
    """mitmweb's HTTP API as its UI uses it: token login, then the XSRF cookie echoed in a header."""

    def __init__(self, gw):
        self.base = gw.web_url
        self.s = requests.Session()
        self.s.trust_env = False
        self.s.get(self.base + "/", params={"token": gw.web_token}).raise_for_status()
        # Double-submit XSRF, as the UI does: the same value as cookie and X-XSRFToken header.
        self.xsrf = secrets.token_hex(16)
        self.s.cookies.set("_mitmproxy_xsrf", self.xsrf)

    def get(self, path: str) -> requests.Response:
        r = self.s.get(self.base + path)
        r.raise_for_status()
        return r

    def call(self, method: str, path: str, **kw) -> requests.Response:
        r = self.s.request(method, self.base + path, headers={"X-XSRFToken": self.xsrf}, **kw)
        r.raise_for_status()
        return r


def open_tunnel(gw: "Gateway", target: str, proxy_auth: str, server_hostname: str | None = None):
    """A CONNECT tunnel through the gateway with TLS to its interception certificate, as a raw
    socket: for what real clients would not send (odd targets, other SNI, websockets by hand)."""
    import ssl

    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {proxy_auth}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    ctx = ssl.create_default_context(cafile=gw.ca_cert)
    return ctx.wrap_socket(sock, server_hostname=server_hostname or target.rsplit(":", 1)[0])
