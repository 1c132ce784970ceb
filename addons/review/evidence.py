"""The PCI DSS v4.0.1 evidence pack: what an assessor asks for, from the policy and the audit trail.

    index.html              one section per requirement: what the evidence shows, and where it came from
    requirements.json       the same mapping as data
    policy/                 the policy in force (copy) and its history (the trail's policy records)
    audit/                  verification result, counts, record samples, identities and time span
    alerts/alerts.jsonl     the alerts of the period (10.4.1.1, 10.7.2)
    reviews/                the access review of the period, and every signed sign-off with its check
    SHA256SUMS              sha256 of every file (sha256sum -c format)
    SHA256SUMS.sig          Ed25519 signature of SHA256SUMS with the audit signing key (raw 64 bytes)
    VERIFY.md               how to check it: `pangate evidence verify DIR` or openssl + sha256sum

Everything written passes the sink scrubber: the pack holds no raw PAN,
token or injected secret even if a record somehow did.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from pangate.audit.keys import key_id, load_public_key
from pangate.common.files import public_pem, read_private, write_atomic
from pangate.review import render, signoff, trail
from pangate.sinks import scrubber

SAMPLES_PER_KIND = 3
# The policy in force: its digest at each gateway start, and every reload or rejected file.
POLICY_EVENTS = ("gateway_started", "policy_loaded", "policy_rejected")
CONTROL_EVENTS = ("audit_write_failed", "audit_write_recovered", "audit_response_withheld", "export_failing",
                  "recording_write_failed", "recording_write_recovered", "policy_rejected", "revocations_rejected",
                  "refusals_coalesced", "audit_recovered")


def _write(out: str, rel: str, data: bytes | str) -> None:
    path = os.path.join(out, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    write_atomic(path, scrubber.default().data(raw), 0o644)


def _json(obj) -> str:
    return json.dumps(scrubber.default().value(obj), indent=1, sort_keys=True, default=str) + "\n"


def _gather(audit_dir: str, since: float, progress) -> dict:
    counts = {"events": Counter(), "outcomes": Counter(), "refusals_by_code": Counter(),
              "token_refusals_by_code": Counter(), "approvals": Counter(), "alerts_by_detector": Counter(),
              "alerts_by_severity": Counter(), "reveals": 0, "pans_revealed": 0, "pans_masked": 0,
              "sad_masked": 0,
              "card_data_requests": 0, "revocations": 0}
    samples: dict[tuple, list] = defaultdict(list)
    policy_history, alerts, controls, retention, starts = [], [], [], [], []
    for rec in trail.read(audit_dir, since, progress):
        ev, outcome = rec.get("event"), rec.get("outcome")
        counts["events"][ev] += 1
        if ev in ("request", "connect"):
            counts["outcomes"][outcome] += 1
            if outcome in ("denied", "token_refused", "unavailable", "refused"):
                counts["refusals_by_code"][rec.get("code")] += 1
            counts["pans_masked"] += int(rec.get("pans_masked") or 0)
            counts["sad_masked"] += int(rec.get("sad_masked") or 0)
            if rec.get("reveal"):
                counts["reveals"] += 1
                counts["pans_revealed"] += int(rec["reveal"].get("pans_revealed") or 0)
        if ev == "token_refused":
            counts["token_refusals_by_code"][rec.get("code")] += 1
        if ev and ev.startswith("approval_"):
            counts["approvals"][ev.removeprefix("approval_")] += 1
        if ev in ("revoked", "unrevoked"):
            counts["revocations"] += 1
        if ev == "alert":
            counts["alerts_by_detector"][rec.get("detector")] += 1
            counts["alerts_by_severity"][rec.get("severity")] += 1
            alerts.append(rec)
        if ev in POLICY_EVENTS:
            entry = {k: rec.get(k) for k in ("time", "seq", "event", "path", "previous", "error")}
            entry["digest"] = rec.get("digest") or rec.get("policy")
            policy_history.append(entry)
        if ev in CONTROL_EVENTS:
            controls.append(rec)
        if ev == "retention":
            retention.append(rec)
        if ev in ("audit_start", "gateway_started", "gateway_stopped", "audit_stop"):
            starts.append({k: rec.get(k) for k in ("time", "seq", "event", "policy", "previous_clean_close")})
        kind = (ev, outcome)
        if len(samples[kind]) < SAMPLES_PER_KIND:
            samples[kind].append(rec)
    return {"counts": {k: dict(v) if isinstance(v, Counter) else v for k, v in counts.items()},
            "samples": [r for kind in sorted(samples, key=str) for r in samples[kind]],
            "policy_history": policy_history, "alerts": alerts, "controls": controls, "retention": retention,
            "lifecycle": starts}


def _verify(audit_dir: str, pubkey: str | None, recordings: str | None) -> dict:
    from pangate.audit.verify import verify_log

    rep = verify_log(audit_dir, pubkey, live=False, recordings=recordings)
    live = False
    if not rep.ok and rep.kind == "truncated":  # the gateway is running: its tail is not sealed yet
        rep, live = verify_log(audit_dir, pubkey, live=True, recordings=recordings), True
    return {"ok": rep.ok, "kind": rep.kind, "error": rep.error, "where": rep.where, "records": rep.records,
            "checkpoints": rep.checkpoints, "files": [os.path.basename(f) for f in rep.files],
            "signatures_checked": rep.signatures_checked, "first_time": rep.first_time, "last_time": rep.last_time,
            "identities": sorted(rep.identities), "live": live, "notes": rep.notes,
            "unclean_shutdowns": rep.unclean_shutdowns, "recordings": len(rep.recordings),
            "recordings_failed": [os.path.basename(r[0]) for r in rep.recordings if not r[1]],
            "summary": rep.summary()}


def _policy_facts(policy) -> dict:
    return {
        "digest": policy.digest, "masking": policy.masking.mode,
        "identities": {n: {"roles": list(i.roles), "issuer": i.issuer, "static_key": bool(i.static_key_sha256)}
                       for n, i in policy.identities.items()},
        "destinations": {n: {"scheme": d.scheme, "hosts": list(d.hosts), "ports": list(d.ports),
                             "card_data": d.card_data, "credential": d.credential.type if d.credential else None}
                         for n, d in policy.destinations.items()},
        "roles": {n: {"mode": r.mode, "rules": len(r.rules)} for n, r in policy.roles.items()},
        "approvals": {n: {"approvers": list(a.approvers), "required": a.required, "mode": a.mode}
                      for n, a in policy.approvals.items()},
        "reveals": [{"identity": r.identity, "destination": r.destination, "justification": r.justification}
                    for r in policy.reveals],
        "issuers": {n: {"type": i.type, "algorithms": list(i.algorithms)} for n, i in policy.issuers.items()},
    }


def requirements(facts: dict, g: dict, ver: dict, review: dict, signoffs: list[dict]) -> list[dict]:
    """Requirement -> what the evidence shows and which files show it."""
    c, p = g["counts"], facts
    static = [n for n, i in p["identities"].items() if i["static_key"]]
    card = [n for n, d in p["destinations"].items() if d["card_data"]]
    plain = [n for n, d in p["destinations"].items() if d["scheme"] != "https"]
    unused = sum(len(i["unused"]) for i in review["identities"])
    valid = [s for s in signoffs if s["ok"]]
    ok = "intact" if ver["ok"] else f"BROKEN ({ver['kind']}: {ver['error']})"
    return [
        {"id": "3.3.1", "title": "Sensitive authentication data is not retained after authorization",
         "shows": "Card verification codes, PINs and track data in responses are starred by the masking stage "
                  f"before anything is stored; this pack itself is scrubbed. {c['sad_masked']} such values were "
                  f"starred in the period (and {c['pans_masked']} card numbers masked).",
         "files": ["audit/counts.json", "audit/samples.jsonl"]},
        {"id": "3.4.1", "title": "PAN is masked when displayed",
         "shows": f"Masking mode {p['masking']} for every response; full numbers only under {len(p['reveals'])} "
                  f"declared reveal exception(s) with a justification ({c['reveals']} revealed responses, "
                  f"{c['pans_revealed']} numbers).",
         "files": ["policy/policy-facts.json", "audit/counts.json"]},
        {"id": "3.5.1", "title": "PAN is rendered unreadable wherever it is stored",
         "shows": "Audit records and session recordings hold masked card numbers only (BIN6 + last 4 at most); "
                  "record samples show the stored form.",
         "files": ["audit/samples.jsonl", "audit/verification.json"]},
        {"id": "4.2.1", "title": "Strong cryptography protects PAN in transmission",
         "shows": f"{len(p['destinations']) - len(plain)} of {len(p['destinations'])} destinations are https "
                  f"(card-data destinations: {', '.join(card) or 'none'}); upstream TLS is always verified by "
                  "the gateway." + (f" Plain http: {', '.join(plain)}." if plain else ""),
         "files": ["policy/policy-facts.json", "policy/policy.yaml"]},
        {"id": "7.2.1", "title": "An access control model is defined",
         "shows": f"Default deny; {len(p['roles'])} roles of explicit allow rules for {len(p['identities'])} "
                  "identities, in the policy in force and its history.",
         "files": ["policy/policy.yaml", "policy/history.json"]},
        {"id": "7.2.2", "title": "Access is assigned on least privilege",
         "shows": f"Per-identity rules by destination, method, path and query; {len(p['approvals'])} approval "
                  f"rule(s) for high-risk requests ({_kv(c['approvals'])}). {unused} grant(s) were never used "
                  "in the period (see the review).",
         "files": ["policy/policy.yaml", "reviews/access-review.html", "audit/counts.json"]},
        {"id": "7.2.5", "title": "System and application accounts have least privilege",
         "shows": "The access review lists each machine identity's grants, used and unused, with counts and "
                  "last use.",
         "files": ["reviews/access-review.html", "reviews/access-review.json", "reviews/access-review.csv"]},
        {"id": "7.2.5.1", "title": "Access of system accounts is reviewed periodically, with sign-off",
         "shows": f"{len(valid)} signed sign-off(s) with verified signatures"
                  + (f", the last by {valid[-1]['doc']['reviewer']} at {valid[-1]['doc']['signed_at']}"
                     if valid else "") + f"; {len(signoffs) - len(valid)} not valid.",
         "files": ["reviews/signoffs.json", "reviews/access-review.html"]},
        {"id": "8.2.1", "title": "Every identity is unique",
         "shows": f"{len(p['identities'])} identities, each proven by its own token or declared key; "
                  f"identities seen in the trail: {', '.join(ver['identities']) or 'none'}; "
                  f"unknown names in the trail: {len(review['unknown_identities'])}.",
         "files": ["policy/policy-facts.json", "audit/verification.json"]},
        {"id": "8.6.1", "title": "System accounts are managed",
         "shows": "Each machine identity is declared in the policy with its issuer and roles; revocations "
                  f"in the period: {c['revocations']}.",
         "files": ["policy/policy-facts.json", "audit/counts.json"]},
        {"id": "8.6.2", "title": "No hard-coded passwords for system accounts",
         "shows": "Workloads hold short-lived tokens; backend credentials are injected by the gateway and never "
                  f"held by the workload. Static keys (declared exceptions): {', '.join(static) or 'none'}.",
         "files": ["policy/policy-facts.json", "reviews/access-review.html"]},
        {"id": "8.6.3", "title": "System account credentials are protected and rotated",
         "shows": "Token lifetimes seen per identity are in the review; static keys are flagged there.",
         "files": ["reviews/access-review.json"]},
        {"id": "10.2.1", "title": "Audit logs are enabled and active",
         "shows": f"{ver['records']} records in {len(ver['files'])} file(s) from {ver['first_time']} to "
                  f"{ver['last_time']}; gateway and audit start/stop records are in the lifecycle list.",
         "files": ["audit/verification.json", "audit/lifecycle.json"]},
        {"id": "10.2.1.1", "title": "Access to cardholder data is logged",
         "shows": f"One record per request: {_kv(c['outcomes'])}.",
         "files": ["audit/counts.json", "audit/samples.jsonl"]},
        {"id": "10.2.1.4", "title": "Invalid logical access attempts are logged",
         "shows": f"Refused tokens by code: {_kv(c['token_refusals_by_code'])}; refusals by code: "
                  f"{_kv(c['refusals_by_code'])}.",
         "files": ["audit/counts.json"]},
        {"id": "10.2.2", "title": "Audit records hold the required details",
         "shows": "Each record has user identification (identity, issuer, subject, token id), event type, "
                  "date and time, success or failure (outcome, code), origin (client address) and the "
                  "affected resource (destination, method, masked path).",
         "files": ["audit/samples.jsonl"]},
        {"id": "10.3.2", "title": "Audit logs are protected from modification",
         "shows": f"Hash chain and signed checkpoints: verification {ok}, {ver['checkpoints']} checkpoints, "
                  f"signatures {'verified' if ver['signatures_checked'] else 'NOT checked'}"
                  + (" (live log: the unsealed tail was accepted)" if ver["live"] else "") + ".",
         "files": ["audit/verification.json", "audit/verification.txt"]},
        {"id": "10.3.3", "title": "Audit logs are backed up to a central server",
         "shows": "SIEM exporters keep their acknowledged position; export outages are alerted (control "
                  "failures list).",
         "files": ["audit/controls.jsonl"]},
        {"id": "10.3.4", "title": "Changes to audit logs are detected",
         "shows": f"The verifier names the first broken place (edited, deleted, inserted, truncated); this "
                  f"period: {ok}.",
         "files": ["audit/verification.txt"]},
        {"id": "10.4.1.1", "title": "Audit logs are reviewed by automated mechanisms",
         "shows": f"Live detectors raised {sum(c['alerts_by_detector'].values())} alert(s): "
                  f"{_kv(c['alerts_by_detector'])}; by severity {_kv(c['alerts_by_severity'])}.",
         "files": ["alerts/alerts.jsonl", "audit/counts.json"]},
        {"id": "10.5.1", "title": "Audit log history is retained for at least 12 months",
         "shows": f"The trail spans {ver['first_time']} .. {ver['last_time']}; retention deletions recorded: "
                  f"{len(g['retention'])} (whole files older than the retention setting, default 365 days).",
         "files": ["audit/verification.json", "audit/retention.json"]},
        {"id": "10.7.2", "title": "Failures of critical security controls are detected and reported",
         "shows": f"{len(g['controls'])} control event(s) (audit sink, policy reload, export, recordings) and "
                  f"{c['alerts_by_detector'].get('control_failure', 0)} control-failure alert(s) in the "
                  "period; a failing control refuses traffic (fail closed).",
         "files": ["audit/controls.jsonl", "alerts/alerts.jsonl"]},
    ]


def _kv(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: str(kv[0]))) or "none"


def _index(reqs: list[dict], meta: dict) -> str:
    e = html.escape
    toc = "".join(f'<li><a href="#req-{e(r["id"])}">{e(r["id"])} {e(r["title"])}</a></li>' for r in reqs)
    body = "".join(
        f'<section class="requirement" id="req-{e(r["id"])}"><h2>PCI DSS {e(r["id"])}: {e(r["title"])}</h2>'
        f'<p class="shows">{e(r["shows"])}</p><p>Evidence: '
        + ", ".join(f'<a class="evidence" href="{e(f)}">{e(f)}</a>' for f in r["files"]) + "</p></section>"
        for r in reqs)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>pangate evidence pack {e(meta['period']['since'])} .. {e(meta['period']['until'])}</title>
<style>body{{font:14px/1.5 system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
section{{border-top:1px solid #ddd;padding:.3em 0}}</style></head><body>
<h1>pangate evidence pack</h1>
<p>Period {e(meta['period']['since'])} .. {e(meta['period']['until'])}; generated {e(meta['generated_at'])};
policy sha256 {e(meta['policy_digest'])}; audit trail verification: <strong>{e(meta['verification'])}</strong>.
Every file is listed in <a href="SHA256SUMS">SHA256SUMS</a>, signed in SHA256SUMS.sig (see
<a href="VERIFY.md">VERIFY.md</a>).</p><ul>{toc}</ul>{body}</body></html>
"""


