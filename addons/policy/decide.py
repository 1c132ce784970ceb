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

from pangate.policy.model import Destination, Policy, QueryRule, Rule

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
    query: tuple[tuple[str, str], ...] = ()
    host_header: str | None = None
    sni: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # short code: allowed, no_rule, unknown_identity, host_mismatch, ...
    detail: str  # one sentence for the refusal body and the log
    rule: str | None = None
    destination: str | None = None
    enforced: bool = True  # False: a report-mode role would have denied, the request went on

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
    names = {d.name for d in dests}
    report_only: Decision | None = None
    for role_name in identity.roles:
        role = policy.roles[role_name]
        for rule in role.rules:
            if rule.destination in names and rule_matches(rule, req):
                return Decision(True, "allowed", f"allowed by rule {rule.id}", rule.id, rule.destination)
        if role.mode == "report" and report_only is None:
            report_only = Decision(True, "report_only",
                                   f"role {role_name} is in report mode: this request would be denied",
                                   None, dests[0].name, enforced=False)
    if report_only:
        return report_only
    return Decision(False, "no_rule",
                    f"no rule lets {req.identity} {req.method} {req.path} on {dests[0].name}",
                    destination=dests[0].name)


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
    path = unquote(req.path)
    return (req.method in rule.methods
            and any(path_matches(p, path) for p in rule.paths)
            and query_ok(rule.query, req.query))


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


def query_ok(rules: tuple[QueryRule, ...], query: tuple[tuple[str, str], ...]) -> bool:
    """Every constraint holds for every value of its parameter (repeats can't sneak past)."""
    for rule in rules:
        values = [v for k, v in query if k == rule.param]
        if rule.op == "present":
            if not values:
                return False
            continue
        if rule.op == "absent":
            if values:
                return False
            continue
        if not values:
            # An upper bound with the parameter absent means the server default:
            # the policy must say `present` if it wants to force it.
            if rule.op in ("<", "<="):
                continue
            return False
        if not all(_holds(rule, v) for v in values):
            return False
    return True


def query_triggers(rules: tuple[QueryRule, ...], query: tuple[tuple[str, str], ...]) -> bool:
    """Trigger semantics, for rules that ADD a check (approvals): one matching value is enough.

    The opposite of query_ok, so a duplicated parameter (limit=1&limit=5000)
    cannot hide the value a server will use.
    """
    for rule in rules:
        name = rule.param.lower()
        values = [v for k, v in query if k.lower().removesuffix("[]") == name]
        if rule.op == "present":
            hit = bool(values)
        elif rule.op == "absent":
            hit = not values
        else:
            hit = any(_holds(rule, v) or (rule.op in ("<", "<=", ">", ">=") and not _number(v)) for v in values)
        if not hit:
            return False
    return True


def _number(value: str) -> bool:
    """A value we read as a number; servers read 5000abc or 0x1388 their own way."""
    try:
        float(value)
        return True
    except ValueError:
        return False


def path_triggers(pattern: str, path: str) -> bool:
    """Trigger semantics for paths: case and a trailing slash do not escape a rule."""
    path = unquote(path)
    variants = {path, path.lower(), path.rstrip("/") or "/", path.lower().rstrip("/") or "/"}
    return any(path_matches(p, v) for p in (pattern, pattern.lower()) for v in variants)


def _holds(rule: QueryRule, value: str) -> bool:
    op, want = rule.op, rule.value
    if op in ("<", "<=", ">", ">="):
        try:
            got = float(value)
        except ValueError:
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
