"""Who is calling: a short-lived token in Proxy-Authorization, bound to the connection.

The identity proven at CONNECT applies to every request in that tunnel and is
re-checked on each of them (expiry, revocation). The token itself is never
stored: not in flow metadata, not in records, not in memory past the check.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from . import events
from .failsafe import Component, meta, refuse, refused
from .policy import Policy
from .tokens import IssuerConfig, Principal, TokenError, Verifier, parse_proxy_authorization

log = logging.getLogger("pangate")
PROXY_AUTH = "Proxy-Authorization"
CHALLENGE = 'Bearer realm="pangate", Basic realm="pangate"'
# client connection id -> Caller. Module-level so it outlives a reload of the
# gateway script: open tunnels keep their (re-checked) identity.
_BOUND: dict[str, "Caller"] = {}


@dataclass(frozen=True)
class Caller:
    """A proven identity, as recorded: how it was proven, never with what."""

    identity: str
    principal: Principal

    def record(self) -> dict:
        p = self.principal
        return {"name": self.identity, "issuer": p.issuer, "subject": p.subject, "method": p.method,
                "token_id": p.token_id, "expires_at": p.expires_at, "static_key": p.static}


def identity_for(policy: Policy, principal: Principal) -> str | None:
    """Map verified claims to one policy identity, or None."""
    if principal.static:
        ident = policy.identities.get(principal.subject)
        return ident.name if ident and ident.static_key_sha256 else None
    for ident in policy.identities.values():
        if ident.issuer != principal.issuer:
            continue
        issuer = policy.issuers[ident.issuer]
        want_sub = ident.subject or (ident.name if issuer.type == "pangate" else None)
        if want_sub is not None and principal.subject != want_sub:
            continue
        if want_sub is None and not ident.claims:
            continue  # an identity must pin something, or every token of the issuer would match
        if all(str(principal.claims.get(k)) == v for k, v in ident.claims):
            return ident.name
    return None


def verifier_for(policy: Policy) -> Verifier:
    issuers = [IssuerConfig(name=i.name, issuer=i.issuer, audience=list(i.audience), type=i.type,
                            discovery_url=i.discovery_url, jwks_uri=i.jwks_uri, jwks_file=i.jwks_file,
                            public_key_file=i.public_key_file, algorithms=i.algorithms, leeway=i.leeway,
                            ca_file=i.ca_file) for i in policy.issuers.values()]
    static = {i.name: f"sha256:{i.static_key_sha256}" for i in policy.static_key_identities()}
    return Verifier(issuers, static)


class Identity(Component):
    """Authenticates CONNECT and plain proxy requests; binds identities to connections."""

    def __init__(self, store, revocations=None):
        self.store = store
        self.revocations = revocations  # anything with is_revoked(caller) -> str | None
        self.verifier: Verifier | None = None
        self.bound = _BOUND
        store.subscribe(self._policy_changed)

    def _policy_changed(self, policy: Policy) -> None:
        # Building the verifier loads key files: a bad one refuses the new policy.
        self.verifier = verifier_for(policy)

    async def _authenticate(self, flow) -> Caller | None:
        header = flow.request.headers.get(PROXY_AUTH)
        # Whatever happens next, the credential goes no further than this hook.
        flow.request.headers.pop(PROXY_AUTH, None)
        if header is None:
            self._refuse(flow, "missing_token", "send a token in Proxy-Authorization "
                         "(HTTPS_PROXY=http://NAME:TOKEN@gateway:8080 or Bearer TOKEN)")
            return None
        try:
            claimed, token = parse_proxy_authorization(header)
            principal = await self.verifier.averify(token)
        except TokenError as e:
            self._refuse(flow, e.reason, str(e))
            return None
        policy = self.store.policy
        name = identity_for(policy, principal)
        if name is None:
            self._refuse(flow, "unknown_identity", f"the token of {principal.subject!r} "
                         f"(issuer {principal.issuer}) maps to no identity in the policy")
            return None
        if claimed and claimed != name and not principal.static:
            self._refuse(flow, "identity_mismatch", f"the user name {claimed!r} is not the token's identity {name!r}")
            return None
        return Caller(name, principal)

    def _refuse(self, flow, code: str, reason: str) -> None:
        refuse(flow, 407, "proxy_auth_required", reason, code, {"Proxy-Authenticate": CHALLENGE})
        events.emit("token_refused", code=code, reason=reason, request_id=meta(flow).get("request_id"),
                    client=_peer(flow))

    def _still_valid(self, flow, caller: Caller) -> bool:
        p = caller.principal
        if p.expires_at is not None and time.time() > p.expires_at + self._leeway(p):
            self._refuse(flow, "expired", "the token of this connection has expired: reconnect with a new one")
            return False
        revoked = self.revocations.is_revoked(caller) if self.revocations else None
        if revoked:
            self._refuse(flow, "revoked", revoked)
            return False
        if identity_for(self.store.policy, p) != caller.identity:
            self._refuse(flow, "unknown_identity", f"identity {caller.identity!r} is no longer in the policy")
            return False
        return True

    def _leeway(self, p: Principal) -> float:
        issuer = self.store.policy.issuers.get(p.issuer)
        return issuer.leeway if issuer else 0.0

    def _bind(self, flow, caller: Caller) -> None:
        meta(flow)["identity"] = caller.record()

    async def http_connect(self, flow):
        if refused(flow):
            return
        caller = await self._authenticate(flow)
        if caller and self._still_valid(flow, caller):
            self.bound[flow.client_conn.id] = caller
            self._bind(flow, caller)

    async def requestheaders(self, flow):
        if refused(flow):
            return
        # A replay (e.g. started in mitmweb) is someone else's request: it never
        # inherits the identity of the connection it was captured on.
        caller = None if flow.is_replay else self.bound.get(flow.client_conn.id)
        if caller is None:
            caller = await self._authenticate(flow)  # plain-HTTP proxy request: each one carries it
            if caller is None:
                return
        else:
            flow.request.headers.pop(PROXY_AUTH, None)
        if self._still_valid(flow, caller):
            self._bind(flow, caller)

    def client_disconnected(self, client):
        self.bound.pop(client.id, None)


def caller_name(flow) -> str | None:
    ident = flow.metadata.get("pangate", {}).get("identity")
    return ident["name"] if ident else None


def _peer(flow) -> str | None:
    addr = flow.client_conn.peername
    return f"{addr[0]}:{addr[1]}" if addr else None
