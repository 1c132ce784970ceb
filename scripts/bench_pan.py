#!/usr/bin/env python3
"""Micro-benchmark of the PAN masking engines (pangate.pan.engine), one core.

Builds its corpora in memory (default ~50 MB each, fixed seed) and prints one
line per engine (native C, Python reference) and scenario with MB/s (1 MB =
10**6 bytes):

  sparse     typical API JSON (ids, amounts, ms timestamps, UUIDs, phones,
             addresses, ISO dates), one PAN per ~2000 records, Masker().mask
  dense      CSV with one PAN per row (mixed brands/separators), Masker().mask
  streaming  the sparse corpus through Masker().stream() in 64 KiB chunks
  contains   contains_pan() on the sparse corpus with its PANs removed

Then whole processes on --cli-mb (20) MB files: `pangate mask` (stdin to
stdout) against a plain Python regex+Luhn masker (BASELINE below, what a
script written without this engine does), CPU seconds of each child process.

Targets (docs/bench.md): native sparse >= 1 GB/s, dense >= 300 MB/s,
streaming within 20% of buffered; the Python engine no slower than before;
`pangate mask` >= 10x the baseline on sparse bodies, >= 8x on dense ones.
Figures are CPU time (see timeit): other jobs on a shared machine inflate wall
time far more, but a loaded machine still lowers them (shared caches, SMT).
Usage: bench_pan.py [--mb 50] [--repeat 3] [--engines native,python] [--cli-mb 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
try:
    from pangate.pan import engine as pan_engine
    from pangate.pan.engine import Masker
except ImportError:  # not installed: import the package folder directly
    import importlib
    sys.modules["pangate"] = importlib.import_module("addons")
    from pangate.pan import engine as pan_engine
    from pangate.pan.engine import Masker

# A plain Python regex+Luhn masker, the comparison for `pangate mask`: one regex
# over the body for 13-19 digits with optional single space/dash separators, a
# Luhn check per candidate, first 6 and last 4 digits kept. (It finds fewer
# cards than the engine: no IIN table, no dotted or multi-character separators,
# no SAD or track data.)
BASELINE = r"""
import re, sys
RX = re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
DBL = bytes.maketrans(b"0123456789", b"0246813579")
def luhn(d):
    p = len(d) & 1
    return (sum(d[p::2].translate(DBL)) + sum(d[1 - p::2]) - 48 * len(d)) % 10 == 0
def sub(m):
    s = m.group()
    d = s.replace(b" ", b"").replace(b"-", b"")
    if not luhn(d):
        return s
    out, k = bytearray(s), 0
    for i, c in enumerate(s):
        if 48 <= c <= 57:
            if 6 <= k < len(d) - 4:
                out[i] = 42
            k += 1
    return bytes(out)
