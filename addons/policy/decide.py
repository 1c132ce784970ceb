"""The access decision, as a pure function of the policy and the request facts.

Kept apart from the proxy so every case can be tested directly, and so the
same code answers `pangate policy explain` and the data path.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

from pangate.policy import query as q
from pangate.policy.model import METHODS, Destination, Policy, QueryRule, Rule

# Addresses a workload must never reach unless a destination names them:
# the metadata services are how a proxied SSRF becomes stolen cloud credentials.
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}


@dataclass(frozen=True)
class Request:
    """What is known of a request, taken from the real connection, not the client's say-so."""

    identity: str
    scheme: str
    host: str  # the CONNECT target or absolute-form host: where the bytes really go
    port: int
    method: str
    path: str  # without the query
    query: tuple[tuple[str, str], ...] = ()  # decoded pairs; ignored when raw_query is given
    host_header: str | None = None
    sni: str | None = None
    # Later facts, each optional so older callers keep working (how they are read:
    # pangate.policy.query): the query string as sent (without "?"), which decide
    # splits itself; the request headers as sent, for method overrides; and the
    # body, once it is known (None at requestheaders), with its Content-Type, read
    # for form, multipart and JSON parameters.
    raw_query: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None
    body: bytes | None = None


@dataclass(frozen=True)
class Miss:
    """Why one rule of the identity's roles did not allow the request (for `policy explain`)."""

    rule: str  # "role/index"
    role: str
    index: int
    reason: str  # other_destination, method, path, query, ambiguous_query
    detail: str


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # short code: allowed, no_rule, unknown_identity, host_mismatch, ...
    detail: str  # one sentence for the refusal body and the log
    rule: str | None = None
    destination: str | None = None
    enforced: bool = True  # False: a report-mode role would have denied, the request went on
    role: str | None = None  # of the rule that allowed
    index: int | None = None  # its place in the role's allow list
    method: str | None = None  # the method judged (the override's, where policy honors one)
    misses: tuple[Miss, ...] = ()  # the rules tried before the decision, and why each did not allow

    @property
    def outcome(self) -> str:
        if self.allowed:
            return "allowed" if self.enforced else "report_only"
        return "denied"


def decide(policy: Policy, req: Request) -> Decision:
    identity = policy.identities.get(req.identity)
    if identity is None:
        return Decision(False, "unknown_identity", f"identity {req.identity!r} is not in the policy")
    problem = unsafe_path(req.path)
    if problem:
        return Decision(False, "unsafe_path", problem)
    host = req.host.lower().rstrip(".")
    mismatch = _front_mismatch(host, req)
    if mismatch:
        return Decision(False, "host_mismatch", mismatch)
    dests = [d for d in policy.destinations.values() if destination_matches(d, req.scheme, host, req.port)]
    if not dests:
        return Decision(False, "unknown_destination", f"{req.scheme}://{host}:{req.port} is not a destination in the policy")
    address_problem = address_refusal(host, dests)
    if address_problem:
        return Decision(False, "address_not_allowed", address_problem, destination=dests[0].name)
    readings = request_params(req)
    bad = next((p for r in readings for p in r if p.readings is None), None)
    if bad:
        return Decision(False, "unsafe_query", f"{bad.problem}: refused", destination=dests[0].name)
    rewrite = path_override(req)
    if rewrite:
        return Decision(False, "path_override", rewrite, destination=dests[0].name)
    method, override_problem = judged_method(policy, req, dests, readings)
    if override_problem:
        return Decision(False, "method_override", override_problem, destination=dests[0].name)
    names = {d.name for d in dests}
    report_only: Decision | None = None
    misses: list[Miss] = []
    for role_name in identity.roles:
        role = policy.roles[role_name]
        for index, rule in enumerate(role.rules):
            miss = _judge(rule, role_name, index, names, method, req.path, readings)
            if miss is None:
                return Decision(True, "allowed", f"allowed by rule {rule.id}", rule.id, rule.destination,
                                role=role_name, index=index, method=method, misses=tuple(misses))
            misses.append(miss)
        if role.mode == "report" and report_only is None:
            report_only = Decision(True, "report_only",
                                   f"role {role_name} is in report mode: this request would be denied",
                                   None, dests[0].name, enforced=False, method=method)
    if report_only:
        return Decision(**{**report_only.__dict__, "misses": tuple(misses)})
    ambiguous = next((m for m in misses if m.reason == "ambiguous_query"), None)
    if ambiguous:
        return Decision(False, "ambiguous_query", f"{ambiguous.detail}: refused", destination=dests[0].name,
                        method=method, misses=tuple(misses))
    return Decision(False, "no_rule",
                    f"no rule lets {req.identity} {method} {req.path} on {dests[0].name}",
                    destination=dests[0].name, method=method, misses=tuple(misses))