VERIFY_MD = """# Verifying this evidence pack

`SHA256SUMS` lists the sha256 of every file; `SHA256SUMS.sig` is the Ed25519
signature of `SHA256SUMS` (raw, 64 bytes) by the gateway's audit signing key
(key id {key_id}).

    pangate evidence verify . --pubkey audit-signing.key.pub

or, without pangate (OpenSSL 3):

    openssl pkeyutl -verify -pubin -inkey audit-signing.key.pub -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig
    sha256sum -c SHA256SUMS
"""


def build_pack(out: str, policy, review: dict, audit_dir: str, key_path: str, pubkey: str | None = None,
               recordings: str | None = None, progress=None) -> dict:
    if os.path.exists(out) and os.listdir(out):
        raise ValueError(f"{out} is not empty: an evidence pack goes into a new directory")
    key = read_private(key_path, "audit signing key")
    pub = pubkey or (key_path + ".pub" if os.path.exists(key_path + ".pub") else None)
    os.makedirs(out, exist_ok=True)
    since = trail.parse_since(review["period"]["since"])
    g = _gather(audit_dir, since, progress)
    ver = _verify(audit_dir, pub or key.public_key(), recordings)
    facts = _policy_facts(policy)
    offs = []
    for path in signoff.files(audit_dir):
        st = signoff.verify(path, policy)
        offs.append({"file": os.path.basename(path), "ok": st["ok"], "reason": st["reason"], "doc": st["doc"]})
        _write(out, f"reviews/signoffs/{os.path.basename(path)}", Path(path).read_bytes())
        signed = signoff.signed_review(path)
        if os.path.exists(signed):
            _write(out, f"reviews/signoffs/{os.path.basename(signed)}", Path(signed).read_bytes())
    _write(out, "policy/policy.yaml", Path(policy.path).read_bytes())
    _write(out, "policy/policy-facts.json", _json(facts))
    _write(out, "policy/history.json", _json(g["policy_history"]))
    _write(out, "audit/verification.json", _json({k: v for k, v in ver.items() if k != "summary"}))
    _write(out, "audit/verification.txt", ver["summary"] + "\n")
    _write(out, "audit/counts.json", _json(g["counts"]))
    _write(out, "audit/samples.jsonl", "".join(json.dumps(scrubber.default().value(r), sort_keys=True) + "\n"
                                               for r in g["samples"]))
    _write(out, "audit/controls.jsonl", "".join(json.dumps(scrubber.default().value(r), sort_keys=True) + "\n"
                                                for r in g["controls"]))
    _write(out, "audit/retention.json", _json(g["retention"]))
    _write(out, "audit/lifecycle.json", _json(g["lifecycle"]))
    _write(out, "alerts/alerts.jsonl", "".join(json.dumps(scrubber.default().value(r), sort_keys=True) + "\n"
                                               for r in g["alerts"]))
    _write(out, "reviews/access-review.html", render.to_html(review))
    _write(out, "reviews/access-review.md", render.markdown(review))
    _write(out, "reviews/access-review.csv", render.to_csv(review))
    _write(out, "reviews/access-review.json", _json(review))
    _write(out, "reviews/signoffs.json", _json(offs))
    reqs = requirements(facts, g, ver, review, offs)
    _write(out, "requirements.json", _json(reqs))
    meta = {"period": review["period"], "generated_at": trail.iso(time.time()), "policy_digest": policy.digest,
            "verification": "intact" if ver["ok"] else f"BROKEN ({ver['kind']})",
            "key_id": key_id(key.public_key())}
    _write(out, "index.html", _index(reqs, meta))
    _write(out, "pack.json", _json(meta))
    _write(out, "VERIFY.md", VERIFY_MD.format(key_id=meta["key_id"]))
    _write(out, "audit-signing.key.pub", public_pem(key.public_key()))
    sums = _sums(out)
    write_atomic(os.path.join(out, "SHA256SUMS"), sums, 0o644)
    write_atomic(os.path.join(out, "SHA256SUMS.sig"), key.sign(sums), 0o644)
    return {"files": sums.count(b"\n"), "key_id": meta["key_id"], "requirements": [r["id"] for r in reqs]}


