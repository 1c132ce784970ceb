"""Token checks for pangate: OIDC JWTs, pangate-issued JWTs, SAML assertions and static keys.

Plain module, no mitmproxy import, so it can be unit-tested and reused by the CLI.

Event-loop rule: ``TokenVerifier.verify`` never does I/O. It uses cached keys and raises
``KeysNeeded`` when a network refresh is wanted; ``TokenVerifier.refresh`` does the
blocking fetch and is meant to run in a worker thread. ``TokenVerifier.averify`` does
that dance so the addon can simply ``await`` it.

Key fetches run on their own small thread pool, never on the event loop's default
executor: that one also resolves every destination (getaddrinfo), so a slow IdP
must not be able to starve it (it did: other identities' new connections stalled
and were refused as "does not resolve"). At most one fetch per issuer is queued
or running; every request that needs it awaits the same future, with a timeout,
without holding a thread. A failed fetch is retried with backoff (1 s doubling to
60 s), so a recovered IdP is used again within seconds; a stale key set keeps
being served (and refreshed in the background) until it is older than its
lifetime (jwks_max_age plus STALE_GRACE).

SAML assertions (saml.py) come in two ways: base64 as the proxy password, when
the issuer's policy accepts that (`verify` tells them apart from JWTs by shape),
or through the token exchange (`verify_assertion`). A pangate token made by the
exchange carries the identity it was exchanged for (claim `pgx`); it verifies
as that issuer's principal, so the policy maps it exactly as the original.

Nothing here stores, logs or echoes the raw token: messages are fixed strings.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from pangate.common.files import create_key_pair, read_public
from pangate.policy.model import SUPPORTED_ALGORITHMS, Issuer

log = logging.getLogger("pangate.identity.tokens")

MAX_TOKEN_LEN = 16 * 1024  # far above any real JWT; caps parsing/hashing work
MAX_DOC_BYTES = 1024 * 1024  # discovery/JWKS documents larger than this are refused
MAX_JWKS_KEYS = 100
EXCHANGE_CLAIM = "pgx"  # in a pangate token from the exchange: {"iss": issuer name, "sub": ..., "claims": {...}}
EXCHANGEABLE = ("oidc", "saml")  # the issuer types an exchanged token may speak for
_EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


class TokenError(Exception):
    """Authentication failure. ``reason`` is a short machine code; str() never holds the token."""

    def __init__(self, reason: str, message: str | None = None):
        self.reason = reason
        super().__init__(message or reason.replace("_", " "))


class KeysNeeded(Exception):
    """verify() needs a (blocking) key refresh for ``issuer`` (config name) first.

    ``wait``: the token cannot be checked without it (no keys yet, or its kid is
    unknown). Otherwise the cached set is only stale and may still be served."""

    def __init__(self, issuer: str, wait: bool = True):
        self.issuer = issuer
        self.wait = wait
        super().__init__(f"keys needed for issuer {issuer!r}")


class KeyFetchError(Exception):
    """Discovery/JWKS fetch or parse failed; cached keys are left untouched."""


@dataclass(frozen=True)
class Principal:
    issuer: str  # Issuer.name, or "static"
    subject: str
    claims: dict = field(default_factory=dict, hash=False, compare=False)  # verified payload only
    token_id: str | None = None
    expires_at: float | None = None
    method: str = "oidc"  # "oidc" | "pangate" | "static" | "saml" | "exchange"
    static: bool = False


# --------------------------------------------------------------------- header parsing

def _clean(value: str) -> bool:
    return value.isprintable() and value.isascii() and not any(c.isspace() for c in value)


def parse_proxy_authorization(header_value: str | None) -> tuple[str | None, str]:
    """Parse ``Basic base64(name:token)`` or ``Bearer token`` -> (claimed name or None, token)."""
    if not header_value or not isinstance(header_value, str) or len(header_value) > MAX_TOKEN_LEN:
        raise TokenError("malformed", "malformed Proxy-Authorization header")
    parts = header_value.strip().split(None, 1)
    if len(parts) != 2:
        raise TokenError("malformed", "malformed Proxy-Authorization header")
    scheme, rest = parts[0].lower(), parts[1].strip()
    if scheme == "bearer":
        if not rest or not _clean(rest):
            raise TokenError("malformed", "malformed bearer credentials")
        return None, rest
    if scheme == "basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise TokenError("malformed", "malformed basic credentials") from None
        name, sep, token = decoded.partition(":")
        if not sep or not token or not _clean(token) or (name and not name.isprintable()):
            raise TokenError("malformed", "malformed basic credentials")
        return (name or None), token
    raise TokenError("malformed", "unsupported Proxy-Authorization scheme")


# --------------------------------------------------------------------- key handling

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ed25519_kid(public_key: ed25519.Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint, so issue() and the verifier agree on the kid without config."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    canon = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"))
    return _b64url(hashlib.sha256(canon.encode()).digest())


@dataclass(frozen=True)
class _Key:
    kid: str | None
    alg: str | None  # the JWK's own "alg" pin, if it declared one
    key: Any  # cryptography public key object


def _key_fits(k: _Key, alg: str) -> bool:
    """Key type must match the token's alg; this is what makes alg confusion impossible."""
    if k.alg and k.alg != alg:
        return False
    key = k.key
    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg])
    if alg == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


