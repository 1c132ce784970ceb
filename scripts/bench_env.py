"""Processes for scripts/bench: nginx (HTTPS upstream, or stream balancer), mitmdump, hey.

Everything binds and targets 127.0.0.1. Processes are started in their own
session and stopped by their own pid/process group, never by name.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _wait(pred, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} did not come up in {timeout:.0f}s\n{tail}")


def _stop(proc: subprocess.Popen, sig=signal.SIGINT) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Gateway:
    """One mitmdump: bare (no scripts) or the pangate chain, on a free loopback port."""

    def __init__(self, name, proc, port, log, proxy, audit_dir, recordings):
        self.name, self.proc, self.port, self.log, self.proxy = name, proc, port, log, proxy
        self.audit_dir, self.recordings = audit_dir, recordings

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, work: Path, fx: dict, name: str, pangate: bool, nginx_port: int, *,
              extra_scripts=(), options=None, env=None, token=None) -> "Gateway":
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        args = [str(VENV_BIN / "mitmdump")]
        if pangate:
            args += ["-s", str(ROOT / "addons" / "gateway.py")]
        for s in extra_scripts:
            args += ["-s", str(s)]
        args += ["--listen-host", "127.0.0.1", "--listen-port", "0",
                 "--set", f"confdir={fx['confdir']}",
                 "--set", f"ssl_verify_upstream_trusted_ca={fx['ca']}",
                 # Bodies over 4 MiB stream (the 16 MB scenario), 1 MB ones are buffered: same for both
                 # variants; pangate masks streamed bodies chunk by chunk (masking.BodyStream).
                 "--set", "stream_large_bodies=4m"]
        audit_dir = recordings = None
        if pangate:
            audit_dir = d / "audit"  # one audit chain per process: one writer per directory
            args += ["--set", "block_list=|~all|503",
                     "--set", f"pangate_policy={work / 'policies.yaml'}",
                     "--set", f"pangate_audit_dir={audit_dir}",
                     "--set", f"pangate_audit_key={d / 'audit-signing.key'}"]
            recordings = d / "recordings"  # the full chain records every flow
            args += ["--set", f"pangate_recordings_dir={recordings}"]
        for k, v in (options or {}).items():
            args += ["--set", f"{k}={v}"]
        full_env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV}
        full_env.update({"UPSTREAM_KEY": fx["secret"], "PYTHONUNBUFFERED": "1", **(env or {})})
        log = d / "mitmdump.log"
        # Output goes to a file, as a service's journal would take it; both variants log alike.
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, cwd=d, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

        def port():
            if proc.poll() is not None:
                raise RuntimeError(f"mitmdump {name} exited:\n{log.read_text()[-3000:]}")
            m = re.search(r"HTTP\(S\) proxy listening at .*?:(\d+)", log.read_text())
            return int(m.group(1)) if m else None

        p = _wait(port, 30, f"mitmdump {name}", log)
        if pangate:
            _wait(lambda: "pangate gateway live" in log.read_text(), 30, f"pangate {name}", log)
        auth = f"bench:{token}@" if pangate and token else ""
        return cls(name, proc, p, log, f"http://{auth}127.0.0.1:{p}", audit_dir, recordings)

    def reset_hwm(self) -> bool:
        """Reset the peak-RSS mark (Linux clear_refs 5) so the peak is per scenario."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def audit_lines(self) -> int:
        if not self.audit_dir or not self.audit_dir.exists():
            return 0
        n = 0
        for f in self.audit_dir.glob("*.jsonl"):
            with open(f, "rb") as fh:
                n += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        return n

    def stop(self) -> None:
        _stop(self.proc)


HTTPS_CONF = """daemon off;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    gzip off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    types {{ application/json json; text/csv csv; }}
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache shared:SSL:1m;
        root {www};
        # 204 only when the gateway injected the backend credential: proves pangate did.
        location = /auth-check {{
            if ($http_authorization = "Bearer {secret}") {{ return 204; }}
            return 401;
        }}
    }}
}}
"""

