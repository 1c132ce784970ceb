"""`pangate token keygen|issue`: short-lived tokens for teams without an IdP."""

from __future__ import annotations

import sys

from pangate.common.files import keygen_command
from pangate.policy.schema import parse_duration


def register(sub) -> None:
    token = sub.add_parser("token", help="make the signing key and issue short-lived tokens").add_subparsers(
        dest="token_command", metavar="ACTION", required=True)
    kg = token.add_parser("keygen", help="create the gateway's Ed25519 token-signing key")
    kg.add_argument("--key", default="certs/token-signing.key", help="private key path (public key: KEY.pub)")
    kg.set_defaults(func=_keygen)
    iss = token.add_parser("issue", help="print a signed token for an identity")
    iss.add_argument("--identity", required=True, help="identity name in the policy")
    iss.add_argument("--ttl", default="15m", help="lifetime, e.g. 15m, 1h (default 15m)")
    iss.add_argument("--key", default="certs/token-signing.key")
    iss.add_argument("--audience", default="pangate")
    iss.set_defaults(func=_issue)


def _keygen(args) -> int:
    return keygen_command(args.key)


def _issue(args) -> int:
    from pangate.identity.tokens import issue  # jwt: only for the command that signs

    try:
        ttl = parse_duration(args.ttl)
    except ValueError as e:
        print(f"pangate token issue: --ttl: {e}", file=sys.stderr)
        return 2
    if ttl <= 0 or not args.identity:
        print("pangate token issue: needs an --identity and a positive --ttl", file=sys.stderr)
        return 2
    if ttl > 24 * 3600:
        print("a token lives at most 24h: machine identities should renew, not hoard", file=sys.stderr)
        return 2
    try:
        print(issue(args.key, args.identity, ttl, audience=args.audience))
    except OSError as e:
        print(f"cannot read the signing key {args.key}: {e.strerror} (run `pangate token keygen`)", file=sys.stderr)
        return 1
    except (ValueError, TypeError):  # cryptography's messages name neither the file nor the fix
        print(f"{args.key} is not an Ed25519 private key in PEM (made by `pangate token keygen`)", file=sys.stderr)
        return 1
    return 0
