"""`pangate revoke|unrevoke`: cut an identity or one token off, on every open tunnel.

The running gateway picks the change up from the file within a second; the
list survives restarts. Revoking an identity refuses all of its tokens until
`pangate unrevoke`; revoking a token id (`jti`) refuses that token only.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

from pangate.identity import revocation
from pangate.policy.model import load_policy
from pangate.policy.errors import PolicyError


def register(sub) -> None:
    rv = sub.add_parser("revoke", help="revoke an identity or a token id; takes effect on the next request")
    rv.add_argument("identity", nargs="?", help="identity name in the policy")
    rv.add_argument("--jti", help="revoke one token by its id (the JWT `jti` claim) instead; write --jti=ID "
                    "when the id starts with -")
    rv.add_argument("--reason", help="why (recorded in the audit trail)")
    rv.add_argument("--list", action="store_true", help="print what is revoked")
    _common(rv)
    rv.set_defaults(func=_revoke)
    un = sub.add_parser("unrevoke", help="lift a revocation")
    un.add_argument("identity", nargs="?", help="identity name")
    un.add_argument("--jti", help="token id")
    _common(un)
    un.set_defaults(func=_unrevoke)


def _common(p) -> None:
    p.add_argument("--file", default=revocation.DEFAULT_PATH,
                   help="the gateway's revocation list (option pangate_revocations; "
                        f"default {revocation.DEFAULT_PATH})")
    p.add_argument("--policy", default="policies.yaml",
                   help="policy to check identity names against, if it exists (default policies.yaml)")
    p.add_argument("--force", action="store_true", help="revoke a name the policy does not know")


def _target(args) -> tuple[str, str] | None:
    if bool(args.identity) == bool(args.jti):
        print("name an identity or give --jti ID (one of them)", file=sys.stderr)
        return None
    kind, name = ("jtis", args.jti) if args.jti else ("identities", args.identity)
    if not revocation.valid_name(name):
        print(f"{name!r} is not a valid {'token id' if args.jti else 'identity name'}", file=sys.stderr)
        return None
    return kind, name


def _known(args, name: str) -> bool:
    """A typo must not look like a revocation: check the name against the policy when there is one."""
    if args.force:
        return True
    try:
        policy = load_policy(args.policy)
    except PolicyError:
        return True  # no readable policy here: nothing to check against
    if name in policy.identities:
        return True
    print(f"{args.policy} has no identity {name!r} (known: {', '.join(sorted(policy.identities))}); "
          "use --force to revoke it anyway", file=sys.stderr)
    return False


def _revoke(args) -> int:
    if args.list:
        return _list(args)
    target = _target(args)
    if target is None:
        return 2
    kind, name = target
    if kind == "identities" and not _known(args, name):
        return 2
    try:
        with revocation.editing(args.file) as lst:
            already = name in getattr(lst, kind)
            getattr(lst, kind).setdefault(name, revocation.entry(args.reason))
    except (OSError, ValueError) as e:
        print(f"cannot update {args.file}: {e}", file=sys.stderr)
        return 1
    what = f"token id {name}" if kind == "jtis" else f"identity {name}"
    print(f"{what} was already revoked" if already else f"revoked {what} ({args.file})")
    return 0


def _unrevoke(args) -> int:
    target = _target(args)
    if target is None:
        return 2
    kind, name = target
    try:
        with revocation.editing(args.file) as lst:
            found = getattr(lst, kind).pop(name, None) is not None
    except (OSError, ValueError) as e:
        print(f"cannot update {args.file}: {e}", file=sys.stderr)
        return 1
    if not found:
        print(f"{name} is not revoked in {args.file}", file=sys.stderr)
        return 1
    print(f"unrevoked {name} ({args.file})")
    return 0


def _list(args) -> int:
    try:
        lst = revocation.read(args.file)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 1
    rows = [("identity", k, v) for k, v in sorted(lst.identities.items())]
    rows += [("jti", k, v) for k, v in sorted(lst.jtis.items())]
    if not rows:
        print(f"nothing is revoked ({args.file})")
    for kind, name, e in rows:
        at = datetime.fromtimestamp(e.get("at", 0), timezone.utc).isoformat(timespec="seconds")
        print(f"{kind}\t{name}\t{at}\t{e.get('reason', '')}")
    return 0
