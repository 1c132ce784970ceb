"""Audit writer benchmark: caller-side append cost and durable throughput.

    .venv/bin/python scripts/bench_audit.py [--n 200000] [--dir /path/on/the/real/disk]

Run it on the disk the gateway will log to: fsync cost dominates strict mode.
"""

import argparse
import tempfile
import threading
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pangate.audit.log import AuditWriter

RECORD = {"event": "request", "identity": "payments-svc", "host": "api.acquirer.example",
          "method": "POST", "path": "/v1/charges", "outcome": "allow", "status": 200}


def bulk(directory: str, n: int, fsync: bool) -> None:
    w = AuditWriter(directory, Ed25519PrivateKey.generate(), fsync=fsync, max_backlog=n + 10)
    t = time.perf_counter()
    for i in range(n):
        seq = w.append({**RECORD, "i": i})
    t_append = time.perf_counter() - t
    w.wait_durable(seq, 120)
    total = time.perf_counter() - t
    w.close()
    print(f"bulk fsync={fsync}: append {t_append / n * 1e6:.1f} us/record on the caller, "
          f"{n / total:,.0f} records/s durable")


def strict(directory: str, n: int, threads: int) -> None:
    """Every caller waits for its own record to be fsynced (the gateway's strict mode)."""
    w = AuditWriter(directory, Ed25519PrivateKey.generate(), fsync=True)
    per = n // threads

    def worker():
        for i in range(per):
            w.wait_durable(w.append({**RECORD, "i": i}), 30)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    t = time.perf_counter()
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    total = time.perf_counter() - t
    w.close()
    print(f"strict, {threads} waiting callers: {per * threads / total:,.0f} records/s, "
          f"{total / per * 1e3:.2f} ms mean latency")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    for fsync in (True, False):
        with tempfile.TemporaryDirectory(dir=a.dir) as d:
            bulk(d, a.n, fsync)
    for threads in (1, 32):
        with tempfile.TemporaryDirectory(dir=a.dir) as d:
            strict(d, min(a.n, 20_000) if threads > 1 else 2_000, threads)


if __name__ == "__main__":
    main()