def request_params(req: Request) -> list[tuple[q.Param, ...]]:
    """Every way the request's parameters (query, then body) may be read; each a tuple of Params.

    More than one when a server could split them differently (a raw `;`); a
    rule must hold under all of them, a trigger fires under any.
    """
    if req.raw_query is not None:
        queries = q.readings_of(req.raw_query)
    else:
        queries = [q.from_pairs(req.query)]
    bodies = q.body_params(req.content_type, req.body) if req.body is not None else [()]
    return [a + b for a in queries for b in bodies]


# Headers that make a server act as another method or on another path than the
# one the policy judged: Rack, Express, Symfony/Laravel, ASP.NET and OData
# honor the first three; IIS and older Symfony the last two. Header names are
# compared folded, `_` as `-` (CGI and WSGI merge them into one variable).
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-method-override", "x-http-method")
PATH_OVERRIDE_HEADERS = ("x-original-url", "x-rewrite-url")
METHOD_OVERRIDE_PARAM = ("_method",)


def _header_name(name: str) -> str:
    return name.strip().casefold().replace("_", "-")


def path_override(req: Request) -> str | None:
    for name, _ in req.headers:
        if _header_name(name) in PATH_OVERRIDE_HEADERS:
            return f"the {name} header makes some servers serve another path than the one judged: refused"
    return None


def method_overrides(req: Request, readings: list[tuple[q.Param, ...]] | None = None) -> list[tuple[str, str]]:
    """Each (where, value) in the request that asks the server to act as another method."""
    found = [(f"header {name}", value) for name, value in req.headers
             if _header_name(name) in METHOD_OVERRIDE_HEADERS]
    seen = set()
    for params in readings if readings is not None else request_params(req):
        for p in params:
            if p.readings is not None and q.binding(METHOD_OVERRIDE_PARAM, p) and (p.name, p.value) not in seen:
                seen.add((p.name, p.value))
                found.append((f"{p.source} parameter {p.name}", p.value))
    return found


def judged_method(policy: Policy, req: Request, dests: list[Destination],
                  readings: list[tuple[q.Param, ...]] | None = None) -> tuple[str, str | None]:
    """The method to judge the request as, or a refusal when it carries a method override.

    Refused unless every destination it may be for says `method_override:
    honor` (or the settings do); then only on POST (the one method every
    framework takes an override on), with one known method named by every
    override, which is judged in place of POST.
    """
    found = method_overrides(req, readings)
    if not found:
        return req.method, None
    where, value = found[0]
    modes = {d.method_override or policy.method_override for d in dests}
    if modes != {"honor"}:
        return req.method, (f"the {where} could make the server act as {value[:20]!r}, not {req.method}: "
                            "refused (a destination may set method_override: honor)")
    wanted = {v.strip().upper() for _, v in found}
    if len(wanted) != 1:
        return req.method, f"the request names more than one override method ({', '.join(sorted(wanted))})"
    method = wanted.pop()
    if method not in METHODS:
        return req.method, f"the {where} names {value[:20]!r}, which is not a method the policy knows"
    if req.method != "POST":
        return req.method, f"a method override is honored on POST only; this is a {req.method}"
    return method, None


