#!/usr/bin/env python3
"""The side-by-side benchmark behind scripts/bench: bare mitmdump vs the full pangate chain.

One run: a real nginx HTTPS upstream with its own test CA, a bare mitmdump and
a pangate mitmdump (identity with JWT, policy, credentials, masking, signed
hash-chained audit, recordings when that addon exists), both driven by `hey`
through the proxy with 16 keep-alive clients, scenario by scenario
(interleaved, so drift hits both alike). Then: the PAN engine micro-benchmark,
an asyncio slow-callback pass, an optional py-spy profile, and 2 gateway
processes behind an nginx `stream` balancer against 1. Writes docs/bench/*.json,
docs/bench.md and docs/bench.svg (scripts/bench_report.py). Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_report  # noqa: E402
from bench_env import Gateway, Nginx, cpu_seconds, free_port, hey, vm_hwm_mb  # noqa: E402
from bench_pan import dense_csv, sparse_json  # noqa: E402  (the PAN engine's own corpora)
from pangate.pan.engine import contains_pan  # noqa: E402
from pangate.dev.pki import make_ca, make_leaf  # noqa: E402
from pangate.identity.tokens import issue, keygen  # noqa: E402

# name, path on the upstream, label, hey concurrency
SCENARIOS = [
    ("small", "/small.json", "small JSON (~0.4 KB)", 16),
    ("sparse_1m", "/sparse.json", "PAN-sparse JSON, 1 MB", 16),
    ("dense_1m", "/dense.csv", "PAN-dense export, 1 MB (a PAN per row)", 16),
    ("large_16m", "/large.json", "large body, 16 MB, streamed (PAN-sparse JSON)", 4),
]

POLICY = """version: 1
issuers:
  pangate:
    type: pangate
    public_key_file: {pub}
identities:
  bench:
    issuer: pangate
    roles: [exporter]
roles:
  exporter:
    allow:
      - destination: upstream
        methods: [GET]
        paths: ["/**"]
destinations:
  upstream:
    host: localhost
    port: {port}
    card_data: true
    addresses: [127.0.0.1/32]
    credential:
      type: bearer
      env: UPSTREAM_KEY