STREAM_CONF = """daemon off;
load_module {module};
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
stream {{
    # TCP balancing: a CONNECT tunnel and all its requests stay on one gateway,
    # so the identity bound at CONNECT stays valid for the tunnel's lifetime.
    upstream gateways {{
        least_conn;
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_pass gateways;
    }}
}}
"""


class Nginx:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port

    @classmethod
    def _run(cls, d: Path, conf: str, port: int) -> "Nginx":
        d.mkdir(parents=True, exist_ok=True)
        (d / "nginx.conf").write_text(conf)
        proc = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], cwd=d,
                                stdout=open(d / "stdout.log", "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)

        def up():
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(d / 'stdout.log').read_text()} {(d / 'error.log').read_text()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait(up, 15, "nginx", d / "error.log")
        return cls(proc, port)

    @classmethod
    def https(cls, d: Path, port: int, fx: dict) -> "Nginx":
        return cls._run(d, HTTPS_CONF.format(d=d, port=port, cert=fx["cert"], key=fx["key"], www=fx["www"],
                                             secret=fx["secret"]), port)

    @classmethod
    def stream(cls, d: Path, port: int, backends: list[int]) -> "Nginx":
        module = next((str(p) for p in [Path("/usr/lib/nginx/modules/ngx_stream_module.so"),
                                        Path("/usr/share/nginx/modules/ngx_stream_module.so")] if p.exists()), None)
        conf = STREAM_CONF.format(d=d, port=port, servers="\n".join(f"        server 127.0.0.1:{b};" for b in backends),
                                  module=module or "modules/ngx_stream_module.so")
        if module is None:  # built in (nginx -V shows --with-stream without =dynamic)
            conf = conf.replace("load_module modules/ngx_stream_module.so;\n", "")
        return cls._run(d, conf, port)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGQUIT)  # graceful: lets workers finish


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return round(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))], 2)


def hey(url: str, proxy: str | None, duration: float, conc: int, rate: float | None = None) -> dict:
    """Run hey for `duration` seconds with `conc` keep-alive clients; percentiles from its per-request CSV.

    hey (Go net/http) sends the proxy URL's user:password as Proxy-Authorization
    on CONNECT. It does not verify the server certificate (hard-coded in hey);
    scripts/bench verifies the gateway's certificates separately (sanity checks).
    The CSV, not hey's summary, gives the percentiles: the summary omits p99 when
    fewer than ~100 requests ran (the 16 MB scenario).
    """
    if not url.startswith("https://127.0.0.1:") and not url.startswith("https://localhost:"):
        raise ValueError("the benchmark targets loopback only")
    cmd = ["hey", "-z", f"{duration:g}s", "-c", str(conc), "-t", "30", "-disable-compression", "-o", "csv"]
    if proxy:
        cmd += ["-x", proxy]
    if rate:
        cmd += ["-q", f"{rate / conc:g}"]
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV}
    p = subprocess.run(cmd + [url], capture_output=True, text=True, env=env, timeout=duration + 90)
    ok_ms, codes, end = [], {}, 0.0
    for line in p.stdout.splitlines()[1:]:
        f = line.split(",")
        if len(f) != 8:
            continue
        rt, code, offset = float(f[0]), int(f[6] or 0), float(f[7])
        codes[code] = codes.get(code, 0) + 1
        end = max(end, offset + rt)
        if 200 <= code < 400:
            ok_ms.append(rt * 1000)
    ok_ms.sort()
    secs = max(end, duration * 0.5) if ok_ms else duration  # wall time from hey's start to the last response
    return {"requests": len(ok_ms), "rps": round(len(ok_ms) / secs, 1), "seconds": round(secs, 2),
            "p50_ms": _pct(ok_ms, 0.50), "p90_ms": _pct(ok_ms, 0.90), "p99_ms": _pct(ok_ms, 0.99),
            "max_ms": round(ok_ms[-1], 1) if ok_ms else float("nan"),
            "avg_ms": round(sum(ok_ms) / len(ok_ms), 2) if ok_ms else float("nan"), "status": codes,
            "errors": sum(n for c, n in codes.items() if not 200 <= c < 400)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