def parse_jwks(doc: Any) -> list[_Key]:
    """Public signing keys from a JWKS document; symmetric/private/unknown keys are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeyFetchError("not a JWKS document")
    out = []
    for jwk in doc["keys"][:MAX_JWKS_KEYS]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or "d" in jwk:
            continue
        loader = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}.get(jwk.get("kty"))
        if loader is None:  # "oct" (HMAC secrets) and anything exotic never become keys
            continue
        try:
            key = loader.from_jwk(jwk)
        except Exception:  # one bad entry must not take down the whole set
            log.warning("skipping unparsable JWK kid=%r", jwk.get("kid"))
            continue
        kid, alg = jwk.get("kid"), jwk.get("alg")
        out.append(_Key(kid if isinstance(kid, str) else None, alg if isinstance(alg, str) else None, key))
    if not out:
        raise KeyFetchError("JWKS holds no usable signing keys")
    return out


def https_fetch(url: str, *, ca_file: str | None = None, timeout: float = 5.0) -> Any:
    """Default fetcher: https only, TLS verified (system roots or ca_file), no redirects, size cap."""
    from pangate.common import http  # here, not at the top: `pangate token issue` never fetches

    if urlsplit(url).scheme != "https":
        raise KeyFetchError("refusing to fetch keys over plain http")
    try:
        client = http.session(ca_file, timeout)
    except ValueError as exc:
        raise KeyFetchError(str(exc)) from None
    try:
        with client, client.get(url, stream=True, headers={"Accept": "application/json"}) as resp:
            if resp.status_code != 200:
                raise KeyFetchError(f"HTTP {resp.status_code} from {url}")
            body = b""
            for chunk in resp.iter_content(65536):
                body += chunk
                if len(body) > MAX_DOC_BYTES:
                    raise KeyFetchError(f"document too large at {url}")
        return json.loads(body)
    except http.RequestException as exc:
        raise KeyFetchError(f"fetch failed for {url}: {type(exc).__name__}") from exc
    except ValueError as exc:
        raise KeyFetchError(f"invalid JSON at {url}") from exc


class _State:
    def __init__(self):
        self.keys: list[_Key] | None = None  # replaced wholesale, never mutated (read without lock)
        self.fetched_at = 0.0
        self.last_attempt: float | None = None
        self.next_attempt = 0.0  # no fetch before this (success: refresh_interval; failure: backoff)
        self.failures = 0  # consecutive failed fetches
        self.future: concurrent.futures.Future | None = None  # the queued or running fetch
        self.jwks_uri: str | None = None
        self.discovery_at = 0.0
        self.in_flight = False  # a fetch is running: callers should wait for it, not fail
        self.lock = threading.Lock()


# --------------------------------------------------------------------- verifier

_JWT_ERRORS = [  # most specific first: InvalidSignatureError subclasses DecodeError
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.InvalidIssuerError, "bad_issuer"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
]


class TokenVerifier:
    RETRY_MIN = 1.0  # first retry after a failed fetch; doubles per failure...
    RETRY_MAX = 60.0  # ...up to this
    STALE_GRACE = 24 * 3600.0  # a stale set is served this long past jwks_max_age while refreshes fail
    FETCH_WAIT = 10.0  # longest a request waits for keys: discovery + JWKS, each with a 5 s timeout
    FETCH_WORKERS = 2
    MAX_QUEUED = 8  # fetches queued or running at once, all issuers together; beyond: refused

    def __init__(self, issuers: Iterable[Issuer], static_keys: dict[str, str] | None = None,
                 fetch: Callable[..., Any] = https_fetch, clock: Callable[[], float] = time.time,
                 revoked_jtis: set[str] | None = None, saml_fetch: Callable[..., bytes] | None = None,
                 replay=None):
        self._fetch, self._clock = fetch, clock
        self.revoked_jtis: set[str] = revoked_jtis if revoked_jtis is not None else set()
        self._by_name: dict[str, Issuer] = {}
        self._by_iss: dict[str, Issuer] = {}
        # SAML issuers live apart: an IdP's SAML entityID may equal its OIDC issuer (Entra ID does).
        self._saml: dict[str, Any] = {}  # name -> saml.SamlIssuerVerifier
        self._saml_by_entity: dict[str, Any] = {}
        issuers = list(issuers)
        for cfg in issuers:
            if cfg.type == "saml":
                if cfg.name in self._by_name or cfg.issuer in self._saml_by_entity or cfg.name == "static":
                    raise ValueError(f"duplicate or reserved issuer {cfg.name!r}/{cfg.issuer!r}")
                self._by_name[cfg.name] = cfg
                self._saml_by_entity[cfg.issuer] = None
                continue
            if cfg.name in self._by_name or cfg.issuer in self._by_iss or cfg.name == "static":
                raise ValueError(f"duplicate or reserved issuer {cfg.name!r}/{cfg.issuer!r}")
            self._by_name[cfg.name] = self._by_iss[cfg.issuer] = cfg
        self._static: list[tuple[str, str]] = []
        for ident, spec in (static_keys or {}).items():
            algo, _, hexd = spec.partition(":")
            if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexd):
                raise ValueError(f"static key for {ident!r} must be 'sha256:<64 hex>'")
            self._static.append((ident, hexd.lower()))
        # Every issuer has fetch state: SAML metadata refreshes ride the same pool and backoff.
        self._state = {name: _State() for name in self._by_name}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # made on the first remote fetch
        self._no_refresh = threading.local()  # set while averify() re-checks with what it has
        self._pool_lock = threading.Lock()
        for cfg in issuers:
            if cfg.type == "saml":
                self._add_saml(cfg, saml_fetch, replay)
            elif not cfg.remote:  # local files: load now so config errors surface at startup
                self.refresh(cfg.name, force=True)

    def _add_saml(self, cfg: Issuer, fetch, replay) -> None:
        from pangate.identity import saml  # here: lxml/signxml load only where SAML is configured

        kw = {"fetch": fetch} if fetch is not None else {}
        try:
            v = saml.SamlIssuerVerifier(cfg, clock=self._clock, replay=replay, **kw)
        except saml.MetadataError as exc:
            raise KeyFetchError(f"issuer {cfg.name}: {exc}") from None
        self._saml[cfg.name] = self._saml_by_entity[cfg.issuer] = v

    # -- key management (blocking; call via asyncio.to_thread from the proxy) --
    def refresh(self, issuer_name: str, force: bool = False) -> bool:
        """(Re)load keys for one issuer. Returns False if throttled. Raises KeyFetchError."""
        if issuer_name in self._saml:
            from pangate.identity.saml import MetadataError

            try:
                return self._saml[issuer_name].refresh(force)
            except MetadataError as exc:
                raise KeyFetchError(str(exc)) from None
        cfg, st = self._by_name[issuer_name], self._state[issuer_name]
        with st.lock:
            now = self._clock()
            # Concurrent callers queue on the lock; all but the first see the fresh attempt
            # and return, so a kid-spraying burst costs one fetch per interval.
            if not force and st.last_attempt is not None and now < st.next_attempt:
                return False
            st.last_attempt = now
            st.in_flight = True
            try:
                self._load(cfg, st, now)
            except KeyFetchError:
                st.failures += 1
                backoff = min(self.RETRY_MAX, self.RETRY_MIN * 2 ** (st.failures - 1))
                st.next_attempt = now + min(backoff, max(cfg.refresh_interval, self.RETRY_MIN))
                raise
            finally:
                st.in_flight = False
            st.failures = 0
            st.next_attempt = now + cfg.refresh_interval
            return True

    def _schedule(self, issuer_name: str) -> concurrent.futures.Future | None:
        """The fetch for one issuer on the key pool: the one already queued or running, or a new
        one; None when too many are queued (the caller fails closed or serves its cache)."""
        st = self._state[issuer_name]
        with self._pool_lock:
            if st.future is not None and not st.future.done():
                return st.future
            busy = sum(1 for s in self._state.values() if s.future is not None and not s.future.done())
            if busy >= self.MAX_QUEUED:
                return None
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.FETCH_WORKERS,
                                                                   thread_name_prefix="pangate-jwks")
            st.future = self._pool.submit(self.refresh, issuer_name)
            return st.future

    def close(self) -> None:
        """Stop the key pool (a running fetch finishes on its own, within its timeout)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _load(self, cfg: Issuer, st: _State, now: float) -> None:
        if cfg.public_key_file:
            st.keys = [self._load_public_key(cfg.public_key_file)]
        elif cfg.jwks_file:
            try:
                st.keys = parse_jwks(json.loads(Path(cfg.jwks_file).read_text()))
            except (OSError, ValueError) as exc:
                raise KeyFetchError(f"cannot read JWKS file for {cfg.name}: {exc}") from exc
        else:
            try:
                st.keys = parse_jwks(self._fetch(self._jwks_uri(cfg, st, now), ca_file=cfg.ca_file))
            except Exception as exc:  # injected fetchers may raise anything; normalise it
                st.discovery_at = 0.0  # IdP may have moved its jwks_uri; re-discover next time
                if isinstance(exc, KeyFetchError):
                    raise
                raise KeyFetchError(f"key fetch for {cfg.name} failed: {type(exc).__name__}") from exc
        st.fetched_at = now

    def _jwks_uri(self, cfg: Issuer, st: _State, now: float) -> str:
        if cfg.jwks_uri:
            return cfg.jwks_uri
        if st.jwks_uri and now - st.discovery_at < cfg.discovery_max_age:
            return st.jwks_uri
        doc = self._fetch(cfg.discovery_url, ca_file=cfg.ca_file)
        if not isinstance(doc, dict) or doc.get("issuer") != cfg.issuer:
            # OIDC Discovery 4.3: the document must name the issuer we expect.
            raise KeyFetchError(f"discovery document issuer mismatch for {cfg.name}")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or urlsplit(uri).scheme != "https":
            raise KeyFetchError(f"discovery document for {cfg.name} lacks an https jwks_uri")
        st.jwks_uri, st.discovery_at = uri, now
        return uri

    @staticmethod
    def _load_public_key(path: str) -> _Key:
        try:
            key = read_public(path, "public key")
        except ValueError as exc:
            raise KeyFetchError(str(exc)) from None
        return _Key(ed25519_kid(key), "EdDSA", key)

    # -- verification (pure CPU) --
    def verify(self, token: str, is_revoked: Callable[[Principal], bool] | None = None) -> Principal:
        """Verify a token with cached keys. Raises TokenError, or KeysNeeded if a refresh is due."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LEN:
            raise TokenError("malformed", "malformed token")
        principal = self._verify_static(token)
        if principal is None:
            if token.count(".") != 2:
                if self._saml and self._is_saml(token):
                    from pangate.identity.saml import SamlError, decode_assertion

                    try:
                        data = decode_assertion(token)
                    except SamlError as e:
                        raise TokenError(e.reason, str(e)) from None
                    return self.verify_assertion(data, is_revoked, proxy_auth=True)
                raise TokenError("unknown_static_key", "token is neither a known static key nor a JWT")
            principal = self._verify_jwt(token)
        return self._not_revoked(principal, is_revoked)

    def _not_revoked(self, principal: Principal, is_revoked) -> Principal:
        if (principal.token_id and principal.token_id in self.revoked_jtis) or (
                is_revoked is not None and is_revoked(principal)):
            raise TokenError("revoked", f"token for {principal.subject!r} is revoked")
        return principal

    @staticmethod
    def _is_saml(token: str) -> bool:
        from pangate.identity.saml import looks_like_saml

        return looks_like_saml(token)

    def verify_assertion(self, data: bytes, is_revoked: Callable[[Principal], bool] | None = None,
                         proxy_auth: bool = False) -> Principal:
        """Verify a SAML assertion (XML bytes) with cached metadata; its id is spent if it verifies.

        Raises TokenError, or KeysNeeded if the issuer's metadata must be fetched first.
        With proxy_auth, only issuers with accept_in_proxy_auth take it."""
        from pangate.identity.saml import MetadataNeeded, SamlError, parse_xml, peek_issuer

        try:
            root = parse_xml(data)
            verifier = self._saml_by_entity.get(peek_issuer(root) or "")
            if verifier is None:
                raise TokenError("unknown_issuer", "assertion issuer is not configured")
            cfg = verifier.cfg
            if proxy_auth and not cfg.accept_in_proxy_auth:
                raise TokenError("saml_not_accepted", f"issuer {cfg.name} takes assertions only through the "
                                                      "token exchange")
            a = verifier.verify(root)
        except SamlError as e:
            raise TokenError(e.reason, str(e)) from None
        except MetadataNeeded:
            raise KeysNeeded(cfg.name) from None
        principal = Principal(issuer=cfg.name, subject=a.subject, claims=dict(a.claims), token_id=a.id,
                              expires_at=a.expires_at, method="saml", static=False)
        return self._not_revoked(principal, is_revoked)

    async def averify(self, token: str, is_revoked: Callable[[Principal], bool] | None = None) -> Principal:
        """verify(), with any needed key refresh on the key pool (at most one wait per call).

        A stale set is refreshed in the background and served meanwhile; a token that
        cannot be checked without new keys waits for the fetch, at most FETCH_WAIT."""
        return await self._with_refresh(lambda: self.verify(token, is_revoked))

    async def averify_assertion(self, data: bytes, is_revoked: Callable[[Principal], bool] | None = None,
                                proxy_auth: bool = False) -> Principal:
        """verify_assertion(), fetching metadata on the key pool when needed."""
        return await self._with_refresh(lambda: self.verify_assertion(data, is_revoked, proxy_auth))

    async def _with_refresh(self, check: Callable[[], Principal]) -> Principal:
        try:
            return check()
        except KeysNeeded as need:
            fut = self._schedule(need.issuer)
            if fut is None:
                log.warning("key refresh for %s not queued: too many key fetches pending", need.issuer)
            elif need.wait:
                try:
                    await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), self.FETCH_WAIT)
                except TimeoutError:
                    log.warning("key refresh for %s still running after %.0fs", need.issuer, self.FETCH_WAIT)
                except KeyFetchError as exc:  # fall back to whatever is cached (or fail closed)
                    log.warning("key refresh for %s failed: %s", need.issuer, exc)
            else:
                fut.add_done_callback(functools.partial(_log_failure, need.issuer))
        return self._verify_cached(check)

    def _verify_cached(self, check: Callable[[], Principal]) -> Principal:
        """The check again with no further refresh: what the cache holds decides."""
        self._no_refresh.active = True
        try:
            return check()
        except KeysNeeded as need:
            raise TokenError("keys_unavailable", f"keys for issuer {need.issuer!r} unavailable") from None
        finally:
            self._no_refresh.active = False

    def _verify_static(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        match = None
        for ident, expected in self._static:  # no early exit: time independent of which entry matches
            if hmac.compare_digest(digest, expected) and match is None:
                match = ident
        if match is None:
            return None
        return Principal(issuer="static", subject=match, claims={}, method="static", static=True)

    def _verify_jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenError("malformed", "malformed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
            raise TokenError("alg_not_allowed", "JWT algorithm not allowed")
        iss = unverified.get("iss")
        cfg = self._by_iss.get(iss) if isinstance(iss, str) else None
        if cfg is None:
            raise TokenError("unknown_issuer", "JWT issuer is not configured")
        if alg not in cfg.algorithms:
            raise TokenError("alg_not_allowed", f"algorithm {alg} not allowed for issuer {cfg.name}")
        key = self._select_key(cfg, header.get("kid"), alg)
        try:
            claims = jwt.decode(
                token, key=key, algorithms=[alg], audience=cfg.audience, issuer=cfg.issuer,
                # Time claims are checked below against the injectable clock.
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["iss", "aud", "exp", "iat", "sub"]})
        except jwt.MissingRequiredClaimError as exc:
            reason = "bad_audience" if exc.claim == "aud" else "malformed"
            raise TokenError(reason, f"JWT lacks required claim {exc.claim}") from None
        except jwt.PyJWTError as exc:
            reason = next((r for t, r in _JWT_ERRORS if isinstance(exc, t)), "malformed")
            raise TokenError(reason, f"JWT rejected for issuer {cfg.name}: {reason}") from None
        self._check_times(claims, cfg.leeway)
        sub, jti = claims.get("sub"), claims.get("jti")
        if not isinstance(sub, str) or not sub:
            raise TokenError("malformed", "JWT subject must be a non-empty string")
        if cfg.type == "pangate" and EXCHANGE_CLAIM in claims:
            return self._exchanged(claims, jti)
        return Principal(issuer=cfg.name, subject=sub, claims=dict(claims),
                         token_id=jti if isinstance(jti, str) else None,
                         expires_at=float(claims["exp"]), method=cfg.type, static=False)

    def _exchanged(self, claims: dict, jti: Any) -> Principal:
        """A token from pangate's own exchange speaks for the principal it was exchanged for."""
        pgx = claims[EXCHANGE_CLAIM]
        if not isinstance(pgx, dict) or not all(isinstance(pgx.get(k), str) and pgx.get(k) for k in ("iss", "sub")) \
                or not isinstance(pgx.get("claims", {}), dict):
            raise TokenError("malformed", "malformed exchanged token")
        src = self._by_name.get(pgx["iss"])
        if src is None or src.type not in EXCHANGEABLE:
            raise TokenError("unknown_issuer", "exchanged token names an issuer that is not configured")
        # Issued and checked by the gateway itself: no leeway, so it never outlives its source.
        if float(claims["exp"]) <= self._clock():
            raise TokenError("expired", "token expired")
        return Principal(issuer=src.name, subject=pgx["sub"], claims=dict(pgx.get("claims", {})),
                         token_id=jti if isinstance(jti, str) else None, expires_at=float(claims["exp"]),
                         method="exchange", static=False)

    def _select_key(self, cfg: Issuer, kid: Any, alg: str) -> Any:
        st = self._state[cfg.name]
        now = self._clock()
        keys = st.keys  # snapshot; refresh() swaps the list atomically
        may_refresh = cfg.remote and not getattr(self._no_refresh, "active", False) and (
            st.in_flight or st.last_attempt is None or now >= st.next_attempt)
        if keys is None:
            if may_refresh:
                raise KeysNeeded(cfg.name)
            raise TokenError("keys_unavailable", f"no keys loaded for issuer {cfg.name}")
        age = now - st.fetched_at
        if cfg.remote and age >= cfg.jwks_max_age + self.STALE_GRACE:
            if may_refresh:
                raise KeysNeeded(cfg.name)
            raise TokenError("keys_unavailable", f"keys of issuer {cfg.name} expired and cannot be refreshed")
        if may_refresh and age >= cfg.jwks_max_age:
            raise KeysNeeded(cfg.name, wait=False)  # stale set: pick up rotations and removals
        if kid is not None:
            candidates = [k for k in keys if k.kid == kid]
            if not candidates:
                if may_refresh:
                    raise KeysNeeded(cfg.name)
                raise TokenError("unknown_key", f"unknown key id for issuer {cfg.name}")
        else:
            candidates = keys
        fitting = [k for k in candidates if _key_fits(k, alg)]
        if kid is None and len(fitting) != 1:
            # Without a kid we do not try every key: that would multiply CPU cost per token.
            raise TokenError("unknown_key", f"JWT without kid is ambiguous for issuer {cfg.name}")
        if not fitting:
            raise TokenError("alg_not_allowed", f"key type does not match algorithm {alg}")
        return fitting[0].key

    def _check_times(self, claims: dict, leeway: float) -> None:
        def num(name: str) -> float | None:
            v = claims.get(name)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TokenError("malformed", f"JWT claim {name} must be a number")
            return float(v)

        now = self._clock()
        exp, nbf, iat = num("exp"), num("nbf"), num("iat")
        if exp <= now - leeway:  # same boundary as PyJWT: expired at exactly exp+leeway
            raise TokenError("expired", "token expired")
        if nbf is not None and nbf > now + leeway:
            raise TokenError("not_yet_valid", "token not yet valid (nbf)")
        if iat > now + leeway:
            raise TokenError("not_yet_valid", "token issued in the future (iat)")
        if iat > exp:
            raise TokenError("malformed", "token iat is after exp")


