"""The policy model: who may reach what, loaded and validated from policies.yaml.

Plain data and validation only; decisions live in decide.py and the proxy
glue in policystore.py. A policy that loads is internally consistent: every
reference resolves and no secret is written inline.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urlsplit

from pangate.policy import yamlpos
from pangate.policy.query import Unreadable, rule_name
from pangate.policy.schema import Section
from pangate.policy.errors import PolicyError
from pangate.monitor.config import DEFAULT as MONITOR_DEFAULT, MonitorConfig, parse_monitor

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CREDENTIAL_TYPES = ("header", "bearer", "basic", "query", "mtls")
from pangate.pan.engine import MODES as MASK_MODES  # noqa: E402  (one list: the engine's)
# Keys that would put a secret in the file itself: the custody model is that
# secrets come from the environment or a file, so a reviewer of the policy
# (and its git history) never sees one.
INLINE_SECRET_KEYS = {"value", "secret", "token", "password", "key", "api_key", "apikey"}
# Word operators need a space after them, so "inactive" is a value, not "in active".
_QUERY = re.compile(r"^\s*(<=|>=|==|!=|<|>|=|in(?=\s)|matches(?=\s))?\s*(.*?)\s*$")


# Only asymmetric algorithms can ever be allowed: with HS* the verifier's public
# key would double as a forging secret, and "none" needs no key at all.
SUPPORTED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
# SAML signature and digest algorithms by their short names (the verifier maps
# them to XML-DSig URIs). SHA-1 is known so that a policy may name it for a
# legacy IdP, but it is never in a default: it must be asked for.
SAML_SIGNATURE_ALGORITHMS = ("rsa-sha256", "rsa-sha384", "rsa-sha512", "ecdsa-sha256", "ecdsa-sha384",
                             "ecdsa-sha512", "rsa-sha1")
SAML_DIGEST_ALGORITHMS = ("sha256", "sha384", "sha512", "sha1")
DEFAULT_SAML_DIGESTS = ("sha256", "sha384", "sha512")
DEFAULT_ALGORITHMS = {"oidc": ("RS256", "ES256", "EdDSA"), "pangate": ("EdDSA",),
                      "saml": ("rsa-sha256", "rsa-sha384", "rsa-sha512", "ecdsa-sha256", "ecdsa-sha384",
                               "ecdsa-sha512")}
ISSUER_TYPES = tuple(DEFAULT_ALGORITHMS)
NAMEID = "nameid"  # claim mapping source: the assertion's NameID rather than an attribute


@dataclass(frozen=True)
class Issuer:
    """One trusted token issuer: what the policy declares and what the token verifier uses.

    Exactly one key source: discovery_url, jwks_uri, jwks_file (type oidc),
    public_key_file (type pangate; jwks_file also accepted) or metadata_file /
    metadata_url (type saml: the IdP's SAML metadata, whose entityID is
    `issuer` and whose signing certificates are the keys). The policy parser
    checks the same rules first, with the line of the offending key; these
    checks make an issuer built in code just as trustworthy."""

    name: str
    issuer: str  # expected "iss" value; also how tokens are routed to this issuer
    audience: tuple[str, ...]  # a single string is taken as a tuple of one
    type: str = "oidc"  # "oidc" | "pangate"
    discovery_url: str | None = None
    jwks_uri: str | None = None
    jwks_file: str | None = None
    public_key_file: str | None = None
    algorithms: tuple[str, ...] | None = None  # None -> DEFAULT_ALGORITHMS of the type
    leeway: float = 30.0  # clock skew tolerance, seconds
    ca_file: str | None = None  # extra CA bundle for a private IdP; TLS is always verified
    refresh_interval: float = 60.0  # min seconds between fetch attempts (anti kid-spraying)
    jwks_max_age: float = 3600.0  # cached JWKS older than this is re-fetched when allowed
    discovery_max_age: float = 86400.0
    # Token exchange: the longest life of a pangate token exchanged for this issuer's
    # token or assertion (never longer than that token or assertion itself).
    exchange_ttl: float = 300.0
    # --- type saml only ---
    metadata_file: str | None = None
    metadata_url: str | None = None
    recipients: tuple[str, ...] = ()  # accepted SubjectConfirmationData Recipient values
    digest_algorithms: tuple[str, ...] | None = None  # None -> DEFAULT_SAML_DIGESTS
    subject_from: str = NAMEID  # NAMEID or the name of the attribute that gives `subject`
    claim_map: tuple[tuple[str, str], ...] = ()  # (claim name, NAMEID or attribute name)
    accept_in_proxy_auth: bool = False  # an assertion may be the proxy password itself

    def __post_init__(self):
        if self.type not in ISSUER_TYPES:
            raise ValueError(f"issuer {self.name}: type must be 'oidc', 'pangate' or 'saml'")
        sources = [s for s in (self.discovery_url, self.jwks_uri, self.jwks_file, self.public_key_file,
                               self.metadata_file, self.metadata_url) if s]
        if len(sources) != 1:
            raise ValueError(f"issuer {self.name}: exactly one key source is required")
        if self.type == "pangate" and not (self.public_key_file or self.jwks_file):
            raise ValueError(f"issuer {self.name}: pangate issuers use public_key_file or jwks_file")
        if (self.type == "saml") != bool(self.metadata_file or self.metadata_url):
            raise ValueError(f"issuer {self.name}: saml issuers, and only they, use metadata_file or metadata_url")
        if self.type == "saml":
            self._check_saml()
        if not 0 < self.exchange_ttl <= 86400:
            raise ValueError(f"issuer {self.name}: exchange_ttl must be between 0 and 1 day")
        for url in (self.discovery_url, self.jwks_uri, self.metadata_url):
            if url and urlsplit(url).scheme != "https":
                raise ValueError(f"issuer {self.name}: key URLs must be https")
        audience = (self.audience,) if isinstance(self.audience, str) else tuple(self.audience or ())
        if not self.issuer or not audience or not all(audience):
            raise ValueError(f"issuer {self.name}: issuer and audience must be set explicitly")
        algs = DEFAULT_ALGORITHMS[self.type] if self.algorithms is None else tuple(self.algorithms)
        known = SAML_SIGNATURE_ALGORITHMS if self.type == "saml" else SUPPORTED_ALGORITHMS
        bad = [a for a in algs if a not in known]
        if bad or not algs:
            raise ValueError(f"issuer {self.name}: algorithms not allowed: {bad or 'empty'}")
        object.__setattr__(self, "audience", audience)
        object.__setattr__(self, "algorithms", algs)

    def _check_saml(self) -> None:
        digests = DEFAULT_SAML_DIGESTS if self.digest_algorithms is None else tuple(self.digest_algorithms)
        bad = [d for d in digests if d not in SAML_DIGEST_ALGORITHMS]
        if bad or not digests:
            raise ValueError(f"issuer {self.name}: digest algorithms not allowed: {bad or 'empty'}")
        recipients = (self.recipients,) if isinstance(self.recipients, str) else tuple(self.recipients or ())
        if not recipients or not all(recipients):
            # Recipient is what stops an assertion made for another service being replayed here.
            raise ValueError(f"issuer {self.name}: saml issuers need the accepted recipient(s)")
        if not self.subject_from or not all(k and v for k, v in self.claim_map):
            raise ValueError(f"issuer {self.name}: claim mapping needs names on both sides")
        object.__setattr__(self, "digest_algorithms", digests)
        object.__setattr__(self, "recipients", recipients)
        object.__setattr__(self, "claim_map", tuple((str(k), str(v)) for k, v in self.claim_map))

    @property
    def remote(self) -> bool:
        """Keys are fetched over the network (and refreshed), not read from a file."""
        return bool(self.discovery_url or self.jwks_uri or self.metadata_url)


@dataclass(frozen=True)
class Identity:
    name: str
    roles: tuple[str, ...]
    issuer: str | None = None  # which issuer's tokens may prove it
    subject: str | None = None  # required `sub`; defaults to the name for pangate tokens
    claims: tuple[tuple[str, str], ...] = ()  # further required claims
    static_key_sha256: str | None = None  # declared exception, never the key itself
    static_key_reason: str | None = None
    description: str = ""


@dataclass(frozen=True)
class QueryRule:
    param: str
    op: str  # <= >= < > == != in matches present absent
    value: object
    line: int


@dataclass(frozen=True)
class Rule:
    id: str  # "role/index", named in decisions and audit records
    destination: str
    methods: frozenset[str]
    paths: tuple[str, ...]
    query: tuple[QueryRule, ...]
    line: int


@dataclass(frozen=True)
class Role:
    name: str
    mode: str  # "enforce" | "report"
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Credential:
    type: str
    name: str | None  # header or query parameter name
    env: str | None
    file: str | None
    key_file: str | None = None  # mtls private key


@dataclass(frozen=True)
class Destination:
    name: str
    hosts: tuple[str, ...]  # exact names or "*.suffix"
    ports: tuple[int, ...]
    scheme: str
    card_data: bool
    addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    credential: Credential | None
    line: int
    method_override: str | None = None  # "refuse" | "honor"; None: settings.method_override


@dataclass(frozen=True)
class Approval:
    name: str
    identities: tuple[str, ...]
    roles: tuple[str, ...]
    destination: str | None
    methods: frozenset[str]
    paths: tuple[str, ...]
    query: tuple[QueryRule, ...]
    approvers: tuple[str, ...]  # approver names or "group:NAME"
    required: int
    timeout: float
    mode: str  # "hold" | "grant"
    grant_window: float
    ui_resume: bool
    line: int


@dataclass(frozen=True)
class Approver:
    name: str
    groups: tuple[str, ...]
    # Ed25519 public key (PEM, from `pangate approver keygen`): approvers sign each
    # decision, so the gateway holds nothing that could forge one.
    public_key_file: str | None


@dataclass(frozen=True)
class Reveal:
    identity: str
    destination: str
    justification: str
    line: int


@dataclass(frozen=True)
class Masking:
    mode: str = "bin6last4"
    hmac_key_env: str | None = None


@dataclass(frozen=True)
class Policy:
    path: str
    digest: str  # sha256 of the file, recorded with every decision it made
    issuers: dict[str, Issuer] = field(default_factory=dict)
    identities: dict[str, Identity] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    destinations: dict[str, Destination] = field(default_factory=dict)
    approvals: dict[str, Approval] = field(default_factory=dict)
    approvers: dict[str, Approver] = field(default_factory=dict)
    reveals: tuple[Reveal, ...] = ()
    masking: Masking = Masking()
    method_override: str = "refuse"  # settings.method_override: the default for destinations
    range: str = "strip"  # settings.range: Range/If-Range toward card-data destinations, stripped or refused
    monitor: MonitorConfig = MONITOR_DEFAULT  # live detectors (pangate.monitor.config)

    def static_key_identities(self) -> list[Identity]:
        """Identities on a static key: a declared risk, listed in every report."""
        return [i for i in self.identities.values() if i.static_key_sha256]

    @cached_property
    def identity_index(self) -> "IdentityIndex":
        """Token claims -> identity, built once (parse_policy builds it, off the event loop)."""
        return IdentityIndex(self)


class IdentityIndex:
    """Which identity a verified token proves, found without scanning every identity.

    The rule is the linear one it replaces: the first identity, in policy
    order, whose issuer matches, whose subject (for pangate tokens: its name)
    equals the token's `sub`, and all of whose claims equal the token's. An
    identity that pins no subject pins claims (one without either matches
    nothing): it is found through its first claim, an equality match, so a
    lookup reads one bucket per claim name in use, not every identity.
    """

    def __init__(self, policy: "Policy"):
        self._by_subject: dict[tuple[str, str], list[tuple[int, Identity]]] = {}
        self._by_claim: dict[tuple[str, str, str], list[tuple[int, Identity]]] = {}
        self._claim_names: dict[str, list[str]] = {}  # issuer -> claim names indexed under it
        for order, ident in enumerate(policy.identities.values()):
            if ident.issuer is None or ident.issuer not in policy.issuers:
                continue
            kind = policy.issuers[ident.issuer].type
            subject = ident.subject or (ident.name if kind == "pangate" else None)
            if subject is not None:
                self._by_subject.setdefault((ident.issuer, subject), []).append((order, ident))
            elif ident.claims:
                name, value = ident.claims[0]
                self._by_claim.setdefault((ident.issuer, name, value), []).append((order, ident))
                names = self._claim_names.setdefault(ident.issuer, [])
                if name not in names:
                    names.append(name)

    def match(self, issuer: str, subject: str, claims: dict) -> Identity | None:
        """The identity a token of `issuer` (the policy's issuer name) with these claims proves."""
        candidates = list(self._by_subject.get((issuer, subject), ()))
        for name in self._claim_names.get(issuer, ()):
            candidates += self._by_claim.get((issuer, name, str(claims.get(name))), ())
        best = None
        for order, ident in candidates:
            if (best is None or order < best[0]) and all(str(claims.get(k)) == v for k, v in ident.claims):
                best = (order, ident)
        return best[1] if best else None


def load_policy(path: str) -> Policy:
    try:
        with open(path, "rb") as f:
            data = f.read(yamlpos.MAX_BYTES + 1)
            if len(data) > yamlpos.MAX_BYTES:
                data += f.read()  # only to report the size; still refused
    except OSError as e:
        raise PolicyError(f"cannot read: {e.strerror}", path) from None
    return parse_policy(yamlpos.decode(data, path), path)


def parse_policy(text: str, path: str = "<policy>") -> Policy:
    doc = Section(yamlpos.load(text, path), "", path, 1)
    doc.keys({"version", "settings", "issuers", "identities", "roles", "destinations",
              "approvals", "approvers", "reveal", "monitor"}, {"version"})
    if doc.get("version") != 1:
        raise doc.error("version", "only version 1 is known")
    settings = doc.section("settings")
    p = Policy(path=path, digest=hashlib.sha256(text.encode()).hexdigest(),
               masking=_masking(settings), method_override=_method_override(settings), range=_range(settings))
    base = os.path.dirname(os.path.abspath(path)) if path != "<policy>" else os.getcwd()
    for name, s in doc.named("issuers"):
        p.issuers[name] = _issuer(name, s, base)
    for name, s in doc.named("destinations"):
        p.destinations[name] = _destination(name, s, base)
    for name, s in doc.named("roles"):
        p.roles[name] = _role(name, s, p)
    for name, s in doc.named("identities"):
        p.identities[name] = _identity(name, s, p)
    for name, s in doc.named("approvers"):
        s.keys({"groups", "public_key_file"}, hint={k: "approvers sign with a private key that is never in "
                                                       "the policy: give public_key_file" for k in INLINE_SECRET_KEYS})
        p.approvers[name] = Approver(name, s.strs("groups", ()), _file(s, "public_key_file", base))
    for name, s in doc.named("approvals"):
        p.approvals[name] = _approval(name, s, p)
    p_reveals = []
    for s in doc.items("reveal"):
        s.keys({"identity", "destination", "justification"}, {"identity", "destination", "justification"})
        _ref(s, "identity", p.identities)
        _ref(s, "destination", p.destinations)
        if len(s.str("justification").split()) < 3:
            raise s.error("justification", "write why this identity needs to see full card numbers")
        p_reveals.append(Reveal(s.str("identity"), s.str("destination"), s.str("justification"), s.line()))
    policy = Policy(**{**p.__dict__, "reveals": tuple(p_reveals), "monitor": _monitor(doc, p)})
    _ = policy.identity_index  # built with the policy: the loader's thread pays for it, not a request
    return policy


def _monitor(doc: Section, p: Policy) -> MonitorConfig:
    """The `monitor:` section: thresholds of the live detectors, declared hours per identity."""
    return parse_monitor(doc.section("monitor"), p.identities)


OVERRIDE_MODES = ("refuse", "honor")
RANGE_MODES = ("strip", "refuse")


def _range(s: Section | None) -> str:
    """A byte range of a card-data body is masked alone: stripped (the whole body is fetched and masked)
    or refused."""
    return "strip" if s is None else s.str("range", "strip", RANGE_MODES)


def _method_override(s: Section | None) -> str:
    """X-HTTP-Method-Override, _method and kin: refused unless the policy says the backend's reading."""
    return "refuse" if s is None else s.str("method_override", "refuse", OVERRIDE_MODES)


def _masking(s: Section | None) -> Masking:
    if s is None:
        return Masking()
    s.keys({"masking", "method_override", "range"})
    m = s.section("masking")
    if m is None:
        return Masking()
    m.keys({"mode", "hmac_key_env"})
    mode = m.str("mode", "bin6last4", MASK_MODES)
    key_env = m.str("hmac_key_env", None)
    if mode == "hmac" and not key_env:
        raise m.error("hmac_key_env", "mode hmac needs the environment variable that holds the key")
    return Masking(mode, key_env)


def _issuer(name: str, s: Section, base: str) -> Issuer:
    s.keys({"type", "issuer", "audience", "discovery_url", "jwks_uri", "jwks_file",
            "public_key_file", "algorithms", "leeway", "ca_file", "exchange_ttl"} | _SAML_KEYS, {"type"})
    kind = s.str("type", choices=ISSUER_TYPES)
    if kind == "saml":
        return _saml_issuer(name, s, base)
    for key in sorted(_SAML_KEYS & set(s.node)):
        raise s.error(key, "only for issuers of type saml")
    sources = [k for k in ("discovery_url", "jwks_uri", "jwks_file", "public_key_file") if k in s.node]
    if kind == "oidc" and len(sources) != 1:
        raise s.error(None, "an oidc issuer needs exactly one of discovery_url, jwks_uri, jwks_file")
    if kind == "pangate" and sources != ["public_key_file"]:
        raise s.error(None, "a pangate issuer needs public_key_file (made by `pangate token keygen`)")
    for url_key in ("discovery_url", "jwks_uri"):
        if url_key in s.node and not s.str(url_key).startswith("https://"):
            raise s.error(url_key, "keys are only fetched over https")
    algs = s.strs("algorithms", DEFAULT_ALGORITHMS[kind])
    for alg in algs:
        if alg not in SUPPORTED_ALGORITHMS:
            raise s.error("algorithms", f"{alg!r} is not allowed (asymmetric algorithms only)")
    fields = dict(name=name, type=kind, audience=s.strs("audience", ("pangate",)),
                  issuer=s.str("issuer", "pangate" if kind == "pangate" else None) or _req(s, "issuer"),
                  discovery_url=s.str("discovery_url", None), jwks_uri=s.str("jwks_uri", None),
                  jwks_file=_file(s, "jwks_file", base), public_key_file=_file(s, "public_key_file", base),
                  algorithms=algs, leeway=s.duration("leeway", 30.0), ca_file=_file(s, "ca_file", base),
                  exchange_ttl=s.duration("exchange_ttl", 300.0))
    try:
        return Issuer(**fields)
    except ValueError as e:  # the model's own checks, should one ever be stricter: still located
        raise s.error(None, str(e)) from None


_SAML_KEYS = {"metadata_file", "metadata_url", "recipient", "digest_algorithms", "mapping", "accept_in_proxy_auth"}


def _saml_issuer(name: str, s: Section, base: str) -> Issuer:
    """A SAML 2.0 IdP: its metadata gives the signing certificates; pangate is the SP `audience`."""
    for key in ("discovery_url", "jwks_uri", "jwks_file", "public_key_file"):
        if key in s.node:
            raise s.error(key, "a saml issuer takes its keys from metadata_file or metadata_url")
    sources = [k for k in ("metadata_file", "metadata_url") if k in s.node]
    if len(sources) != 1:
        raise s.error(None, "a saml issuer needs exactly one of metadata_file, metadata_url (the IdP's metadata)")
    if "metadata_url" in s.node and not s.str("metadata_url").startswith("https://"):
        raise s.error("metadata_url", "metadata is only fetched over https")
    if "issuer" not in s.node:
        raise s.error(None, "missing required key 'issuer' (the IdP's entityID, as in its metadata)")
    if "audience" not in s.node:
        raise s.error(None, "missing required key 'audience' (pangate's SP entity id at the IdP)")
    if "recipient" not in s.node:
        raise s.error(None, "missing required key 'recipient' (the URL the IdP puts in SubjectConfirmationData)")
    algs = s.strs("algorithms", DEFAULT_ALGORITHMS["saml"])
    for alg in algs:
        if alg not in SAML_SIGNATURE_ALGORITHMS:
            raise s.error("algorithms", f"{alg!r} is not a known SAML signature algorithm "
                                        f"(known: {', '.join(SAML_SIGNATURE_ALGORITHMS)})")
    digests = s.strs("digest_algorithms", DEFAULT_SAML_DIGESTS)
    for d in digests:
        if d not in SAML_DIGEST_ALGORITHMS:
            raise s.error("digest_algorithms", f"{d!r} is not a known digest (known: {', '.join(SAML_DIGEST_ALGORITHMS)})")
    subject_from, claim_map = NAMEID, ()
    mapping = s.section("mapping")
    if mapping is not None:
        mapping.keys({"subject", "claims"})
        subject_from = mapping.str("subject", NAMEID)
        claims = mapping.section("claims")
        if claims is not None:
            for k, v in claims.node.items():
                if not isinstance(v, str) or not v:
                    raise claims.error(str(k), f"map a claim to '{NAMEID}' or an attribute name")
            claim_map = tuple((str(k), v) for k, v in claims.node.items())
    fields = dict(name=name, type="saml", issuer=s.str("issuer"), audience=s.strs("audience"),
                  metadata_file=_file(s, "metadata_file", base), metadata_url=s.str("metadata_url", None),
                  recipients=s.strs("recipient"), algorithms=algs, digest_algorithms=digests,
                  subject_from=subject_from, claim_map=claim_map,
                  accept_in_proxy_auth=s.bool("accept_in_proxy_auth"), leeway=s.duration("leeway", 30.0),
                  ca_file=_file(s, "ca_file", base), exchange_ttl=s.duration("exchange_ttl", 300.0))
    try:
        return Issuer(**fields)
    except ValueError as e:
        raise s.error(None, str(e)) from None


def _destination(name: str, s: Section, base: str) -> Destination:
    s.keys({"host", "hosts", "port", "ports", "scheme", "card_data", "addresses", "credential",
            "description", "method_override"})
    hosts = s.strs("hosts", None) or s.strs("host", None)
    if not hosts or ("host" in s.node and "hosts" in s.node):
        raise s.error(None, "give the destination `host` or `hosts`")
    for h in hosts:
        if not re.fullmatch(r"(\*\.)?[A-Za-z0-9.:\[\]-]+", h) or h.startswith("*.") and h.count(".") < 2:
            raise s.error("hosts" if "hosts" in s.node else "host", f"{h!r} is not a host or *.suffix pattern")
    scheme = s.str("scheme", "https", ("https", "http"))
    if "ports" in s.node:
        ports = s.get("ports")
        if not isinstance(ports, list) or not all(isinstance(x, int) and 0 < x < 65536 for x in ports):
            raise s.error("ports", "expected a list of port numbers")
        ports = tuple(ports)
    else:
        ports = (s.int("port", 443 if scheme == "https" else 80, 1, 65535),)
    addresses = []
    for a in s.strs("addresses", ()):
        try:
            addresses.append(ipaddress.ip_network(a, strict=False))
        except ValueError:
            raise s.error("addresses", f"{a!r} is not an address or network") from None
    return Destination(name, tuple(h.lower() for h in hosts), ports, scheme, s.bool("card_data"),
                       tuple(addresses), _credential(s.section("credential"), base), s.line(),
                       s.str("method_override", None, OVERRIDE_MODES))


def _credential(s: Section | None, base: str) -> Credential | None:
    if s is None:
        return None
    for key in s.node:
        if key in INLINE_SECRET_KEYS:
            raise s.error(key, "a secret written in the policy is refused: use env or file")
    s.keys({"type", "name", "env", "file", "key_file"}, {"type"})
    kind = s.str("type", choices=CREDENTIAL_TYPES)
    env, file = s.str("env", None), _file(s, "file", base)
    if kind == "mtls":
        if not file or not s.str("key_file", None) or env:
            raise s.error(None, "an mtls credential needs file (certificate) and key_file")
    elif bool(env) == bool(file):
        raise s.error(None, "a credential is read from exactly one of env or file")
    name = s.str("name", None)
    if kind in ("header", "query") and not name:
        raise s.error(None, f"a {kind} credential needs the {kind} name in `name`")
    return Credential(kind, name, env, file, _file(s, "key_file", base))


def _query_rules(s: Section) -> tuple[QueryRule, ...]:
    q = s.section("query")
    if q is None:
        return ()
    rules = []
    seen: dict[tuple, str] = {}
    for param, raw in q.node.items():
        try:  # the name as decide reads it: Limit and limit[] are limit, page.limit is page[limit]
            canonical = rule_name(str(param))
        except Unreadable as e:
            raise q.error(param, str(e)) from None
        if canonical[0] in seen:
            raise q.error(param, f"the same parameter as {seen[canonical[0]]!r}: give it one constraint")
        seen[canonical[0]] = str(param)
        if isinstance(raw, bool):  # YAML reads yes/no/on/off as booleans: say what is meant
            raise q.error(param, "write present, absent, or a quoted value")
        text = str(raw)
        m = _QUERY.match(text)
        op, value = (m.group(1) or "=="), m.group(2)
        if text in ("present", "absent"):
            op, value = text, None
        elif op in ("<", "<=", ">", ">="):
            try:
                value = float(value)
            except ValueError:
                raise q.error(param, f"{op} needs a number, got {value!r}") from None
        elif op == "in":
            value = tuple(v.strip() for v in value.strip("[]").split(",") if v.strip())
        elif op == "matches":
            try:
                value = re.compile(value)
            except re.error as e:
                raise q.error(param, f"bad pattern: {e}") from None
        op = "==" if op == "=" else op
        rules.append(QueryRule(str(param), op, value, q.line(param)))
    return tuple(rules)


def _methods(s: Section) -> frozenset[str]:
    methods = frozenset(m.upper() for m in s.strs("methods", ("GET",)))
    bad = sorted(m for m in methods if m not in METHODS and m != "*")
    if bad:
        raise s.error("methods", f"unknown method {bad[0]!r}")
    return frozenset(METHODS) if "*" in methods else methods


def _paths(s: Section) -> tuple[str, ...]:
    paths = s.strs("paths", ("/**",))
    for p in paths:
        if not p.startswith("/"):
            raise s.error("paths", f"{p!r}: a path pattern starts with /")
    return paths


def _role(name: str, s: Section, p: Policy) -> Role:
    s.keys({"mode", "allow", "description"})
    rules = []
    for i, r in enumerate(s.items("allow")):
        r.keys({"destination", "methods", "paths", "query"}, {"destination"})
        _ref(r, "destination", p.destinations)
        rules.append(Rule(f"{name}/{i}", r.str("destination"), _methods(r), _paths(r), _query_rules(r), r.line()))
    return Role(name, s.str("mode", "enforce", ("enforce", "report")), tuple(rules))


def _identity(name: str, s: Section, p: Policy) -> Identity:
    s.keys({"roles", "issuer", "subject", "claims", "static_key", "description"}, {"roles"},
           hint={"token": "tokens are never written in the policy; see issuers"})
    roles = s.strs("roles")
    for i, role in enumerate(roles):
        if role not in p.roles:
            raise s.error("roles", f"unknown role {role!r}")
    issuer = _ref(s, "issuer", p.issuers) if "issuer" in s.node else None
    claims = s.section("claims")
    claim_pairs = ()
    if claims is not None:
        for k, v in claims.node.items():
            if not isinstance(v, (str, int, bool)):
                raise claims.error(k, "a claim is matched against a plain value")
        claim_pairs = tuple((str(k), str(v)) for k, v in claims.node.items())
    static = s.section("static_key")
    digest = reason = None
    if static is not None:
        static.keys({"sha256", "reason"}, {"sha256", "reason"}, hint={k: "store only sha256 of the key" for k in INLINE_SECRET_KEYS})
        digest, reason = _sha256(static, "sha256"), static.str("reason")
    if issuer is None and digest is None:
        raise s.error(None, "an identity is proven by an issuer's token or a declared static_key")
    return Identity(name, roles, issuer, s.str("subject", None), claim_pairs, digest, reason,
                    s.str("description", ""))


def _approval(name: str, s: Section, p: Policy) -> Approval:
    s.keys({"identities", "roles", "destination", "methods", "paths", "query", "approvers", "required",
            "timeout", "mode", "grant_window", "ui_resume"}, {"approvers"})
    for who in s.strs("identities", ()):
        if who not in p.identities:
            raise s.error("identities", f"unknown identity {who!r}")
    for role in s.strs("roles", ()):
        if role not in p.roles:
            raise s.error("roles", f"unknown role {role!r}")
    dest = _ref(s, "destination", p.destinations) if "destination" in s.node else None
    approvers = s.strs("approvers")
    for a in approvers:
        if not a.startswith("group:") and a not in p.approvers:
            raise s.error("approvers", f"unknown approver {a!r}")
        if a.startswith("group:") and not any(a[6:] in ap.groups for ap in p.approvers.values()):
            raise s.error("approvers", f"no approver is in group {a[6:]!r}")
    return Approval(name, s.strs("identities", ()), s.strs("roles", ()), dest,
                    _methods(s) if "methods" in s.node else frozenset(METHODS), _paths(s), _query_rules(s),
                    approvers, s.int("required", 1, 1, 10), s.duration("timeout", 300.0),
                    s.str("mode", "hold", ("hold", "grant")), s.duration("grant_window", 900.0),
                    s.bool("ui_resume"), s.line())


def _ref(s: Section, key: str, table: dict) -> str:
    value = s.str(key)
    if value not in table:
        known = ", ".join(sorted(table)) or "none defined"
        raise s.error(key, f"unknown {key} {value!r} (known: {known})")
    return value


def _sha256(s: Section, key: str) -> str:
    value = s.str(key)
    digest = value.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise s.error(key, "expected sha256:<64 hex digits> (the hash of the key, never the key)")
    return digest


def _file(s: Section, key: str, base: str) -> str | None:
    """File paths in a policy are relative to the policy file, wherever the gateway runs."""
    value = s.str(key, None)
    return os.path.join(base, value) if value else None


def _req(s: Section, key: str):
    raise s.error(None, f"missing required key {key!r}")
