"""`pangate revoke|unrevoke`: cut an identity or one token off, on every open tunnel.

The running gateway picks the change up from the file within a second; the
list survives restarts. Revoking an identity refuses all of its tokens until
`pangate unrevoke`; revoking a token id (`jti`) refuses that token only.

With `--state redis://...` (the gateways' pangate_state) the revocation goes to
the shared state instead, and every instance refuses it on its next request;
the file is written too only when --file is given.
"""

from __future__ import annotations

import os
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
    p.add_argument("--file", default=None,
                   help="the gateway's revocation list (option pangate_revocations; "
                        f"default {revocation.DEFAULT_PATH}, unless --state is given)")
    p.add_argument("--state", default=os.environ.get("PANGATE_STATE", ""),
                   help="the gateways' shared state, redis://HOST:PORT/DB or rediss:// (option pangate_state; "
                        "default $PANGATE_STATE)")
    p.add_argument("--state-password-env", default="",
                   help="environment variable holding the Redis password (never put it in the URL)")
    p.add_argument("--state-password-file", default="", help="file holding the Redis password")
    p.add_argument("--state-ca", default="", help="CA bundle to verify a rediss:// server with")
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


def _files(args) -> bool:
    """Whether to write the file: always without --state, with it only when --file was named."""
    if args.file is None and not args.state:
        args.file = revocation.DEFAULT_PATH
    return args.file is not None


def _shared(args, kind: str, name: str, entry: dict | None) -> bool | None:
    """Write one change to the shared state; None (after saying why) when it cannot be reached."""
    from pangate.state import revocations as shared

    try:
        client = shared.cli_client(args.state, args.state_password_env, args.state_password_file, args.state_ca)
        return shared.cli_set(client, kind, name, entry)
    except ValueError as e:
        print(f"--state: {e}", file=sys.stderr)
    except Exception as e:  # redis-py's connection and auth errors: say which, never a traceback
        print(f"cannot update the shared state at {_where(args.state)}: {type(e).__name__}: {e}", file=sys.stderr)
    return None


def _where(url: str) -> str:
    from pangate.state.store import redacted

    return redacted(url)


def _revoke(args) -> int:
    if args.list:
        return _list(args)
    target = _target(args)
    if target is None:
        return 2
    kind, name = target
    if kind == "identities" and not _known(args, name):
        return 2
    what = f"token id {name}" if kind == "jtis" else f"identity {name}"
    if args.state:
        changed = _shared(args, kind, name, revocation.entry(args.reason))
        if changed is None:
            return 1
        print(f"revoked {what} (shared state {_where(args.state)})" if changed else f"{what} was already revoked")
        if not _files(args):
            return 0
    _files(args)
    try:
        with revocation.editing(args.file) as lst:
            already = name in getattr(lst, kind)
            getattr(lst, kind).setdefault(name, revocation.entry(args.reason))
    except (OSError, ValueError) as e:
        print(f"cannot update {args.file}: {e}", file=sys.stderr)
        return 1
    print(f"{what} was already revoked" if already else f"revoked {what} ({args.file})")
    return 0


def _unrevoke(args) -> int:
    target = _target(args)
    if target is None:
        return 2
    kind, name = target
    if args.state:
        changed = _shared(args, kind, name, None)
        if changed is None:
            return 1
        if changed:
            print(f"unrevoked {name} (shared state {_where(args.state)})")
        elif not args.file:
            print(f"{name} is not revoked in the shared state", file=sys.stderr)
            return 1
        if not _files(args):
            return 0
    _files(args)
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
    if args.state and args.file is None:
        from pangate.state import revocations as shared

        try:
            lst = shared.cli_list(shared.cli_client(args.state, args.state_password_env, args.state_password_file,
                                                    args.state_ca))
        except Exception as e:
            print(f"cannot read the shared state at {_where(args.state)}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        args.file = f"shared state {_where(args.state)}"
        return _print(lst, args)
    _files(args)
    try:
        lst = revocation.read(args.file)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 1
    return _print(lst, args)


def _print(lst, args) -> int:
    rows = [("identity", k, v) for k, v in sorted(lst.identities.items())]
    rows += [("jti", k, v) for k, v in sorted(lst.jtis.items())]
    if not rows:
        print(f"nothing is revoked ({args.file})")
    for kind, name, e in rows:
        at = datetime.fromtimestamp(e.get("at", 0), timezone.utc).isoformat(timespec="seconds")
        print(f"{kind}\t{name}\t{at}\t{e.get('reason', '')}")
    return 0