"""

SMALL = {"id": "ch_3PqK2x", "object": "charge", "amount": 4200, "currency": "eur", "status": "succeeded",
         "created": 1732800000, "customer": "cus_QwErTy123", "description": "order 81723",
         "payment_method_details": {"card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2027}},
         "metadata": {"order_id": "81723", "shop": "eu-west"}}


def make_fixture(work: Path) -> dict:
    """PKI, interception CA, token key, bodies and policy for one run."""
    from mitmproxy.certs import CertStore

    pki = work / "pki"
    ca = make_ca(str(pki), "bench-upstream-ca")
    cert, key = make_leaf(ca, str(pki), ["localhost", "127.0.0.1"], "nginx")
    confdir = work / "gateway-ca"
    CertStore.from_store(str(confdir), "mitmproxy", 2048)
    keygen(work / "token.key")
    www = work / "www"
    www.mkdir(parents=True)
    rng = random.Random(7)
    (www / "small.json").write_text(json.dumps(SMALL))
    (www / "sparse.json").write_bytes(sparse_json(1_000_000, rng))
    (www / "dense.csv").write_bytes(dense_csv(1_000_000, rng))
    (www / "large.json").write_bytes(sparse_json(16_000_000, rng))
    for p in [work, www, *www.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)  # nginx workers run as nobody
    return {"ca": ca[0], "cert": cert, "key": key, "confdir": confdir, "www": www,
            "token_key": str(work / "token.key"), "secret": "sk_bench_" + os.urandom(8).hex()}


def sanity(fx: dict, bare: Gateway, gw: Gateway, nginx_port: int, token: str) -> dict:
    """The pangate variant really does the work being measured; the bare one really does not."""
    import requests

    def session(g: Gateway, auth: str = "") -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # verify against the gateway CA, not the machine bundle
        s.verify = str(fx["confdir"] / "mitmproxy-ca-cert.pem")
        s.proxies = {"https": f"http://{auth}127.0.0.1:{g.port}"}
        return s

    base = f"https://localhost:{nginx_port}"
    p = session(gw, f"bench:{token}@")
    checks = {
        "pangate_credential_injected": p.get(base + "/auth-check").status_code == 204,
        "pangate_dense_masked": not contains_pan(p.get(base + "/dense.csv").content),
        "pangate_streamed_16m_masked": not contains_pan(p.get(base + "/large.json").content),
        "pangate_no_token_407": False,
        "bare_dense_has_pans": contains_pan(session(bare).get(base + "/dense.csv").content),
        "bare_no_credential": session(bare).get(base + "/auth-check").status_code == 401,
    }
    try:
        session(gw).get(base + "/small.json")
    except requests.exceptions.ProxyError as e:
        checks["pangate_no_token_407"] = "407" in str(e)
    return checks


def measure(g: Gateway, url: str, scn: tuple, args, rate: float | None = None) -> dict:
    """Warm up, reset the peak-RSS mark, run hey for the duration, read the peak."""
    name, _, _, conc = scn
    hey(url, g.proxy, args.warmup, conc)
    reset = g.reset_hwm()
    audit0, cpu0 = g.audit_lines(), cpu_seconds(g.pid)
    r = hey(url, g.proxy, args.duration, conc, rate)
    # CPU per request is what a busy shared machine disturbs least: the capacity ratio.
    r["cpu_ms_per_req"] = round((cpu_seconds(g.pid) - cpu0) * 1000 / max(1, r["requests"]), 3)
    r["loadavg_1m"] = round(os.getloadavg()[0], 2)
    r["peak_rss_mb"] = vm_hwm_mb(g.pid)
    r["peak_rss_scope"] = "scenario" if reset else "process lifetime"
    time.sleep(0.3)  # the audit writer commits in groups within ~50 ms
    if g.audit_dir:
        r["audit_records"] = g.audit_lines() - audit0
    return r


def loopwatch(fx: dict, base: str, nginx_port: int, work: Path, token: str, args, pangate: bool) -> dict:
    """Slow-callback pass (asyncio debug mode, threshold 10 ms), per scenario, short runs."""
    out = work / ("loopwatch-pangate.json" if pangate else "loopwatch-bare.json")
    g = Gateway.start(work, fx, "loopwatch-" + ("pangate" if pangate else "bare"), pangate, nginx_port,
                      extra_scripts=[ROOT / "scripts" / "bench_loopwatch.py"],
                      options={"bench_loopwatch_out": str(out)}, env={"PYTHONASYNCIODEBUG": "1"}, token=token)
    windows = {}
    time.sleep(1.0)  # let start-up callbacks (script load, CA) finish outside the windows
    try:
        for scn in SCENARIOS:
            t0 = time.time()
            hey(base + scn[1], g.proxy, args.loop_duration, scn[3])
            windows[scn[0]] = (t0, time.time())
        time.sleep(1.0)  # one more snapshot
    finally:
        g.stop()
    doc = json.loads(out.read_text()) if out.exists() else {"events": [], "count": 0}
    res = {}
    for name, (a, b) in windows.items():
        ev = [e for e in doc["events"] if a <= e[0] <= b + 0.5]
        worst = sorted(ev, key=lambda e: -e[1])[:3]
        res[name] = {"slow_callbacks": len(ev), "max_ms": round(max((e[1] for e in ev), default=0) * 1000, 1),
                     "worst": [{"ms": round(e[1] * 1000, 1), "handle": e[2]} for e in worst]}
    return res


def profile(g: Gateway, base: str, work: Path, args) -> dict:
    """py-spy samples the pangate process while hey drives one scenario at a time."""
    pyspy = Path(sys.executable).parent / "py-spy"
    res = {}
    for scn in [s for s in SCENARIOS if s[0] in ("small", "dense_1m", "sparse_1m")]:
        raw = work / f"profile-{scn[0]}.txt"
        spy = subprocess.Popen([str(pyspy), "record", "--pid", str(g.pid), "--rate", "250", "--nonblocking",
                                "--format", "raw", "--duration", str(int(args.profile_duration)), "-o", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hey(base + scn[1], g.proxy, args.profile_duration + 1, scn[3])
        spy.wait(30)
        res[scn[0]] = bench_report.collapse(raw) if raw.exists() else {"error": "py-spy wrote nothing"}
    return res


PROCESSES = (1, 2, 4)


def scale(fx: dict, base: str, nginx_port: int, work: Path, token: str, args) -> dict:
    """1, 2 and 4 pangate processes behind an nginx stream (TCP) balancer; each its own audit dir."""
    gws = [Gateway.start(work, fx, f"scale-{i}", True, nginx_port, token=token) for i in range(max(PROCESSES))]
    res = {}
    try:
        for n in PROCESSES:
            lb_port = free_port()
            lb = Nginx.stream(work / f"lb{n}", lb_port, [g.port for g in gws[:n]])
            try:
                proxy = f"http://bench:{token}@127.0.0.1:{lb_port}"
                scn = SCENARIOS[0]
                hey(base + scn[1], proxy, args.warmup, scn[3] * n)
                cpu0 = [cpu_seconds(g.pid) for g in gws[:n]]
                r = hey(base + scn[1], proxy, args.duration, scn[3] * n)
                r["concurrency"] = scn[3] * n
                r["cpu_s_per_process"] = [round(cpu_seconds(g.pid) - c, 1) for g, c in zip(gws[:n], cpu0)]
                r["loadavg_1m"] = round(os.getloadavg()[0], 2)
                res[f"{n}_process"] = r
            finally:
                lb.stop()
    finally:
        for g in gws:
            g.stop()
    return res


def engine_rows(fx: dict, base: str, nginx_port: int, work: Path, token: str, args) -> dict:
    """The gateway on the Python reference engine (PANGATE_ENGINE=python), on the scenarios
    where masking is the work; the main rows run the engine the install built (native)."""
    g = Gateway.start(work, fx, "pangate-python", True, nginx_port, token=token, env={"PANGATE_ENGINE": "python"})
    try:
        return {scn[0]: measure(g, base + scn[1], scn, args) for scn in SCENARIOS if scn[0] in ("small", "dense_1m")}
    finally:
        g.stop()


def versions() -> dict:
    def out(cmd):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception as e:  # a missing tool is reported, not fatal
            return f"unknown ({e})"
    import mitmproxy.version
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"python": platform.python_version(), "mitmproxy": mitmproxy.version.VERSION,
            "nginx": out(["nginx", "-v"]), "kernel": platform.release(), "cpus": os.cpu_count(), "cpu": cpu,
            "hey": "hey (rakyll), Debian package"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=15, help="seconds per scenario per variant (default 15)")
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--loop-duration", type=float, default=5, help="seconds per scenario in the loop pass")
    ap.add_argument("--profile", action="store_true", help="also profile pangate with py-spy")
    ap.add_argument("--profile-duration", type=float, default=10)
    ap.add_argument("--skip", default="", help="comma list of: loopwatch,scale,pan,engines")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where bench.md/bench.svg/bench/ go")
    ap.add_argument("--command", default="scripts/bench", help="recorded in the report")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    started = time.time()
    work = ROOT / "var" / "bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fx = make_fixture(work)
    token = issue(fx["token_key"], "bench", 3600)
    nginx_port = free_port()
    (work / "policies.yaml").write_text(POLICY.format(pub=fx["token_key"] + ".pub", port=nginx_port))
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": args.command, "env": versions(),
               "duration_s": args.duration, "scenarios": {}, "labels": {s[0]: s[2] for s in SCENARIOS}}
    phases = {"setup": round(time.time() - started, 1)}
    mark = [time.time()]

    def phase(name: str) -> None:
        phases[name] = round(time.time() - mark[0], 1)
        mark[0] = time.time()

    up = Nginx.https(work / "nginx", nginx_port, fx)
    gws = []
    try:
        base = f"https://localhost:{nginx_port}"
        print(f"upstream nginx on {base}; direct baseline ...", flush=True)
        results["direct_small"] = hey(f"https://127.0.0.1:{nginx_port}/small.json", None, min(args.duration, 5), 16)
        bare = Gateway.start(work, fx, "bare", False, nginx_port)
        gw = Gateway.start(work, fx, "pangate", True, nginx_port, token=token)
        gws = [bare, gw]
        results["recordings"] = gw.recordings is not None
        results["sanity"] = sanity(fx, bare, gw, nginx_port, token)
        print("sanity:", results["sanity"], flush=True)
        if not all(results["sanity"].values()):
            print("sanity checks failed: the numbers would not mean what they say", file=sys.stderr)
            return 1
        for scn in SCENARIOS:
            row = {}
            for g in (bare, gw):
                print(f"{scn[0]:10s} {g.name:8s} ...", end=" ", flush=True)
                row[g.name] = r = measure(g, base + scn[1], scn, args)
                print(f"{r['rps']:8.1f} req/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
                      f"cpu {r['cpu_ms_per_req']:.2f} ms/req  rss {r['peak_rss_mb']:.0f} MB  errors {r['errors']}  "
                      f"load {r['loadavg_1m']}", flush=True)
            results["scenarios"][scn[0]] = row
        # Added latency at equal load: both variants at half the throughput the slower one
        # reached, so neither is saturated and the difference is pangate's work, not queueing.
        small = results["scenarios"]["small"]
        rate = max(10.0, round(min(small["bare"]["rps"], small["pangate"]["rps"]) * 0.5, -1))
        results["fixed_rate"] = {"rate": rate}
        for g in (bare, gw):
            # 2 paced clients: hey's per-worker tickers fire together, so 16 paced workers
            # would send bursts of 16 and measure queueing inside each burst.
            results["fixed_rate"][g.name] = r = hey(base + "/small.json", g.proxy, args.duration, 2, rate)
            print(f"small @ {rate:.0f} req/s {g.name:8s} p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms", flush=True)
        phase("measure")
        if gw.recordings is not None:
            results["recordings_files"] = sum(1 for p in gw.recordings.rglob("*") if p.is_file())
        if args.profile:
            print("profiling pangate with py-spy ...", flush=True)
            results["profile"] = profile(gw, base, work, args)
            phase("profile")
        for g in gws:
            g.stop()
        gws = []
        if "pan" not in skip:
            print("PAN engine micro-benchmark ...", flush=True)
            p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_pan.py"), "--json", "--mb", "10",
                                "--repeat", "2", "--cli-mb", "20"], capture_output=True, text=True, timeout=600)
            results["pan_engine"] = json.loads(p.stdout.strip().splitlines()[-1])["results"]
            phase("pan_engine")
        if "loopwatch" not in skip:
            print("event-loop pass (asyncio debug, 10 ms threshold) ...", flush=True)
            results["loopwatch"] = {v: loopwatch(fx, base, nginx_port, work, token, args, v == "pangate")
                                    for v in ("bare", "pangate")}
            phase("loopwatch")
        if "engines" not in skip:
            print("the gateway on the Python engine ...", flush=True)
            results["python_engine"] = engine_rows(fx, base, nginx_port, work, token, args)
            phase("python_engine")
        if "scale" not in skip:
            print("1, 2 and 4 pangate processes behind nginx stream ...", flush=True)
            results["scale"] = scale(fx, base, nginx_port, work, token, args)
            phase("scale")
    finally:
        for g in gws:
            g.stop()
        up.stop()
    results["elapsed_s"] = round(time.time() - started, 1)
    results["phases_s"] = phases
    out = Path(args.out)
    (out / "bench").mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"bench-{stamp}.json", "latest.json"):
        (out / "bench" / name).write_text(json.dumps(results, indent=1))
    bench_report.write(results, out / "bench.md", out / "bench.svg")
    print()
    print(bench_report.table(results))
    print(f"\nwrote {out / 'bench.md'}, {out / 'bench.svg'}, {out / 'bench' / 'latest.json'} "
          f"in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