def _judge(rule: Rule, role: str, index: int, names: set[str], method: str, path: str,
           readings: list[tuple[q.Param, ...]]) -> Miss | None:
    def miss(reason, detail):
        return Miss(rule.id, role, index, reason, detail)
    if rule.destination not in names:
        return miss("other_destination", f"rule {rule.id} is for destination {rule.destination}")
    if method not in rule.methods:
        return miss("method", f"rule {rule.id} allows {', '.join(sorted(rule.methods))}, not {method}")
    decoded = unquote(path)
    if not any(path_matches(p, decoded) for p in rule.paths):
        return miss("path", f"rule {rule.id} allows paths {', '.join(rule.paths)}, not {path}")
    failures = [f for f in (query_problem(rule.query, params) for params in readings) if f]
    if failures:  # the most precise refusal: a reading that is ambiguous says so
        return miss(*next((f for f in failures if f[0] == "ambiguous_query"), failures[0]))
    return None
def destinations_for(policy: Policy, host: str, port: int, scheme: str | None = None) -> list[Destination]:
    """The destinations a host:port (and scheme, when known) belongs to."""
    host = host.lower().rstrip(".")
    return [d for d in policy.destinations.values()
            if port in d.ports and (scheme is None or scheme == d.scheme)
            and any(host_matches(p, host) for p in d.hosts)]


def destination_matches(d: Destination, scheme: str, host: str, port: int) -> bool:
    if scheme != d.scheme or port not in d.ports:
        return False
    return any(host_matches(pattern, host) for pattern in d.hosts)


def host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def rule_matches(rule: Rule, req: Request) -> bool:
    """Does this one rule allow the request as sent (its method, no override)?"""
    readings = request_params(req)
    if any(p.readings is None for r in readings for p in r):
        return False
    return _judge(rule, "", 0, {rule.destination}, req.method, req.path, readings) is None


def unsafe_path(path: str) -> str | None:
    """A request target that servers could read differently from us is refused, not guessed at.

    `path` is the raw path (no query). Empty or dot segments, doubled slashes,
    backslashes, `;` parameters and fragments are where proxies and servers
    disagree (/v1/charges/..;/admin, //admin/v1/charges, a#&limit=...).
    """
    if not path.startswith("/"):
        return f"the request target {path[:80]!r} is not an origin-form path"
    for bad, why in (("#", "a fragment"), (";", "a ; parameter")):  # as sent: %23 and %3B are data
        if bad in path:
            return f"the request path has {why}, which servers read differently: refused"
    decoded = unquote(path)
    for bad, why in (("\\", "a backslash"), ("\x00", "a NUL byte")):  # encoded too: servers decode first
        if bad in decoded:
            return f"the request path has {why}, which servers read differently: refused"
    if "//" in decoded or "/./" in decoded + "/" or "/../" in decoded + "/":
        return "the request path has empty or dot segments, which servers read differently: refused"
    return None


def path_matches(pattern: str, path: str) -> bool:
    """`*` matches within one segment, `**` across segments; no `..` tricks."""
    if "/../" in path + "/" or "/./" in path + "/":
        return False
    return _path_regex(pattern).fullmatch(path) is not None