def _log_failure(issuer: str, fut: concurrent.futures.Future) -> None:
    exc = None if fut.cancelled() else fut.exception()
    if exc is not None:
        log.warning("background key refresh for %s failed: %s", issuer, exc)


# --------------------------------------------------------------------- pangate-issued tokens

def keygen(path: str | os.PathLike) -> str:
    """Write an Ed25519 private key (PEM, 0600) at path and its public key at path+'.pub'.

    Refuses to overwrite an existing private key; creates missing folders. Returns the public key path."""
    create_key_pair(path)
    return os.fspath(path) + ".pub"


def issue(private_key_path: str | os.PathLike, identity: str, ttl_seconds: float,
          audience: str = "pangate", issuer: str = "pangate", *,
          clock: Callable[[], float] = time.time, extra_claims: dict | None = None) -> str:
    """Sign a short-lived EdDSA JWT for ``identity`` with the key from keygen().

    extra_claims are added; they never replace the registered claims set here."""
    if not identity or ttl_seconds <= 0:
        raise ValueError("identity must be set and ttl_seconds positive")
    key = serialization.load_pem_private_key(Path(private_key_path).read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError("pangate signing key must be Ed25519")
    now = int(clock())
    claims = {"iss": issuer, "aud": audience, "sub": identity, "jti": secrets.token_urlsafe(16),
              "iat": now, "nbf": now, "exp": now + int(math.ceil(ttl_seconds))}
    claims = {**(extra_claims or {}), **claims}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": ed25519_kid(key.public_key())})
