"""The access review (PCI DSS 7.2.4, 7.2.5, 7.2.5.1): per identity, what it may do and what it did.

From the policy: each identity's grants (every allow rule of its roles, with
paths and query constraints) and how it is proven. From the audit trail of
the period: which grants were used (count, last use) and which never were,
last activity, the credential seen (token issuer and lifetime, or a static
key, flagged), approvals, reveals and alerts. Pure: the CLI renders it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

from pangate.review.trail import identity_name, iso

APPROVAL_EVENTS = ("approval_pending", "approval_granted", "approval_denied", "approval_timed_out")


def query_text(q) -> str:
    if q.op in ("present", "absent"):
        return f"{q.param} {q.op}"
    value = q.value.pattern if hasattr(q.value, "pattern") else (
        "[" + ", ".join(q.value) + "]" if isinstance(q.value, tuple) else q.value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{q.param} {q.op} {value}"


def grants(policy, identity) -> list[dict]:
    out = []
    for role_name in identity.roles:
        role = policy.roles[role_name]
        for r in role.rules:
            out.append({"rule": r.id, "role": role_name, "mode": role.mode, "destination": r.destination,
                        "methods": sorted(r.methods), "paths": list(r.paths),
                        "query": [query_text(q) for q in r.query], "uses": 0, "last_use": None,
                        "line": r.line})
    return out


def build(policy, records, since: float, until: float | None = None, signoff: dict | None = None) -> dict:
    """The review document (plain JSON data)."""
    until = time.time() if until is None else until
    people = {}
    for ident in policy.identities.values():
        issuer = policy.issuers.get(ident.issuer) if ident.issuer else None
        people[ident.name] = {
            "identity": ident.name, "roles": list(ident.roles), "description": ident.description,
            "credential": {"type": "static_key" if ident.static_key_sha256 else f"{issuer.type} token",
                           "issuer": ident.issuer, "static_key": bool(ident.static_key_sha256),
                           "static_key_reason": ident.static_key_reason, "longest_token_ttl_seconds": None,
                           "first_seen": None},
            "grants": grants(policy, ident), "requests": 0, "denied": 0, "report_only": 0, "errors": 0,
            "last_activity": None, "approvals": Counter(), "reveals": 0, "pans_revealed": 0,
            "alerts": Counter(), "activity": Counter(), "report_only_requests": Counter(),
        }
    unknown = Counter()
    alerts_total, signoffs = Counter(), []
    for rec in records:
        ev, name, t = rec.get("event"), identity_name(rec), rec.get("time")
        if ev in APPROVAL_EVENTS:
            who = people.get(rec.get("requester"))
            if who is not None:
                who["approvals"][ev.removeprefix("approval_")] += 1
            continue
        if ev == "alert":
            alerts_total[rec.get("detector")] += 1
            if name in people:
                people[name]["alerts"][rec.get("detector") or "?"] += 1
            continue
        if ev == "access_review_signed":
            signoffs.append({k: rec.get(k) for k in ("reviewer", "signed_at", "report_sha256", "file")})
            continue
        if ev not in ("request", "connect") or name is None:
            continue
        p = people.get(name)
        if p is None:
            unknown[name] += 1
            continue
        p["requests"] += 1
        p["last_activity"] = max(p["last_activity"] or "", t or "") or None
        if t:
            p["activity"][t[:10]] += 1
        cred, ident = p["credential"], rec.get("identity") or {}
        cred["first_seen"] = cred["first_seen"] or t
        exp = ident.get("expires_at") if isinstance(ident, dict) else None
        if exp and t:
            ttl = exp - _epoch(t)
            if ttl > 0 and (cred["longest_token_ttl_seconds"] or 0) < ttl:
                cred["longest_token_ttl_seconds"] = round(ttl)
        outcome = rec.get("outcome")
        if outcome == "denied":
            p["denied"] += 1
        elif outcome == "error":
            p["errors"] += 1
        elif outcome == "report_only":
            p["report_only"] += 1
            d = rec.get("destination") or {}
            p["report_only_requests"][f"{d.get('method')} {d.get('host')}{d.get('path')}"] += 1
        if rec.get("reveal"):
            p["reveals"] += 1
            p["pans_revealed"] += int(rec["reveal"].get("pans_revealed") or 0)
        if outcome == "allowed" and rec.get("rule"):
            for g in p["grants"]:
                if g["rule"] == rec["rule"]:
                    g["uses"] += 1
                    g["last_use"] = max(g["last_use"] or "", t or "") or None
    out = []
    for p in people.values():
        p["used"] = [g["rule"] for g in p["grants"] if g["uses"]]
        p["unused"] = [g["rule"] for g in p["grants"] if not g["uses"]]
        p["flags"] = _flags(p)
        for k in ("approvals", "alerts", "activity", "report_only_requests"):
            p[k] = dict(sorted(p[k].items()))
        out.append(p)
    doc = {"type": "pangate-access-review/1", "generated_at": iso(time.time()),
           "period": {"since": iso(since), "until": iso(until)},
           "policy": {"path": policy.path, "digest": policy.digest},
           "identities": out, "unknown_identities": dict(unknown), "alerts": dict(alerts_total),
           "recorded_signoffs": signoffs, "last_signoff": signoff}
    return doc


def _flags(p: dict) -> list[str]:
    flags = []
    if p["credential"]["static_key"]:
        flags.append("static key: a long-lived shared secret (retire it for short-lived tokens)")
    if p["unused"]:
        flags.append(f"{len(p['unused'])} grant(s) never used in the period: remove them (least privilege)")
    if not p["requests"]:
        flags.append("no activity in the period: is this identity still needed?")
    if p["report_only"]:
        flags.append(f"{p['report_only']} request(s) allowed only by report mode: they would be denied")
    if p["alerts"]:
        flags.append(f"{sum(p['alerts'].values())} alert(s) in the period")
    return flags


def _epoch(t: str) -> float:
    return time.mktime(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + (
        float("0." + t[20:23]) if len(t) > 20 and t[19] == "." else 0)


def digest(doc: dict) -> str:
    """sha256 of the review's content (what a sign-off signs), without when it was generated."""
    body = {k: v for k, v in doc.items() if k not in ("generated_at", "last_signoff")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
