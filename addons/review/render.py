"""The access review as Markdown, CSV or one self-contained HTML page.

The HTML has no external resource: inline CSS, the review data as an inline
JSON block, and inline JavaScript that draws the charts as SVG (activity per
day per identity; grants used vs never used). Every string in the document
goes through the sink scrubber before it is written, and is HTML-escaped.
"""

from __future__ import annotations

import csv
import html
import io
import json

from pangate.sinks import scrubber


def _clean(doc):
    return scrubber.default().value(doc)


def _ttl(seconds) -> str:
    if not seconds:
        return "-"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.0f}{unit}"
    return f"{seconds}s"


def credential_text(c: dict) -> str:
    if c["static_key"]:
        return f"STATIC KEY (first seen {c['first_seen'] or 'never'}; {c['static_key_reason']})"
    return f"{c['type']} from {c['issuer']}, longest lifetime seen {_ttl(c['longest_token_ttl_seconds'])}"


def _signoff_text(s: dict | None) -> str:
    if not s:
        return "none yet"
    d = s.get("doc") or {}
    state = "signature verified" if s.get("ok") else f"NOT VALID: {s.get('reason')}"
    return f"{d.get('reviewer')} at {d.get('signed_at')} (period {(d.get('period') or {}).get('since')} .. " \
           f"{(d.get('period') or {}).get('until')}; {state})"


def markdown(doc: dict) -> str:
    doc = _clean(doc)
    p = doc["period"]
    out = [f"# Access review {p['since']} .. {p['until']}", "",
           f"Policy `{doc['policy']['path']}` (sha256 {doc['policy']['digest'][:16]}). "
           f"Last sign-off: {_signoff_text(doc['last_signoff'])}.", ""]
    for ident in doc["identities"]:
        out += [f"## {ident['identity']}", "",
                f"- roles: {', '.join(ident['roles'])}",
                f"- credential: {credential_text(ident['credential'])}",
                f"- last activity: {ident['last_activity'] or 'none in the period'}; requests {ident['requests']}, "
                f"denied {ident['denied']}, report-only {ident['report_only']}",
                f"- approvals: {_kv(ident['approvals'])}; reveals: {ident['reveals']} "
                f"({ident['pans_revealed']} PANs); alerts: {_kv(ident['alerts'])}", ""]
        out += ["| grant | destination | methods | paths | query | uses | last use |",
                "|---|---|---|---|---|---|---|"]
        for g in ident["grants"]:
            out.append(f"| {g['rule']}{' (report mode)' if g['mode'] == 'report' else ''} | {g['destination']} | "
                       f"{' '.join(g['methods'])} | {' '.join(g['paths'])} | {'; '.join(g['query']) or '-'} | "
                       f"{g['uses'] or 'NEVER USED'} | {g['last_use'] or '-'} |")
        out += [""] + [f"- **{f}**" for f in ident["flags"]] + [""]
    if doc["unknown_identities"]:
        out += ["## Identities in the trail but not in the policy", "", _kv(doc["unknown_identities"]), ""]
    return "\n".join(out)


