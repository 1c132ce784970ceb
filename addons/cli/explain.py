"""`pangate policy explain IDENTITY METHOD URL`: why the gateway would allow or deny a request.

The decision itself is `pangate.policy.decide.decide()` (and `decide_connect()`
for the tunnel), the very function the data path calls, so the answer cannot
drift from what the gateway does. What this module adds is the why: the rule
that matched, or on a deny the closest rules and which of their parts
(destination, method, path, query constraint) the request fails, plus what
happens after an allow (approval rules, card data).
"""

from __future__ import annotations

import difflib
import re
from urllib.parse import parse_qsl, unquote, urlsplit

from pangate.approval.model import rule_for
from pangate.policy.decide import Decision, Request, decide, decide_connect, destinations_for, path_matches, query_ok
from pangate.policy.model import METHODS, Destination, Policy, QueryRule, Rule

MAX_CANDIDATES = 3


def parse_url(url: str) -> tuple[str, str, int, str, tuple[tuple[str, str], ...]]:
    """(scheme, host, port, path, query) as the gateway takes them from a request; ValueError if not a URL."""
    m = re.fullmatch(r"(?i)(https?)://([^/?#]*)(.*)", url)
    if not m:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    scheme, authority, target = m.group(1).lower(), m.group(2), m.group(3)
    if "@" in authority:
        raise ValueError("a URL with user info (user@host) is not what a workload sends through the gateway")
    parts = urlsplit(f"//{authority}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{authority!r} has no valid port") from None
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    # The gateway splits the request target at the first `?` (authorize.request_facts), so this does too.
    target = target if target.startswith("/") else "/" + target
    path, _, query = target.partition("?")
    if "#" in query:  # a raw fragment after the query is judged with the path (and refused there)
        path += "#"
    return (scheme, parts.hostname, port or (443 if scheme == "https" else 80), path,
            tuple(parse_qsl(query, keep_blank_values=True)))


def explain(policy: Policy, identity: str, method: str, url: str) -> dict:
    """The decision and its reasons, as a JSON-able document."""
    scheme, host, port, path, query = parse_url(url)
    req = Request(identity=identity, scheme=scheme, host=host, port=port, method=method.upper(), path=path,
                  query=query)
    decision = decide(policy, req)
    # An https request first needs its tunnel: the gateway decides the CONNECT on its own.
    connect = decide_connect(policy, identity, host, port) if scheme == "https" else None
    allowed = decision.allowed and (connect is None or connect.allowed)
    dests = destinations_for(policy, host, port, scheme)
    dest_name = decision.destination or (dests[0].name if dests else None)
    doc: dict = {
        "decision": ("report_only" if not decision.enforced else "allow") if allowed else "deny",
        # The data path's reason when it denies (the most specific); else the tunnel's.
        "reason": (connect if decision.allowed and connect is not None and not connect.allowed else decision).reason,
        "detail": (connect if decision.allowed and connect is not None and not connect.allowed else decision).detail,
        "request": {"identity": identity, "method": req.method, "scheme": scheme, "host": host, "port": port,
                    "path": path, "query": [list(kv) for kv in query]},
        "policy": policy.path,
        "decide": _decision(decision),
        "connect": _decision(connect) if connect is not None else None,
        "rule": None,
        "candidates": [],
        "other_roles": [],
        "destination": _destination(policy.destinations[dest_name]) if dest_name else None,
        "approval": None,
        "reveal": None,
    }
    ident = policy.identities.get(identity)
    if ident is None:
        doc["did_you_mean"] = difflib.get_close_matches(identity, list(policy.identities), 3)
        return doc
    names = {d.name for d in dests}
    if decision.rule:
        doc["rule"] = next(_rule(policy, role, i, r) for role, i, r in _rules(policy) if r.id == decision.rule)
    # Rules are only looked at once the request is sane and goes to a known place: for
    # an unsafe path, a fronted host or a forbidden address no rule could help.
    if (not allowed and decision.reason in ("no_rule", "unknown_destination")) or not decision.enforced:
        found = [(role, i, r, _failures(r, req, names, policy)) for role, i, r in _rules(policy)
                 if role in ident.roles]
        found.sort(key=lambda c: (any(f["part"] == "destination" for f in c[3]), len(c[3]), c[2].line))
        doc["candidates"] = [{**_rule(policy, role, i, r), "failed": fails}
                             for role, i, r, fails in found[:MAX_CANDIDATES]]
        doc["other_roles"] = [_rule(policy, role, i, r) for role, i, r in _rules(policy)
                              if role not in ident.roles and not _failures(r, req, names, policy)]
    if allowed and decision.enforced:
        approval = rule_for(policy, req, decision.destination)
        if approval is not None:
            doc["approval"] = {"rule": approval.name, "mode": approval.mode, "required": approval.required,
                               "approvers": list(approval.approvers), "timeout": approval.timeout,
                               "grant_window": approval.grant_window if approval.mode == "grant" else None,
                               "line": approval.line}
        reveal = next((r for r in policy.reveals if r.identity == identity and r.destination == dest_name), None)
        if reveal is not None:
            doc["reveal"] = {"justification": reveal.justification, "line": reveal.line}
    return doc


