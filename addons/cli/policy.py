"""`pangate policy check FILE`: validate a policy without starting anything."""

from __future__ import annotations

import sys

from pangate.policy.model import load_policy
from pangate.policy.errors import PolicyError


def register(sub) -> None:
    policy = sub.add_parser("policy", help="work with policy files").add_subparsers(
        dest="policy_command", metavar="ACTION", required=True)
    check = policy.add_parser("check", help="validate a policy file; exit 1 if it is broken")
    check.add_argument("file", nargs="+", help="policy file(s)")
    check.set_defaults(func=check_cmd)


def check_cmd(args) -> int:
    status = 0
    for path in args.file:
        try:
            p = load_policy(path)
        except PolicyError as e:
            print(f"{e}", file=sys.stderr)
            status = 1
            continue
        print(f"{path}: ok: {len(p.identities)} identities, {len(p.roles)} roles, "
              f"{len(p.destinations)} destinations, {len(p.approvals)} approval rules")
        for ident in p.static_key_identities():
            print(f"{path}: RISK: identity {ident.name} uses a static key ({ident.static_key_reason})")
        for r in p.reveals:
            print(f"{path}: NOTE: {r.identity} sees full card numbers from {r.destination}: {r.justification}")
    return status
