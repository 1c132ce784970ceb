"""Turns scripts/bench results into the console table, docs/bench.md and docs/bench.svg.

The SVG is written by hand (no plotting dependency for a two-panel bar chart).
The "Analysis" part of docs/bench.md, between the analysis markers, is written
by people and kept across runs; everything else is regenerated.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path

# The performance issue's targets: pangate/bare requests/s in the same run, and the rest.
TARGETS = {"small": 0.80, "sparse_1m": 0.60, "dense_1m": 0.40, "large_16m": 0.60}
ADDED_P99_MS = 3.0
LOOP_MS = 10.0
ENGINE_MB_S = {"sparse": 1000, "dense": 300}  # in-process, native engine
CLI_SPEEDUP = {"sparse": 10, "dense": 8}  # `pangate mask` whole process vs a plain regex+Luhn masker
SCALE_2 = 1.85
START, END = "<!-- analysis:start -->", "<!-- analysis:end -->"


def _ratio(row: dict) -> float:
    return row["pangate"]["rps"] / row["bare"]["rps"] if row["bare"]["rps"] else 0.0


def table(res: dict) -> str:
    head = ("| scenario | bare req/s | pangate req/s | pangate/bare | target | bare p50 / p99 ms "
            "| pangate p50 / p99 ms | CPU ms/req bare / pangate | CPU ratio | peak RSS MB bare / pangate |")
    lines = [head, "|" + "---|" * 10]
    for name, row in res["scenarios"].items():
        b, p, r = row["bare"], row["pangate"], _ratio(row)
        t = TARGETS.get(name)
        target = f">= {t:.0%} {'met' if r >= t else 'MISSED'}" if t else "-"
        lines.append(f"| {res['labels'][name]} | {b['rps']:.1f} | {p['rps']:.1f} | {r:.0%} | {target} "
                     f"| {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | {p['p50_ms']:.1f} / {p['p99_ms']:.1f} "
                     f"| {b['cpu_ms_per_req']:.2f} / {p['cpu_ms_per_req']:.2f} "
                     f"| {b['cpu_ms_per_req'] / p['cpu_ms_per_req']:.0%} "
                     f"| {b['peak_rss_mb']:.0f} / {p['peak_rss_mb']:.0f} |")
    out = ["\n".join(lines)]
    if "direct_small" in res:
        d = res["direct_small"]
        out.append(f"nginx direct (no proxy), small JSON: {d['rps']:.0f} req/s, p99 {d['p99_ms']:.1f} ms")
    fr = res.get("fixed_rate")
    if fr:
        added = fr["pangate"]["p99_ms"] - fr["bare"]["p99_ms"]
        out.append(f"small JSON at a fixed {fr['rate']:.0f} req/s (half the slower variant's throughput, 2 paced clients; reached: "
                   f"bare {fr['bare']['rps']:.0f}, pangate {fr['pangate']['rps']:.0f}): p99 bare {fr['bare']['p99_ms']:.2f} ms, "
                   f"pangate {fr['pangate']['p99_ms']:.2f} ms, added {added:+.2f} ms "
                   f"(target <= {ADDED_P99_MS:g} ms: {'met' if added <= ADDED_P99_MS else 'MISSED'})")
    if "pan_engine" in res:
        pe = res["pan_engine"]
        if "sparse" in pe:  # results of the single-engine bench_pan.py
            pe = {"python": pe}
        for eng, per in pe.items():
            if eng == "cli":
                out.append("`pangate mask` whole process vs a plain Python regex+Luhn masker (CPU s): " + ", ".join(
                    f"{k} {v['mb']} MB " + ", ".join(f"x{v[s]}" + s[len("speedup"):].replace("_", " ")
                                                   for s in v if s.startswith("speedup_"))
                    for k, v in per.items()))
                continue
            out.append(f"PAN engine {eng} (scripts/bench_pan.py, one core): " +
                       ", ".join(f"{k} {v['mb_per_s']:.0f} MB/s" for k, v in per.items()))
    lw = res.get("loopwatch")
    if lw:
        for variant, per in lw.items():
            worst = max((v["max_ms"] for v in per.values()), default=0)
            out.append(f"event loop, {variant}: slowest callback {worst:.1f} ms (" +
                       ", ".join(f"{k} {v['max_ms']:.0f} ms/{v['slow_callbacks']}x" for k, v in per.items()) + ")")
    sc = res.get("scale")
    if sc:
        one = sc["1_process"]
        out.append("small JSON via nginx stream: " + ", ".join(
            f"{k.split('_')[0]} pangate process{'es' if k != '1_process' else ''} {v['rps']:.0f} req/s "
            f"(p99 {v['p99_ms']:.1f} ms, x{v['rps'] / one['rps']:.2f})" for k, v in sc.items()))
    py = res.get("python_engine")
    if py:
        out.append("pangate on the Python engine (PANGATE_ENGINE=python): " + ", ".join(
            f"{res['labels'][k].split(' (')[0]} {v['rps']:.1f} req/s, CPU {v['cpu_ms_per_req']:.2f} ms/req "
            f"(native above: {res['scenarios'][k]['pangate']['rps']:.1f} req/s, "
            f"{res['scenarios'][k]['pangate']['cpu_ms_per_req']:.2f} ms/req)" for k, v in py.items()))
    return "\n".join(out)


def targets(res: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, wanted, measured, met) for each of the performance issue's targets in this run."""
    rows = []
    for name, want in TARGETS.items():
        row = res["scenarios"].get(name)
        if row:
            r = _ratio(row)
            rows.append((f"{res['labels'][name]}: pangate/bare req/s", f">= {want:.0%}", f"{r:.0%}", r >= want))
    fr = res.get("fixed_rate")
    if fr:
        added = fr["pangate"]["p99_ms"] - fr["bare"]["p99_ms"]
        rows.append((f"small JSON p99 added at {fr['rate']:.0f} req/s", f"<= {ADDED_P99_MS:g} ms", f"{added:+.2f} ms",
                     added <= ADDED_P99_MS))
    nat = (res.get("pan_engine") or {}).get("native")
    if nat:
        for k, want in ENGINE_MB_S.items():
            if k in nat:
                v = nat[k]["mb_per_s"]
                rows.append((f"native engine in-process, {k}", f">= {want} MB/s", f"{v:.0f} MB/s", v >= want))
    cli = (res.get("pan_engine") or {}).get("cli")
    if cli:
        for k, want in CLI_SPEEDUP.items():
            v = cli.get(k, {}).get("speedup_native")
            if v is not None:
                rows.append((f"`pangate mask` whole process, {k}, vs plain regex+Luhn", f">= {want}x", f"{v}x",
                             v >= want))
    lw = (res.get("loopwatch") or {}).get("pangate")
    if lw:
        worst = max((v["max_ms"] for v in lw.values()), default=0)
        rows.append(("slowest pangate event-loop callback under load", f"<= {LOOP_MS:g} ms", f"{worst:.1f} ms",
                     worst <= LOOP_MS))
    sc = res.get("scale")
    if sc and "2_process" in sc:
        x = sc["2_process"]["rps"] / sc["1_process"]["rps"]
        rows.append(("2 processes vs 1", f">= x{SCALE_2}", f"x{x:.2f}", x >= SCALE_2))
    return rows