def _rules(policy: Policy):
    for role in policy.roles.values():
        for i, rule in enumerate(role.rules):
            yield role.name, i, rule


def _decision(d: Decision) -> dict:
    return {"allowed": d.allowed, "enforced": d.enforced, "reason": d.reason, "detail": d.detail,
            "rule": d.rule, "destination": d.destination}


def _destination(d: Destination) -> dict:
    return {"name": d.name, "scheme": d.scheme, "hosts": list(d.hosts), "ports": list(d.ports),
            "card_data": d.card_data, "line": d.line}


def _rule(policy: Policy, role: str, index: int, r: Rule) -> dict:
    return {"id": r.id, "role": role, "index": index, "mode": policy.roles[role].mode, "line": r.line,
            "destination": r.destination, "methods": [m for m in METHODS if m in r.methods],
            "paths": list(r.paths), "query": [query_text(q) for q in r.query]}


def query_text(q: QueryRule) -> str:
    if q.op in ("present", "absent"):
        return f"{q.param} {q.op}"
    value = q.value
    if q.op == "in":
        value = "[" + ", ".join(value) + "]"
    elif q.op == "matches":
        value = value.pattern
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{q.param} {q.op} {value}"


def _failures(r: Rule, req: Request, dest_names: set[str], policy: Policy) -> list[dict]:
    """Each part of the rule this request does not meet, with why; [] when the rule matches."""
    out = []
    if r.destination not in dest_names:
        d = policy.destinations[r.destination]
        out.append({"part": "destination", "why": (
            f"the rule is for {r.destination} ({d.scheme}://{'|'.join(d.hosts)}:{'|'.join(map(str, d.ports))}); "
            f"the request goes to {req.scheme}://{req.host}:{req.port}")})
    if req.method not in r.methods:
        out.append({"part": "method", "why": f"{req.method} is not one of "
                                             f"{', '.join(m for m in METHODS if m in r.methods)}"})
    path = unquote(req.path)
    if not any(path_matches(p, path) for p in r.paths):
        out.append({"part": "path", "why": f"{path} matches none of {', '.join(r.paths)}"})
    for q in r.query:
        if not query_ok((q,), req.query):
            values = [v for k, v in req.query if k == q.param]
            got = ", ".join(f"{q.param}={v}" for v in values) if values else f"{q.param} is absent"
            out.append({"part": "query", "why": f"{query_text(q)} does not hold ({got})"})
    return out


def render(doc: dict) -> str:
    """The explanation as text, most important line first."""
    r = doc["request"]
    qs = "&".join(f"{k}={v}" for k, v in r["query"])
    lines = [f"{doc['decision']}: {doc['detail']} ({doc['reason']})",
             f"request: {r['identity']} {r['method']} {r['scheme']}://{r['host']}:{r['port']}{r['path']}"
             + (f"?{qs}" if qs else "") + f"  [policy {doc['policy']}]"]
    if doc["decision"] == "deny" and doc["reason"] not in ("no_rule", "unknown_destination", "unknown_identity"):
        lines.append("refused before any rule is looked at: no rule can allow this request")
    if doc.get("did_you_mean"):
        lines.append(f"did you mean: {', '.join(doc['did_you_mean'])}")
    c = doc["connect"]
    if c is not None and not c["allowed"] and c["reason"] != doc["decide"]["reason"]:
        lines.append(f"tunnel (CONNECT): refused: {c['detail']}")
    if doc["rule"]:
        lines.append("matched " + _rule_text(doc["rule"], doc["policy"]))
    if doc["candidates"]:
        lines.append("closest rules, and why each does not match:")
        for cand in doc["candidates"]:
            lines.append("  " + _rule_text(cand, doc["policy"], "  "))
            lines += [f"      - {f['part']}: {f['why']}" for f in cand["failed"]]
    elif doc["decision"] != "allow" and doc["reason"] == "no_rule":
        lines.append(f"{r['identity']}'s roles have no rules")
    for other in doc["other_roles"]:
        lines.append(f"rule {other['id']} would allow it, but {r['identity']} does not have role {other['role']}")
    d = doc["destination"]
    if d:
        what = ("card_data: card numbers may be sent there; responses are masked" if d["card_data"]
                else "not card_data: a raw card number in a request is refused")
        lines.append(f"destination: {d['name']} ({what})")
    a = doc["approval"]
    if a:
        lines.append(f"approval: rule {a['rule']} applies: {a['mode']}, {a['required']} approval(s) from "
                     f"{', '.join(a['approvers'])}, timeout {a['timeout']:g}s")
    elif doc["decision"] == "allow":
        lines.append("approval: no approval rule applies")
    if doc["reveal"]:
        lines.append(f"reveal: {r['identity']} sees full card numbers here ({doc['reveal']['justification']})")
    return "\n".join(lines)


def _rule_text(rule: dict, path: str, indent: str = "") -> str:
    text = (f"rule {rule['id']} (role {rule['role']}{', report mode' if rule['mode'] == 'report' else ''}, "
            f"allow entry {rule['index']}, {path}:{rule['line']}):\n"
            f"{indent}    destination {rule['destination']}; methods {', '.join(rule['methods'])}; "
            f"paths {', '.join(rule['paths'])}")
    if rule["query"]:
        text += f"; query {', '.join(rule['query'])}"
    return text