def _kv(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


CSV_FIELDS = ["identity", "roles", "credential", "static_key", "rule", "role_mode", "destination", "methods",
              "paths", "query", "uses", "last_use", "used", "last_activity", "requests", "denied", "approvals",
              "reveals", "alerts"]


def to_csv(doc: dict) -> str:
    doc = _clean(doc)
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for ident in doc["identities"]:
        base = {"identity": ident["identity"], "roles": " ".join(ident["roles"]),
                "credential": credential_text(ident["credential"]), "static_key": ident["credential"]["static_key"],
                "last_activity": ident["last_activity"] or "", "requests": ident["requests"],
                "denied": ident["denied"], "approvals": _kv(ident["approvals"]), "reveals": ident["reveals"],
                "alerts": _kv(ident["alerts"])}
        for g in ident["grants"] or [{}]:
            w.writerow({**base, "rule": g.get("rule", ""), "role_mode": g.get("mode", ""),
                        "destination": g.get("destination", ""), "methods": " ".join(g.get("methods", ())),
                        "paths": " ".join(g.get("paths", ())), "query": "; ".join(g.get("query", ())),
                        "uses": g.get("uses", 0), "last_use": g.get("last_use") or "",
                        "used": bool(g.get("uses"))})
    return buf.getvalue()


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;margin:.5em 0}td,th{border:1px solid #ddd;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.never{color:#b00020;font-weight:bold}
.flag{color:#8a4b00}.static{background:#fff0f0}svg{background:#fafafa;border:1px solid #eee}
.legend span{display:inline-block;margin-right:1em}.sw{display:inline-block;width:10px;height:10px;margin-right:4px}
"""

_JS = r"""
(function(){
  var doc = JSON.parse(document.getElementById('review-data').textContent);
  var NS = 'http://www.w3.org/2000/svg';
  var colors = ['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2','#7f7f7f','#bcbd22','#17becf'];
  function el(name, attrs, parent){ var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]); if (parent) parent.appendChild(e); return e; }
  function text(parent, x, y, s, anchor){ var t = el('text', {x:x, y:y, 'font-size':11,
    'text-anchor': anchor || 'start'}, parent); t.textContent = s; return t; }
  // Activity over time: one line per identity, requests per day.
  var svg = document.getElementById('chart-activity');
  var W = 1000, H = 260, L = 50, B = 40, T = 10;
  var days = {}; doc.identities.forEach(function(i){ Object.keys(i.activity).forEach(function(d){ days[d] = 1; }); });
  days = Object.keys(days).sort();
  if (days.length === 1) days.unshift('');
  var max = 1;
  doc.identities.forEach(function(i){ days.forEach(function(d){ max = Math.max(max, i.activity[d] || 0); }); });
  el('line', {x1:L, y1:H-B, x2:W-10, y2:H-B, stroke:'#999'}, svg);
  el('line', {x1:L, y1:T, x2:L, y2:H-B, stroke:'#999'}, svg);
  text(svg, L-6, T+10, String(max), 'end'); text(svg, L-6, H-B, '0', 'end');
  var step = days.length > 1 ? (W-10-L)/(days.length-1) : 0;
  days.forEach(function(d, k){ if (d && (days.length < 15 || k % Math.ceil(days.length/10) === 0))
    text(svg, L + k*step, H-B+16, d, 'middle'); });
  var legend = document.getElementById('legend-activity');
  doc.identities.forEach(function(i, n){
    if (!i.requests) return;
    var c = colors[n % colors.length];
    var pts = days.map(function(d, k){ return (L + k*step) + ',' + (H-B - (i.activity[d]||0) * (H-B-T) / max); });
    el('polyline', {points: pts.join(' '), fill:'none', stroke:c, 'stroke-width':2, 'class':'series',
                    'data-identity': i.identity}, svg);
    days.forEach(function(d, k){ if (i.activity[d]) el('circle', {cx: L + k*step, r:3, fill:c, 'class':'point',
      cy: H-B - i.activity[d] * (H-B-T) / max}, svg); });
    var s = document.createElement('span'); s.innerHTML = '<i class="sw" style="background:' + c + '"></i>';
    s.appendChild(document.createTextNode(i.identity)); legend.appendChild(s);
  });
  // Grants used vs never used, per identity.
  var g = document.getElementById('chart-grants');
  var rowH = 22, width = 1000, left = 160, n = doc.identities.length;
  g.setAttribute('height', String(n * rowH + 30)); g.setAttribute('viewBox', '0 0 ' + width + ' ' + (n * rowH + 30));
  var most = 1; doc.identities.forEach(function(i){ most = Math.max(most, i.grants.length); });
  doc.identities.forEach(function(i, k){
    var y = 10 + k * rowH, unit = (width - left - 20) / most;
    text(g, left - 6, y + 13, i.identity, 'end');
    el('rect', {x:left, y:y, width: i.used.length * unit, height: rowH - 6, fill:'#2ca02c', 'class':'bar used'}, g);
    el('rect', {x:left + i.used.length * unit, y:y, width: i.unused.length * unit, height: rowH - 6,
                fill:'#d62728', 'class':'bar unused'}, g);
    text(g, left + i.grants.length * unit + 6, y + 13, i.used.length + ' used, ' + i.unused.length + ' never used');
  });
  document.body.setAttribute('data-charts', 'drawn');
})();
"""


def to_html(doc: dict) -> str:
    doc = _clean(doc)
    e = html.escape
    p = doc["period"]
    rows = []
    for ident in doc["identities"]:
        static = ident["credential"]["static_key"]
        grants = "".join(
            f"<tr><td>{e(g['rule'])}{' <em>(report mode)</em>' if g['mode'] == 'report' else ''}</td>"
            f"<td>{e(g['destination'])}</td><td>{e(' '.join(g['methods']))}</td><td>{e(' '.join(g['paths']))}</td>"
            f"<td>{e('; '.join(g['query']) or '-')}</td>"
            f"<td class=\"{'used' if g['uses'] else 'never'}\">{g['uses'] or 'never used'}</td>"
            f"<td>{e(g['last_use'] or '-')}</td></tr>" for g in ident["grants"])
        flags = "".join(f"<li class=\"flag\">{e(f)}</li>" for f in ident["flags"])
        rows.append(
            f"<section class=\"identity{' static' if static else ''}\" id=\"identity-{e(ident['identity'])}\">"
            f"<h2>{e(ident['identity'])}</h2><p>roles: {e(', '.join(ident['roles']))}<br>"
            f"credential: {e(credential_text(ident['credential']))}<br>"
            f"last activity: {e(ident['last_activity'] or 'none in the period')}; requests {ident['requests']}, "
            f"denied {ident['denied']}, report-only {ident['report_only']}<br>"
            f"approvals: {e(_kv(ident['approvals']))}; reveals: {ident['reveals']} ({ident['pans_revealed']} PANs); "
            f"alerts: {e(_kv(ident['alerts']))}</p>"
            "<table><tr><th>grant</th><th>destination</th><th>methods</th><th>paths</th><th>query</th>"
            f"<th>uses</th><th>last use</th></tr>{grants}</table><ul>{flags}</ul></section>")
    data = json.dumps(doc, sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pangate access review {e(p['since'])} .. {e(p['until'])}</title>
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>{_CSS}</style></head><body>
<h1>Access review {e(p['since'])} .. {e(p['until'])}</h1>
<p>Policy <code>{e(doc['policy']['path'])}</code> (sha256 {e(doc['policy']['digest'][:16])}),
generated {e(doc['generated_at'])}. Last sign-off:
<strong id="last-signoff">{e(_signoff_text(doc['last_signoff']))}</strong>.</p>
<h2>Activity per day</h2><svg id="chart-activity" viewBox="0 0 1000 260" width="100%" height="260"
 role="img" aria-label="requests per day per identity"></svg><div class="legend" id="legend-activity"></div>
<h2>Grants used and never used</h2><svg id="chart-grants" viewBox="0 0 1000 100" width="100%" role="img"
 aria-label="grants used and never used per identity"></svg>
{''.join(rows)}
<script type="application/json" id="review-data">{data}</script>
<script>{_JS}</script>
</body></html>
"""


def render(doc: dict, fmt: str) -> str:
    return {"md": markdown, "csv": to_csv, "html": to_html}[fmt](doc)
