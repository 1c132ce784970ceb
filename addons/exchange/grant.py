"""Token exchange: a SAML assertion or an OIDC token in, a short-lived pangate token out.

Plain module, no mitmproxy import. Two request forms (application/x-www-form-urlencoded):

- RFC 7522: grant_type=urn:ietf:params:oauth:grant-type:saml2-bearer, assertion=<base64url>
- RFC 8693: grant_type=urn:ietf:params:oauth:grant-type:token-exchange, subject_token=...,
  subject_token_type=urn:ietf:params:oauth:token-type:jwt (or :id_token, :access_token for
  a JWT, or :saml2 for a base64url assertion)

The presented credential is verified by the same TokenVerifier as the proxy
(so a SAML assertion is spent once, whichever way it came in), mapped to one
policy identity, checked against the revocation list, and exchanged for a
pangate token whose life is capped by the issuer's `exchange_ttl` and by the
credential's own expiry. The new token carries the source principal (claim
pgx), so the policy maps it exactly like the credential it replaced.

An outcome's `record` is for the audit trail: who, which issuer, which ids,
granted or refused and why; never the assertion or a token.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qsl

import jwt

from pangate.common.files import public_pem, read_private
from pangate.identity.tokens import EXCHANGE_CLAIM, EXCHANGEABLE, Principal, TokenError, issue
from pangate.policy.model import Issuer, Policy

SAML2_BEARER = "urn:ietf:params:oauth:grant-type:saml2-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token",
             "urn:ietf:params:oauth:token-type:access_token")
SAML2_TYPE = "urn:ietf:params:oauth:token-type:saml2"
ISSUED_TYPE = "urn:ietf:params:oauth:token-type:jwt"
MAX_BODY = 512 * 1024  # an assertion is a few KiB; base64 and form encoding add some
MAX_FIELDS = 20
MAX_CLAIMS = 50
_TIME_CLAIMS = {"exp", "iat", "nbf", "auth_time"}
# Refusals that are the gateway's state, not the caller's fault: retry later.
_UNAVAILABLE = {"keys_unavailable", "replay_cache_full"}


class ExchangeError(Exception):
    """A refused exchange: RFC 6749 `error`, pangate's precise `code`, and a description."""

    def __init__(self, code: str, description: str, error: str = "invalid_grant", status: int = 400):
        self.code, self.description, self.error, self.status = code, description, error, status
        super().__init__(description)


@dataclass(frozen=True)
class ExchangeRequest:
    grant_type: str
    kind: str  # "saml" | "jwt"
    credential: bytes | str = field(repr=False)  # the assertion XML or the JWT: never logged


def parse_request(content_type: str | None, body: bytes) -> ExchangeRequest:
    """The form a workload POSTed; ExchangeError(invalid_request/unsupported_grant_type) otherwise."""
    from pangate.identity.saml import SamlError, decode_assertion

    if (content_type or "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise ExchangeError("bad_content_type", "send application/x-www-form-urlencoded", "invalid_request")
    if len(body) > MAX_BODY:
        raise ExchangeError("too_large", "request body too large", "invalid_request", 413)
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body),
                          max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise ExchangeError("malformed_request", "the form cannot be parsed", "invalid_request") from None
    form: dict[str, str] = {}
    for k, v in pairs:
        if k in form:  # RFC 6749 3.2: request parameters must not be repeated
            raise ExchangeError("repeated_parameter", f"parameter {k!r} is repeated", "invalid_request")
        form[k] = v
    grant = form.get("grant_type")

    def need(name: str) -> str:
        if not form.get(name):
            raise ExchangeError("missing_parameter", f"missing parameter {name!r}", "invalid_request")
        return form[name]

    def assertion(text: str) -> bytes:
        try:
            return decode_assertion(text)
        except SamlError as e:
            raise ExchangeError(e.reason, str(e)) from None

    if grant == SAML2_BEARER:
        return ExchangeRequest(grant, "saml", assertion(need("assertion")))
    if grant == TOKEN_EXCHANGE:
        token, kind = need("subject_token"), need("subject_token_type")
        if form.get("actor_token"):
            raise ExchangeError("delegation_unsupported", "actor tokens (delegation) are not supported",
                                "invalid_request")
        wanted = form.get("requested_token_type")
        if wanted and wanted not in (ISSUED_TYPE, "urn:ietf:params:oauth:token-type:access_token"):
            raise ExchangeError("unsupported_token_type", "only JWT access tokens are issued", "invalid_request")
        if kind == SAML2_TYPE:
            return ExchangeRequest(grant, "saml", assertion(token))
        if kind in JWT_TYPES:
            return ExchangeRequest(grant, "jwt", token)
        raise ExchangeError("unsupported_token_type", "subject_token_type must be a JWT or SAML 2.0 token type",
                            "invalid_request")
    raise ExchangeError("unsupported_grant_type", "grant_type must be saml2-bearer or token-exchange",
                        "unsupported_grant_type")


@dataclass
class Outcome:
    status: int
    body: dict
    record: dict  # the audit record's fields (event token_exchange)


