"""Least-privilege suggestions: the policy narrowed to what the audit trail shows was used.

Every request of the period is replayed through the pure `decide` on the
policy in force. Rules that allowed something are narrowed to the methods,
paths and numeric query ranges actually used; rules that allowed nothing are
removed; requests that only a report-mode role let through become rules of
that role, so switching it to enforce breaks nothing that ran. The result is
checked before it is offered: it must load as a policy, and replayed against
the same requests it must allow every one of them.

Paths are kept literal, except that a segment masked in the trail (a card
number) becomes `*`, and a position with more than `collapse` distinct values
(ids) becomes `*` when the original rule allowed any value there.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

import yaml

from pangate.policy.decide import Request, decide, path_matches
from pangate.policy.model import parse_policy
from pangate.review.trail import identity_name

PROBE = "pangate-probe-7f3a"  # a segment no real path has: tells whether a pattern admits any value there


@dataclass
class Use:
    """What one rule (or one report-mode role, per destination) was used for."""

    methods: set = field(default_factory=set)
    paths: set = field(default_factory=set)
    query: list = field(default_factory=list)  # one tuple of (name, value) pairs per request
    count: int = 0


def request_of(rec: dict) -> Request | None:
    d = rec.get("destination") or {}
    name = identity_name(rec)
    if not (name and d.get("host") and d.get("method") and d.get("path")):
        return None
    query = tuple(parse_qsl(d.get("query") or "", keep_blank_values=True))
    return Request(name, d.get("scheme") or "https", d["host"], int(d.get("port") or 443), d["method"].upper(),
                   d["path"], query)


def used_requests(records) -> list[Request]:
    out = []
    for rec in records:
        if rec.get("event") == "request" and rec.get("outcome") in ("allowed", "report_only"):
            req = request_of(rec)
            if req is not None:
                out.append(req)
    return out


def _fmt(v: float):
    return int(v) if float(v).is_integer() else v


def _number(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def _paths(use: Use, originals: tuple[str, ...], collapse: int) -> list[str]:
    segs = set()
    for p in use.paths:
        parts = unquote(p).split("/")
        segs.add(tuple("*" if "*" in s else s for s in parts))  # a masked card number: any value
    changed = True
    while changed:
        changed = False
        groups = defaultdict(set)
        for parts in segs:
            for i in range(1, len(parts)):
                if parts[i] != "*":
                    groups[(len(parts), i, parts[:i] + ("",) + parts[i + 1:])].add(parts)
        for (_, i, _), members in groups.items():
            if len(members) > collapse:
                wide = next(iter(members))
                wide = wide[:i] + (PROBE,) + wide[i + 1:]
                if any(path_matches(o, "/".join(wide)) for o in originals):
                    segs -= members
                    segs.add(wide[:i] + ("*",) + wide[i + 1:])
                    changed = True
                    break
    return sorted("/".join(parts) or "/" for parts in segs)


def _query(use: Use, original_rules) -> dict:
    """Constraints: the original ones, upper bounds tightened to the largest value used; new upper bounds
    for numeric parameters that had none."""
    values = defaultdict(list)
    for q in use.query:
        for k, v in q:
            values[k].append(v)
    out = {}
    for q in original_rules:
        vals = values.get(q.param, [])
        nums = [_number(v) for v in vals]
        if q.op in ("<", "<=") and vals and None not in nums:
            top = max(nums)
            out[q.param] = f"<= {_fmt(min(top, q.value))}" if q.op == "<=" else f"<= {_fmt(top)}"
        elif q.op in ("present", "absent"):
            out[q.param] = q.op
        elif q.op == "in":
            out[q.param] = "in [" + ", ".join(q.value) + "]"
        elif q.op == "matches":
            out[q.param] = f"matches {q.value.pattern}"
        else:
            out[q.param] = f"{q.op} {_fmt(q.value) if isinstance(q.value, float) else q.value}"
    for name, vals in values.items():
        if name in out or any("[redacted]" in v or "*" in v for v in vals):
            continue
        nums = [_number(v) for v in vals]
        if None not in nums:
            out[name] = f"<= {_fmt(max(nums))}"
    return out


def suggest(policy, text: str, records, collapse: int = 20) -> dict:
    """{"text": suggested policy, "diff": unified diff, "report": lines, "replayed": n, "allowed": n}"""
    reqs = used_requests(records)
    uses: dict[str, Use] = defaultdict(Use)
    report_uses: dict[tuple[str, str], Use] = defaultdict(Use)
    notes, skipped = [], 0
    for req in reqs:
        d = decide(policy, req)
        if d.allowed and d.rule:
            u = uses[d.rule]
        elif d.allowed and not d.enforced:
            role = next(r for r in policy.identities[req.identity].roles if policy.roles[r].mode == "report")
            u = report_uses[(role, d.destination)]
        else:
            skipped += 1  # allowed then, denied by the policy in force now: nothing to keep
            continue
        u.methods.add(req.method)
        u.paths.add(req.path)
        u.query.append(req.query)
        u.count += 1
    doc = yaml.safe_load(text)
    removed, narrowed, added = [], [], []
    for role_name, role in policy.roles.items():
        allow = []
        for rule in role.rules:
            u = uses.get(rule.id)
            if u is None:
                removed.append(rule.id)
                continue
            new = {"destination": rule.destination, "methods": sorted(u.methods),
                   "paths": _paths(u, rule.paths, collapse)}
            q = _query(u, rule.query)
            if q:
                new["query"] = q
            allow.append(new)
            narrowed.append(f"{rule.id}: {u.count} request(s): {' '.join(new['methods'])} "
                            f"{' '.join(new['paths'])}" + (f" {q}" if q else ""))
        for (r_name, dest), u in sorted(report_uses.items()):
            if r_name != role_name:
                continue
            new = {"destination": dest, "methods": sorted(u.methods), "paths": _paths(u, ("/**",), collapse)}
            q = _query(u, ())
            if q:
                new["query"] = q
            allow.append(new)
            added.append(f"{role_name} (report mode): {u.count} request(s) that would have been denied: "
                         f"{' '.join(new['methods'])} {' '.join(new['paths'])} on {dest}")
        doc["roles"][role_name]["allow"] = allow
    header = ("# Suggested by `pangate policy suggest` from the requests in the audit trail: rules narrowed\n"
              "# to what was used, unused rules removed. Review it; comments of the original are not kept.\n")
    new_text = header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)
    new_policy = parse_policy(new_text, policy.path)  # a PolicyError here is a bug: raised, not hidden
    allowed = sum(1 for req in reqs if _allowed_now(new_policy, req))
    replayable = len(reqs) - skipped
    if allowed != replayable:
        raise ValueError(f"the suggestion would deny {replayable - allowed} of {replayable} used requests")
    report = [f"replayed {len(reqs)} used request(s); the suggestion allows all {allowed} the current policy allows"
              + (f" ({skipped} allowed then but denied by the policy now: left out)" if skipped else "")]
    report += [f"narrowed {n}" for n in narrowed] + [f"added {a}" for a in added]
    report += [f"removed {r}: never used in the period" for r in removed] + notes
    diff = "".join(difflib.unified_diff(text.splitlines(True), new_text.splitlines(True),
                                        policy.path, policy.path + " (suggested)"))
    return {"text": new_text, "diff": diff, "report": report, "replayed": len(reqs), "allowed": allowed,
            "removed": removed, "added": added}


def _allowed_now(policy, req: Request) -> bool:
    d = decide(policy, req)
    return d.allowed and d.enforced or (d.allowed and d.rule is not None)