@lru_cache(maxsize=4096)
def _path_regex(pattern: str) -> re.Pattern:
    out = []
    for part in re.split(r"(\*\*|\*)", pattern):
        out.append(".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part))
    regex = "".join(out)
    if regex.endswith("/.*"):  # "/v1/**" also matches "/v1"
        regex = regex[:-3] + "(/.*)?"
    return re.compile(regex)


def query_ok(rules: tuple[QueryRule, ...], query) -> bool:
    """Every constraint holds; `query` is decoded (name, value) pairs or Params."""
    return query_problem(rules, _params(query)) is None


def _params(query) -> tuple[q.Param, ...]:
    return tuple(x if isinstance(x, q.Param) else q.param(*x) for x in query)


def query_problem(rules: tuple[QueryRule, ...], params: tuple[q.Param, ...]) -> tuple[str, str] | None:
    """(code, detail) for the first constraint that does not hold, or None.

    Binding and counting as in pangate.policy.query: a constrained name bound
    more than once (unless the rule declares a list with `name[]`), bound as an
    object, or with an unreadable value is `ambiguous_query`; a plain miss is
    `query`.
    """
    for rule in rules:
        try:
            path, many = q.rule_name(rule.param)
        except q.Unreadable as e:  # the loader refuses these; a hand-built rule fails closed
            return "query", str(e)
        bound = []
        for p in params:
            if p.readings is None:
                return "ambiguous_query", p.problem
            kinds = q.binding(path, p)
            if kinds:
                bound.append((p, kinds))
        spelled = ", ".join(f"{p.name}={p.value[:20]}" for p, _ in bound[:4])
        if rule.op == "absent":
            if bound:
                return "query", f"{rule.param} must be absent ({spelled})"
            continue
        if len(bound) > 1 and not many:
            return "ambiguous_query", f"{rule.param} is given {len(bound)} times ({spelled})"
        nested = next((p for p, kinds in bound if "object" in kinds), None)
        if nested:
            return "ambiguous_query", f"{nested.name} makes {rule.param} a nested value no rule can judge"
        if rule.op == "present":
            if not any("exact" in kinds for _, kinds in bound):
                return "query", f"{rule.param} must be present"
            continue
        if not bound:
            # An upper bound with the parameter absent means the server default:
            # the policy must say `present` if it wants to force it.
            if rule.op in ("<", "<="):
                continue
            return "query", f"{rule.param} must be given ({_show(rule)})"
        for p, _ in bound:
            problem = q.value_problem(p.value)
            if problem:
                return "ambiguous_query", f"the value of {p.name} {problem}"
            if not _holds(rule, p.value):
                return "query", f"{p.name}={p.value[:40]!r} does not satisfy {rule.param} {_show(rule)}"
    return None


def _show(rule: QueryRule) -> str:
    if rule.op in ("present", "absent"):
        return rule.op
    value = rule.value.pattern if rule.op == "matches" else list(rule.value) if rule.op == "in" else rule.value
    return f"{rule.op} {value}"


def query_triggers(rules: tuple[QueryRule, ...], query) -> bool:
    """Trigger semantics, for rules that ADD a check (approvals): one matching value is enough.

    The opposite of query_ok, so a duplicated parameter (limit=1&limit=5000)
    cannot hide the value a server will use, and names bind as in query_ok
    (Limit, limit[], page[limit], limit%00 ...). `query` is decoded pairs, or
    the Request itself (then its raw query and body count too, under every
    reading). Anything that cannot be judged triggers.
    """
    readings = request_params(query) if isinstance(query, Request) else [_params(query)]
    return any(_triggers(rules, params) for params in readings)


def _triggers(rules: tuple[QueryRule, ...], params: tuple[q.Param, ...]) -> bool:
    if any(p.readings is None for p in params):
        return True
    for rule in rules:
        try:
            path, _ = q.rule_name(rule.param)
        except q.Unreadable:
            return True
        bound = [(p, kinds) for p in params if (kinds := q.binding(path, p))]
        if rule.op == "present":
            hit = bool(bound)
        elif rule.op == "absent":
            hit = not any("exact" in kinds for _, kinds in bound)
        else:
            hit = any("object" in kinds or q.value_problem(p.value) or _holds(rule, p.value)
                      or (rule.op in ("<", "<=", ">", ">=") and q.number(p.value) is None)
                      for p, kinds in bound)
        if not hit:
            return False
    return True


def _number(value: str) -> bool:
    """A value we read as a number; servers read 5000abc or 0x1388 their own way."""
    return q.number(value) is not None


def path_triggers(pattern: str, path: str) -> bool:
    """Trigger semantics for paths: case and a trailing slash do not escape a rule."""
    path = unquote(path)
    variants = {path, path.lower(), path.rstrip("/") or "/", path.lower().rstrip("/") or "/"}
    return any(path_matches(p, v) for p in (pattern, pattern.lower()) for v in variants)


def _holds(rule: QueryRule, value: str) -> bool:
    op, want = rule.op, rule.value
    if op in ("<", "<=", ">", ">="):
        got = q.number(value)
        if got is None:  # 1e3, 0x10, 1_000, 010, nan: not judged, so not allowed
            return False
        return {"<": got < want, "<=": got <= want, ">": got > want, ">=": got >= want}[op]
    if op == "==":
        return value == str(want)
    if op == "!=":
        return value != str(want)
    if op == "in":
        return value in want
    if op == "matches":
        return want.fullmatch(value) is not None
    return False


def _front_mismatch(host: str, req: Request) -> str | None:
    """Domain fronting: the Host header or SNI names another host than the tunnel."""
    if req.sni and req.sni.lower().rstrip(".") != host:
        return f"TLS server name {req.sni!r} differs from the tunnel's host {host!r}"
    if req.host_header:
        name = req.host_header.lower()
        if name.startswith("["):
            name = name[1:name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.split(":")[0]
        if name.rstrip(".") != host:
            return f"Host header {req.host_header!r} differs from the tunnel's host {host!r}"
    return None


def address_refusal(host: str, dests: list[Destination], resolved: str | None = None) -> str | None:
    """IP literals and private, loopback, link-local or metadata addresses need a destination naming them."""
    literal = _ip(host)
    addr = _ip(resolved) if resolved else literal
    if addr is None:
        return None
    named = any(addr in net for d in dests for net in d.addresses)
    if named:
        return None
    if addr in METADATA_ADDRESSES:
        return f"{addr} is a cloud metadata address"
    if literal is not None:
        return f"{host} is an IP literal: name it in a destination's addresses to allow it"
    if not addr.is_global:
        return f"{host} resolves to the non-public address {addr}"
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _ip(text: str):
    """The address; an IPv4 address carried inside an IPv6 one is judged as that IPv4 address
    (::ffff:169.254.169.254, NAT64 64:ff9b::a9fe:a9fe, 6to4 2002:a9fe:a9fe::, Teredo, ::a9fe:a9fe)."""
    try:
        addr = ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None
    if addr.version == 6:
        embedded = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if embedded is None and (addr in _NAT64 or (int(addr) >> 32 == 0 and int(addr) > 1)):
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded
    return addr


def decide_connect(policy: Policy, identity: str, host: str, port: int) -> Decision:
    """Coarse check at CONNECT: may this identity reach this host:port at all?

    The full decision is made on every request in the tunnel; this one only
    keeps a tunnel from being opened where no request could ever be allowed.
    """
    ident = policy.identities.get(identity)
    if ident is None:
        return Decision(False, "unknown_identity", f"identity {identity!r} is not in the policy")
    host = host.lower().rstrip(".")
    dests = {d.name: d for d in destinations_for(policy, host, port)}
    if not dests:
        return Decision(False, "unknown_destination", f"{host}:{port} is not a destination in the policy")
    problem = address_refusal(host, list(dests.values()))
    if problem:
        return Decision(False, "address_not_allowed", problem, destination=next(iter(dests)))
    for role_name in ident.roles:
        role = policy.roles[role_name]
        if role.mode == "report" or any(r.destination in dests for r in role.rules):
            return Decision(True, "allowed", f"{identity} may reach {host}:{port}")
    return Decision(False, "no_rule", f"no rule lets {identity} reach {host}:{port}", destination=next(iter(dests)))
