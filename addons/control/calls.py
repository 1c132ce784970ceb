"""The approval control endpoint: `pangate approve|deny|approvals` talk to a running gateway here.

Every call is signed by one approver with their own Ed25519 key (the policy
holds only public keys, so neither the policy file nor the gateway can forge
an approval), over the exact request body, which names the action, the
approval id, the approver, a timestamp and a nonce: a captured call cannot be
replayed, nor turned into another decision. It listens on loopback only
(plain HTTP: nothing secret travels, and the signature covers integrity) and
only while the policy has approval rules.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import secrets
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pangate.common.files import read_public
from pangate.policy.model import Policy

log = logging.getLogger("pangate")
SCHEME = "Pangate-Ed25519"
MAX_SKEW = 60.0  # seconds a signed call stays valid
MAX_BODY = 16 * 1024
ACTIONS = ("list", "approve", "deny")


# ---------------------------------------------------------------- the signed call (client and server)

def sign_call(key: ed25519.Ed25519PrivateKey, approver: str, action: str, approval_id: str | None = None,
              reason: str | None = None) -> tuple[bytes, str]:
    """The body and Authorization header of one call, as `pangate approve` sends them."""
    body = json.dumps({"action": action, "id": approval_id, "approver": approver, "reason": reason,
                       "ts": time.time(), "nonce": secrets.token_urlsafe(16)}).encode()
    sig = base64.urlsafe_b64encode(key.sign(body)).decode().rstrip("=")
    return body, f"{SCHEME} {sig}"


def load_public_key(path: str) -> ed25519.Ed25519PublicKey:
    return read_public(path, "approver key")


def _raw(key) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class CallRefused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class CallVerifier:
    """Checks signed calls against the approvers' public keys; remembers nonces it saw."""

    def __init__(self, keys: dict[str, ed25519.Ed25519PublicKey], clock=time.time):
        self.keys = keys
        self.clock = clock
        self.seen: dict[str, float] = {}

    def check(self, body: bytes, authorization: str | None) -> dict:
        scheme, _, sig = (authorization or "").partition(" ")
        if scheme != SCHEME or not sig:
            raise CallRefused(401, f"sign the call: Authorization: {SCHEME} <signature>")
        try:
            call = json.loads(body)
            approver, action = call["approver"], call["action"]
            ts, nonce = float(call["ts"]), str(call["nonce"])
        except (ValueError, KeyError, TypeError):
            raise CallRefused(400, "malformed call") from None
        key = self.keys.get(approver) if isinstance(approver, str) else None
        if key is None:
            raise CallRefused(401, f"{approver!r} is not an approver with a public key in the policy")
        try:
            key.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), body)
        except (InvalidSignature, ValueError):
            raise CallRefused(401, "bad signature") from None
        now = self.clock()
        if not abs(now - ts) <= MAX_SKEW:  # NaN compares false both ways: refused too
            raise CallRefused(401, "the call is too old or from the future (check the clock)")
        self.seen = {n: t for n, t in self.seen.items() if t > now - 2 * MAX_SKEW}
        if nonce in self.seen:
            raise CallRefused(401, "this call was already used (replay)")
        self.seen[nonce] = now
        if action not in ACTIONS or action != "list" and not isinstance(call.get("id"), str):
            raise CallRefused(400, f"action is one of {', '.join(ACTIONS)}, with an approval id")
        return call


def approver_keys(policy: Policy) -> dict[str, ed25519.Ed25519PublicKey]:
    """Load every approver's key; an approver holding a token-signing key is refused (four eyes)."""
    issuer_keys = {}
    for issuer in policy.issuers.values():
        if issuer.public_key_file:
            try:
                issuer_keys[_raw(load_public_key(issuer.public_key_file))] = issuer.name
            except ValueError:
                pass  # the Identity addon reports a bad issuer key
    keys = {}
    for a in policy.approvers.values():
        if a.public_key_file:
            key = load_public_key(a.public_key_file)
            if _raw(key) in issuer_keys:
                raise ValueError(f"approver {a.name}'s key is the token key of issuer "
                                 f"{issuer_keys[_raw(key)]}: whoever approves must not be able to mint "
                                 "the requester's identity")
            keys[a.name] = key
    return keys


def parse_listen(value: str) -> tuple[str, int] | None:
    """'127.0.0.1:8089' -> (host, port); '' -> None. Loopback only: the endpoint speaks plain HTTP."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not 0 <= int(port) < 65536:
            raise ValueError
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError
    except ValueError:
        raise ValueError(f"pangate_control_listen: {value!r} is not a loopback HOST:PORT "
                                      "(or empty to disable)") from None
    return host, int(port)
