"""`pangate token keygen|issue`: short-lived tokens for teams without an IdP."""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import sys

from pangate.common.files import keygen_command


DEFAULT_POLICY = "policies.yaml"  # the gateway's pangate_policy default
MAX_TTL = 24 * 3600
# A unit is required: `--ttl 15` meant 15 minutes to the one who typed it, 15 seconds to us.
_TTL = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub) -> None:
    token = sub.add_parser("token", help="make the signing key and issue short-lived tokens").add_subparsers(
        dest="token_command", metavar="ACTION", required=True)
    kg = token.add_parser("keygen", help="create the gateway's Ed25519 token-signing key")
    kg.add_argument("--key", default="certs/token-signing.key", help="private key path (public key: KEY.pub)")
    kg.set_defaults(func=_keygen)
    iss = token.add_parser("issue", help="print a signed token for an identity",
                           description="Print a signed token on stdout; its id (jti) and expiry go to stderr.")
    iss.add_argument("--identity", required=True, help="identity name in the policy")
    iss.add_argument("--ttl", default="15m", help="lifetime with a unit: 30s, 15m, 1h (default 15m, at most 24h)")
    iss.add_argument("--key", default="certs/token-signing.key")
    iss.add_argument("--audience", default="pangate")
    iss.add_argument("--policy", metavar="FILE",
                     help=f"the identity must be one of this policy's, proven by a pangate token "
                          f"(default {DEFAULT_POLICY} when it exists here; '' skips the check)")
    iss.set_defaults(func=_issue)


def parse_ttl(value: str) -> int:
    """Seconds of a `--ttl`; ValueError says what is wrong."""
    m = _TTL.match(value)
    if not m:
        raise ValueError(f"expected a lifetime with a unit (30s, 15m, 1h), got {value!r}")
    ttl = int(m.group(1)) * _UNITS[m.group(2)]
    if ttl <= 0:
        raise ValueError("the lifetime must be positive")
    if ttl > MAX_TTL:
        raise ValueError("a token lives at most 24h: machine identities should renew, not hoard")
    return ttl


def check_identity(policy_path: str, identity: str) -> str | None:
    """Why the policy would refuse a pangate token for identity, or None."""
    from pangate.policy.model import load_policy  # PolicyError (a ValueError) names file and line

    policy = load_policy(policy_path)
    ident = policy.identities.get(identity)
    if ident is None:
        known = ", ".join(sorted(policy.identities)) or "none"
        return f"{policy_path} has no identity {identity!r} (known: {known})"
    iss = policy.issuers.get(ident.issuer or "")
    if iss is None or iss.type != "pangate":
        how = f"issuer {ident.issuer}" if ident.issuer else "a static key"
        return f"identity {identity} is proven by {how} in {policy_path}, not by a pangate token"
    return None


def _keygen(args) -> int:
    return keygen_command(args.key)


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _issue(args) -> int:
    from pangate.identity.tokens import issue  # jwt: only for the command that signs

    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as e:
        print(f"pangate token issue: --ttl: {e}", file=sys.stderr)
        return 2
    if not args.identity:
        print("pangate token issue: needs an --identity", file=sys.stderr)
        return 2
    if args.policy is None:
        # Issuing where no policy lives (an init container, another host) stays possible; said once.
        args.policy = DEFAULT_POLICY if os.path.exists(DEFAULT_POLICY) else ""
        if not args.policy:
            print(f"note: no {DEFAULT_POLICY} here: the identity is not checked against a policy (--policy FILE)",
                  file=sys.stderr)
    if args.policy:
        try:
            why = check_identity(args.policy, args.identity)
        except OSError as e:
            print(f"pangate token issue: cannot read the policy {args.policy}: {e.strerror} "
                  "(--policy FILE, or --policy '' to skip the check)", file=sys.stderr)
            return 2
        if why:
            print(f"pangate token issue: {why}", file=sys.stderr)
            return 2
    try:
        token = issue(args.key, args.identity, ttl, audience=args.audience)
    except OSError as e:
        print(f"cannot read the signing key {args.key}: {e.strerror} (run `pangate token keygen`)", file=sys.stderr)
        return 1
    except (ValueError, TypeError):  # cryptography's messages name neither the file nor the fix
        print(f"{args.key} is not an Ed25519 private key in PEM (made by `pangate token keygen`)", file=sys.stderr)
        return 1
    claims = _claims(token)
    expires = datetime.datetime.fromtimestamp(claims["exp"], datetime.timezone.utc)
    # stderr, so `TOKEN=$(pangate token issue ...)` keeps only the token; the id is what
    # `pangate revoke --jti=` takes and what audit records name.
    print(f"token for {args.identity}: id (jti) {claims['jti']}, expires {expires:%Y-%m-%dT%H:%M:%SZ}",
          file=sys.stderr)
    print(token, flush=True)  # a closed stdout (`| head -c0`) surfaces here, to main's BrokenPipeError
    return 0
