"""`pangate policy check FILE` and `pangate policy explain IDENTITY METHOD URL`.

check validates policies without starting anything. explain says which rule
allows or denies a request and why: exit 0 allowed, 1 denied, 2 when the
policy or the arguments are wrong.
"""

from __future__ import annotations

import json
import sys

from pangate.cli.suggest import register_suggest
from pangate.policy.model import load_policy
from pangate.policy.errors import PolicyError

DEFAULT_POLICY = "policies.yaml"  # the gateway's pangate_policy default


def register(sub) -> None:
    policy = sub.add_parser("policy", help="work with policy files").add_subparsers(
        dest="policy_command", metavar="ACTION", required=True)
    check = policy.add_parser("check", help="validate a policy file; exit 1 if it is broken")
    check.add_argument("file", nargs="+", help="policy file(s)")
    check.set_defaults(func=check_cmd)
    ex = policy.add_parser("explain", help="which rule allows or denies a request, and why (exit 0 allow, 1 deny)",
                           description="Decide a request as the gateway would, and say why.")
    ex.add_argument("identity", help="identity name in the policy")
    ex.add_argument("method", help="HTTP method, e.g. GET")
    ex.add_argument("url", help="the full URL, e.g. 'https://api.stripe.com/v1/charges?limit=10' (quote it)")
    ex.add_argument("--policy", default=DEFAULT_POLICY, metavar="FILE", help=f"policy file (default {DEFAULT_POLICY})")
    ex.add_argument("--json", action="store_true", help="print the explanation as one JSON document")
    ex.set_defaults(func=explain_cmd)
    register_suggest(policy)


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


def explain_cmd(args) -> int:
    from pangate.cli.explain import explain, render

    try:
        policy = load_policy(args.policy)
    except PolicyError as e:  # names the file and line
        print(f"pangate policy explain: {e}", file=sys.stderr)
        return 2
    try:
        doc = explain(policy, args.identity, args.method, args.url)
    except ValueError as e:
        print(f"pangate policy explain: {e}", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=1) if args.json else render(doc))
    return 1 if doc["decision"] == "deny" else 0