class Exchanger:
    """Issues pangate tokens with the gateway's token signing key (Ed25519, `pangate token keygen`)."""

    def __init__(self, signing_key_path: str, clock: Callable[[], float] = time.time):
        self.key_path, self._clock = signing_key_path, clock
        key = read_private(signing_key_path, "token signing key", " (made by `pangate token keygen`)")
        self._public = public_pem(key.public_key())
        self._issuer: tuple[str, Issuer] | None = None  # (policy digest, issuer): read key files once per policy

    def issuer_for(self, policy: Policy | None) -> Issuer:
        """The policy's pangate issuer that trusts this key: the one whose tokens ours will be."""
        from pangate.common.files import read_public

        if policy is not None and self._issuer and self._issuer[0] == policy.digest:
            return self._issuer[1]
        for cfg in (policy.issuers.values() if policy else ()):
            if cfg.type == "pangate" and cfg.public_key_file:
                try:
                    if public_pem(read_public(cfg.public_key_file)) == self._public:
                        self._issuer = (policy.digest, cfg)
                        return cfg
                except ValueError:
                    continue
        raise ValueError("no pangate issuer in the policy has the public key of pangate_token_signing_key")

    async def exchange(self, req: ExchangeRequest, *, policy: Policy, pangate_issuer: Issuer, verifier,
                       identity_for: Callable[[Policy, Principal], str | None],
                       is_revoked: Callable[[str, tuple], str | None], client: str | None = None) -> Outcome:
        record = {"outcome": "refused", "grant_type": _short(req.grant_type), "credential": req.kind,
                  "client": client, "issuer": None, "subject": None, "identity": None, "source_token_id": None,
                  "token_id": None, "expires_at": None}
        try:
            principal = await self._verify(req, verifier)
            record.update(issuer=principal.issuer, subject=principal.subject, source_token_id=principal.token_id)
            if principal.method not in EXCHANGEABLE or principal.issuer not in policy.issuers:
                # A pangate token traded for a fresh one would never have to end.
                raise ExchangeError("not_exchangeable", "only OIDC tokens and SAML assertions are exchanged")
            name = identity_for(policy, principal)
            if name is None:
                raise ExchangeError("unknown_identity", f"the credential of {principal.subject!r} (issuer "
                                                        f"{principal.issuer}) maps to no identity in the policy")
            record["identity"] = name
            revoked = is_revoked(name, tuple(t for t in (principal.token_id,) if t))
            if revoked:
                raise ExchangeError("revoked", revoked)
            token, exp, jti = self._issue(principal, name, policy.issuers[principal.issuer], pangate_issuer)
        except ExchangeError as e:
            record.update(code=e.code)
            return Outcome(e.status, {"error": e.error, "error_description": e.description, "code": e.code}, record)
        record.update(outcome="granted", code="granted", token_id=jti, expires_at=exp)
        now = int(self._clock())
        return Outcome(200, {"access_token": token, "issued_token_type": ISSUED_TYPE, "token_type": "Bearer",
                             "expires_in": exp - now, "identity": name}, record)

    async def _verify(self, req: ExchangeRequest, verifier) -> Principal:
        try:
            if req.kind == "saml":
                return await verifier.averify_assertion(req.credential)
            return await verifier.averify(req.credential)
        except TokenError as e:
            if e.reason in _UNAVAILABLE:
                raise ExchangeError(e.reason, str(e), "temporarily_unavailable", 503) from None
            raise ExchangeError(e.reason, str(e)) from None

    def _issue(self, p: Principal, name: str, source: Issuer, pangate: Issuer) -> tuple[str, int, str]:
        now = int(self._clock())
        # Whole seconds, rounded down: the token never ends after its source does.
        ends = [now + source.exchange_ttl] + ([p.expires_at] if p.expires_at is not None else [])
        exp = int(math.floor(min(ends)))
        if exp - now < 1:
            raise ExchangeError("expired", "the credential expires too soon to exchange")
        carried = {"iss": p.issuer, "sub": p.subject, "claims": _carried_claims(p)}
        token = issue(self.key_path, name, exp - now, audience=pangate.audience[0], issuer=pangate.issuer,
                      clock=lambda: float(now), extra_claims={EXCHANGE_CLAIM: carried})
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        return token, exp, jti


def _carried_claims(p: Principal) -> dict:
    """The claims identities are matched on: plain values only, no time claims, bounded."""
    out = {}
    for k, v in p.claims.items():
        if k in _TIME_CLAIMS or not isinstance(k, str) or not isinstance(v, (str, int, bool)):
            continue
        out[k] = v
        if len(out) >= MAX_CLAIMS:
            break
    return out


def _short(grant_type: str) -> str:
    return {SAML2_BEARER: "saml2-bearer", TOKEN_EXCHANGE: "token-exchange"}.get(grant_type, "other")


def revoked_reason(revocations, identity: str, token_ids: tuple) -> str | None:
    """Why the identity or one of the token ids is on the revocation list (identity/revocation.py)."""
    if revocations is None:
        return None
    hit = revocations.identities.get(identity)
    if hit is not None:
        return f"identity {identity!r} is revoked: {hit.get('reason', 'revoked')}"
    for t in token_ids:
        if t in revocations.jtis:
            return f"token id {t} is revoked: {revocations.jtis[t].get('reason', 'revoked')}"
    return None