data = sys.stdin.buffer.read()
sys.stdout.buffer.write(RX.sub(sub, data))
"""

# Luhn-valid test PANs (public test numbers of the card networks).
PANS = ["4111111111111111", "5500000000000004", "340000000000009", "6011000000000004",
        "3530111333300000", "4000056655665556", "2223003122003222", "36227206271667"]
FORMATS = [lambda p: p, lambda p: " ".join(p[i:i + 4] for i in range(0, len(p), 4)),
           lambda p: "-".join(p[i:i + 4] for i in range(0, len(p), 4))]


def sparse_json(size: int, rng: random.Random, pan_every: int = 2000) -> bytes:
    parts, total, k = [], 0, 0
    while total < size:
        rec = {
            "id": f"ord_{rng.getrandbits(48):012x}",
            "uuid": str(uuid.UUID(int=rng.getrandbits(128))),
            "customer_id": rng.randrange(10**8, 10**10),
            "amount": round(rng.uniform(1, 5000), 2),
            "currency": rng.choice(["EUR", "USD", "GBP"]),
            "created_ms": 1732800000000 + rng.randrange(10**9),
            "created_at": "2024-11-%02dT%02d:%02d:%02dZ" % (
                rng.randrange(1, 29), rng.randrange(24), rng.randrange(60), rng.randrange(60)),
            "status": rng.choice(["paid", "pending", "refunded"]),
            "phone": "+1 415 555 %04d" % rng.randrange(10000),
            "shipping_address": {"line1": "%d Market St" % rng.randrange(1, 999),
                                 "postal_code": "%05d" % rng.randrange(100000)},
            "items": [{"sku": "SKU-%06d" % rng.randrange(10**6), "qty": rng.randrange(1, 5),
                       "price": rng.randrange(100, 99999)} for _ in range(rng.randrange(1, 4))],
        }
        k += 1
        if k % pan_every == 0:
            rec["note"] = "card " + rng.choice(FORMATS)(rng.choice(PANS))
        s = json.dumps(rec)
        parts.append(s)
        total += len(s) + 2
    return ("[" + ",\n".join(parts) + "]").encode()


def dense_csv(size: int, rng: random.Random) -> bytes:
    """A card-export style CSV (~120-byte rows), one PAN per row."""
    head = "id,name,email,address,card_number,exp,amount,currency,created_at,status"
    rows, total, k = [head], 0, 0
    while total < size:
        k += 1
        row = "%d,Jane Doe,jane.doe%d@example.com,%d Market St,%s,%02d/%02d,%d.%02d,EUR,%s,%s" % (
            k, rng.randrange(1000), rng.randrange(1, 999), rng.choice(FORMATS)(rng.choice(PANS)),
            rng.randrange(1, 13), rng.randrange(25, 32), rng.randrange(1000), rng.randrange(100),
            "2024-11-28T10:%02d:%02dZ" % (rng.randrange(60), rng.randrange(60)),
            rng.choice(["captured", "authorized", "refunded"]))
        rows.append(row)
        total += len(row) + 1
    return ("\n".join(rows) + "\n").encode()


def timeit(fn, repeat: int) -> float:
    """Best CPU seconds of this (single-threaded) process: a per-core figure that
    other jobs on a shared machine do not inflate the way wall time is."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def child_cpu(cmd: list[str], stdin_path: str, env: dict | None = None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process reading stdin_path, output discarded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(stdin_path, "rb") as f:
        subprocess.run(cmd, stdin=f, stdout=subprocess.DEVNULL, check=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def engine_results(engine: str, corpora: dict, repeat: int) -> dict:
    m = Masker(engine=engine)
    plain = Masker(sad=False, engine=engine)
    sparse, dense, clean = corpora["sparse"], corpora["dense"], corpora["clean"]
    expected = {"sparse": m.mask(sparse)[1], "dense": m.mask(dense)[1]}

    def stream():
        sm = m.stream()
        for i in range(0, len(sparse), 65536):
            sm.feed(sparse[i:i + 65536])
        sm.flush()
        assert sm.count == expected["sparse"]

    def contains():
        # contains_pan() on this engine: the module-level one uses the process's choice
        if plain._native is not None:
            return plain._native.has_pan(clean)
        return any(f[4] in ("pan", "pan_unknown_brand") for f in plain._scan(clean, 0, len(clean)))

    results = {}
    for name, data, fn in [
        ("sparse", sparse, lambda: m.mask(sparse)),
        ("dense", dense, lambda: m.mask(dense)),
        ("streaming", sparse, stream),
        ("contains", clean, contains),
    ]:
        secs = timeit(fn, repeat)
        results[name] = {"mb": round(len(data) / 1e6, 1), "seconds": round(secs, 4),
                         "mb_per_s": round(len(data) / 1e6 / secs, 1),
                         "masked": expected.get(name, expected["sparse"] if name == "streaming" else 0)}
        print(f"{engine:6s} {name:10s} {results[name]['mb_per_s']:8.1f} MB/s  "
              f"({results[name]['mb']} MB in {secs:.3f}s, masked={results[name]['masked']})", flush=True)
    return results


def cli_results(corpora: dict, mb: float, repeat: int, engines: list[str]) -> dict:
    """`pangate mask` vs the BASELINE masker, whole processes, on mb-sized files."""
    pangate = [sys.executable, "-m", "pangate.cli.main", "mask"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("sparse", "dense"):
            path = os.path.join(tmp, name)
            data = corpora[name]
            Path(path).write_bytes(data)
            row = {"mb": round(len(data) / 1e6, 1)}
            runs = {"baseline": ([sys.executable, "-c", BASELINE], None)}
            for e in engines:
                runs["pangate_" + e] = (pangate, {**os.environ, "PANGATE_ENGINE": e})
            for label, (cmd, env) in runs.items():
                best = min((child_cpu(cmd, path, env) for _ in range(repeat)), key=lambda r: r[0])
                row[label] = {"cpu_s": round(best[0], 3), "wall_s": round(best[1], 3)}
            for e in engines:
                row["speedup_" + e] = round(row["baseline"]["cpu_s"] / row["pangate_" + e]["cpu_s"], 1)
            out[name] = row
            print(f"cli    {name:10s} baseline {row['baseline']['cpu_s']:.3f}s  " + "  ".join(
                f"pangate mask ({e}) {row['pangate_' + e]['cpu_s']:.3f}s = x{row['speedup_' + e]}"
                for e in engines) + f"  (CPU, {row['mb']} MB)", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (default 50)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    ap.add_argument("--engines", default="native,python", help="engines to measure (default native,python)")
    ap.add_argument("--cli-mb", type=float, default=20.0, help="file size for the `pangate mask` runs; 0: skip")
    ap.add_argument("--json", action="store_true", help="also print one JSON result line")
    args = ap.parse_args(argv)

    engines = [e for e in args.engines.split(",") if e]
    if "native" in engines and pan_engine._native._MOD is None:
        print(f"native engine not available ({pan_engine._native._WHY}): measuring python only", file=sys.stderr)
        engines.remove("native")
    print(f"process engine: {pan_engine.ENGINE_DETAIL}", flush=True)
    rng = random.Random(7812)
    size = int(args.mb * 1e6)
    sparse, dense = sparse_json(size, rng), dense_csv(size, rng)
    clean = sparse.replace(b'"note"', b'"n0te"')
    for p in PANS:
        for f in FORMATS:
            clean = clean.replace(f(p).encode(), b"x" * len(f(p)))
    corpora = {"sparse": sparse, "dense": dense, "clean": clean}
    results = {e: engine_results(e, corpora, args.repeat) for e in engines}
    if args.cli_mb:
        if args.cli_mb != args.mb:
            rng = random.Random(7812)
            size = int(args.cli_mb * 1e6)
            corpora = {"sparse": sparse_json(size, rng), "dense": dense_csv(size, rng)}
        results["cli"] = cli_results(corpora, args.cli_mb, args.repeat, engines)
    if args.json:
        print(json.dumps({"bench": "pan", "python": sys.version.split()[0], "engine": pan_engine.ENGINE,
                          "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