def _sums(out: str) -> bytes:
    lines = []
    for root, _, names in os.walk(out):
        for n in sorted(names):
            rel = os.path.relpath(os.path.join(root, n), out)
            if rel in ("SHA256SUMS", "SHA256SUMS.sig"):
                continue
            with open(os.path.join(root, n), "rb") as f:
                lines.append(f"{hashlib.sha256(f.read()).hexdigest()}  {rel}\n")
    return "".join(sorted(lines, key=lambda s: s[66:])).encode()


def verify_pack(out: str, pubkey: str | None = None) -> tuple[bool, list[str]]:
    """(ok, report lines): the signature of SHA256SUMS, then every file's hash, and no file unlisted."""
    try:
        sums = Path(out, "SHA256SUMS").read_bytes()
        sig = Path(out, "SHA256SUMS.sig").read_bytes()
        pub = load_public_key(pubkey or os.path.join(out, "audit-signing.key.pub"))
    except (OSError, ValueError) as e:
        return False, [f"evidence pack {out}: cannot read it: {e}"]
    lines = [f"key id {key_id(pub)}" + ("" if pubkey else " (the pack's own copy: pass --pubkey to pin it)")]
    try:
        pub.verify(sig, sums)
    except InvalidSignature:
        return False, lines + ["FAILED: SHA256SUMS.sig does not match SHA256SUMS"]
    listed = {}
    for line in sums.decode().splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel] = digest
    bad = []
    for rel, digest in listed.items():
        try:
            with open(os.path.join(out, rel), "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != digest:
                    bad.append(f"changed: {rel}")
        except OSError:
            bad.append(f"missing: {rel}")
    present = {os.path.relpath(os.path.join(r, n), out) for r, _, ns in os.walk(out) for n in ns}
    bad += [f"not listed: {rel}" for rel in sorted(present - set(listed) - {"SHA256SUMS", "SHA256SUMS.sig"})]
    if bad:
        return False, lines + ["FAILED"] + bad
    return True, lines + [f"OK: signature verified, {len(listed)} files intact"]