def _targets_md(res: dict) -> str:
    lines = ["| target | wanted | this run | |", "|---|---|---|---|"]
    for what, want, got, met in targets(res):
        lines.append(f"| {what} | {want} | {got} | {'met' if met else 'MISSED'} |")
    return "\n".join(lines) + "\n"


def collapse(raw: Path, top: int = 15) -> dict:
    """Summarise py-spy --format raw output.

    `loop` is the share of samples on the event-loop thread (stacks through
    run_forever); `pangate_on_loop` the part of it inside pangate code
    (frames from addons/); `threads` the other threads by their first pangate
    frame. `self` is where samples land; `pangate_inclusive` which pangate
    functions (with callees) cost most.
    """
    self_c, incl_c, threads, total, loop, ours = Counter(), Counter(), Counter(), 0, 0, 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n = int(n)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [f for f in frames if "(" in f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_c[frames[-1]] += n
        mine = [f for f in frames if "(addons/" in f]
        for f in set(mine):
            incl_c[f] += n
        if any(f.startswith("BaseEventLoop.run_forever") for f in frames):
            loop += n
            ours += n if mine else 0
        else:
            threads[mine[0] if mine else frames[min(2, len(frames) - 1)]] += n

    def pct(c: Counter) -> list:
        return [[f, round(100 * v / total, 1)] for f, v in c.most_common(top)]

    return {"samples": total, "loop": round(100 * loop / max(1, total), 1),
            "pangate_on_loop": round(100 * ours / max(1, total), 1), "threads": pct(threads),
            "self": pct(self_c), "pangate_inclusive": pct(incl_c)}


def svg(res: dict) -> str:
    """Two panels, requests/s and p99 latency; bars scaled per scenario, labelled in absolute units."""
    names = list(res["scenarios"])
    w, row_h, left, bar_w = 920, 56, 220, 260
    panels = [("requests/s (higher is better)", "rps", "{:.0f}"), ("p99 latency, ms (lower is better)", "p99_ms", "{:.1f}")]
    h = 70 + len(names) * row_h + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="15" font-weight="bold">pangate vs bare mitmdump '
           f'({html.escape(res["started"])}, {res["env"]["cpus"]} cores)</text>']
    colors = {"bare": "#9e9e9e", "pangate": "#1565c0"}
    for pi, (title, key, fmt) in enumerate(panels):
        x0 = left + pi * (bar_w + 80)
        out.append(f'<text x="{x0}" y="48" font-weight="bold">{title}</text>')
        for i, n in enumerate(names):
            y = 62 + i * row_h
            if pi == 0:
                short = res["labels"][n].split(" (")[0]  # the long label is in the table
                out.append(f'<text x="10" y="{y + 22}">{html.escape(short)}</text>')
            vals = {v: res["scenarios"][n][v][key] for v in ("bare", "pangate")}
            top = max(vals.values()) or 1
            for j, v in enumerate(("bare", "pangate")):
                bw = max(1, bar_w * vals[v] / top)
                by = y + j * 20
                out.append(f'<rect x="{x0}" y="{by}" width="{bw:.1f}" height="16" fill="{colors[v]}"/>')
                out.append(f'<text x="{x0 + bw + 4:.1f}" y="{by + 12}">{fmt.format(vals[v])}</text>')
    ly = h - 18
    for j, v in enumerate(("bare", "pangate")):
        out.append(f'<rect x="{10 + j * 140}" y="{ly - 10}" width="12" height="12" fill="{colors[v]}"/>')
        out.append(f'<text x="{26 + j * 140}" y="{ly}">{"bare mitmdump" if v == "bare" else "pangate (full chain)"}</text>')
    out.append(f'<text x="320" y="{ly}" fill="#555">bars scaled per scenario; labels are absolute values</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _table_md(res: dict) -> list[str]:
    """The console table as a markdown table, then its summary lines as a list."""
    text = table(res)
    rows = [ln for ln in text.splitlines() if ln.startswith("|")]
    rest = [f"- {ln}" for ln in text.splitlines() if ln and not ln.startswith("|")]
    return ["\n".join(rows) + "\n", "\n".join(rest) + "\n"]


def markdown(res: dict, analysis: str) -> str:
    e = res["env"]
    s = ["# Performance: pangate vs bare mitmdump\n",
         f"Produced by `{res['command']}` on {res['started']} in {res['elapsed_s']:.0f} s "
         f"({e['cpus']} cores, {e['cpu']}; Linux {e['kernel']}; Python {e['python']}, mitmproxy {e['mitmproxy']}, "
         f"{e['nginx']}, {e['hey']}). Raw results of each run: `docs/bench/latest.json` and "
         f"`docs/bench/bench-<time>.json` (git-ignored: `docs/bench/*.json`; rerun to get them).\n",
         "![requests/s and p99 by scenario](bench.svg)\n",
         "## Results\n",
         f"`hey` with keep-alive clients (16; 4 for the 16 MB body) through each proxy for {res['duration_s']:g} s per "
         "scenario per variant, interleaved, after a 2 s warm-up; both mitmdumps run at the same time on the same "
         "nginx HTTPS upstream and the same interception CA. Peak RSS is VmHWM of the mitmdump process, reset "
         "before each scenario. pangate runs the full chain: JWT identity bound at CONNECT, policy, bearer "
         "credential injection, PAN masking, signed hash-chained audit (fsync'd group commits), recordings.\n",
         *_table_md(res),
         "## Targets\n",
         "The performance issue's targets against this run (ratios against bare mitmdump in the same run). "
         "Where one is missed, the profile below shows where the time goes and the analysis says what would "
         "close it.\n",
         _targets_md(res),
         "Sanity checks run before measuring (with certificate verification against the gateway CA): " +
         ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in res.get("sanity", {}).items()) + ".\n"]
    audit = [f"{n} {row['pangate'].get('audit_records', 0)} records / {row['pangate']['requests']} responses"
             for n, row in res["scenarios"].items()]
    s.append("Audit records written during the measured windows (one per request; connects are extra): "
             + "; ".join(audit) + ".\n")
    if res.get("profile"):
        s.append("## Profile (py-spy, pangate process under load)\n")
        for scn, p in res["profile"].items():
            if "error" in p:
                s.append(f"- {scn}: {p['error']}")
                continue
            s.append(f"### {scn}: {p['samples']} samples; event-loop thread {p['loop']}% of them, "
                     f"pangate code on the loop {p['pangate_on_loop']}%\n")
            s.append("Other threads: " + ", ".join(f"`{f}` {v}%" for f, v in p["threads"][:5]) + "\n")
            s.append("| pangate function, inclusive % | | self % | function (any) |\n|---|---|---|---|")
            for (fi, pi), (fs, ps) in zip(p["pangate_inclusive"], p["self"]):
                s.append(f"| {pi} | `{fi}` | {ps} | `{fs}` |")
            s.append("")
    s.append("## Analysis\n")
    s.append(START + "\n" + (analysis.strip() or "_(to be written)_") + "\n" + END + "\n")
    return "\n".join(s)


def write(res: dict, md: Path, svg_path: Path) -> None:
    old = md.read_text() if md.exists() else ""
    analysis = old.split(START, 1)[1].split(END, 1)[0] if START in old and END in old else ""
    md.write_text(markdown(res, analysis))
    svg_path.write_text(svg(res))
