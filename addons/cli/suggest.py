"""`pangate policy suggest`: a least-privilege version of the policy, from the audit trail.

Prints the diff (and a report on stderr); `--out FILE` writes the suggested
policy. Write it beside the policy: file paths in a policy are relative to it.
"""

from __future__ import annotations

import os
import sys


def register_suggest(policy_sub) -> None:
    s = policy_sub.add_parser("suggest", help="narrow the policy to what the audit trail shows was used",
                              description="Narrow rules to the methods, paths and query ranges used in the "
                                          "period, drop unused rules, and turn report-mode traffic into rules.")
    s.add_argument("--since", default="30d", help="period start: 30d, 12h, 2w ago, or a UTC date (default 30d)")
    s.add_argument("--audit-dir", default="var/audit", metavar="DIR", help="audit trail (default var/audit)")
    s.add_argument("--policy", default="policies.yaml", metavar="FILE", help="policy file (default policies.yaml)")
    s.add_argument("--out", metavar="FILE", help="write the suggested policy here (beside the policy)")
    s.add_argument("--collapse", type=int, default=20, metavar="N",
                   help="more than N distinct values in one path segment become * (default 20)")
    s.add_argument("--progress", action="store_true", help="draw a progress bar on stderr even when it is not a TTY")
    s.set_defaults(func=suggest_cmd)


def suggest_cmd(args) -> int:
    from pangate.cli.progress import Progress
    from pangate.common.files import write_atomic
    from pangate.policy.model import load_policy
    from pangate.policy.yamlpos import decode
    from pangate.review import trail
    from pangate.review.suggest import suggest

    since = trail.parse_since(args.since)
    policy = load_policy(args.policy)
    with open(args.policy, "rb") as f:
        text = decode(f.read(), args.policy)
    bar = Progress("reading the audit trail") if args.progress or sys.stderr.isatty() else None
    records = list(trail.read(args.audit_dir, since, bar))
    if bar is not None:
        bar.end()
    result = suggest(policy, text, records, max(args.collapse, 1))
    for line in result["report"]:
        print(line, file=sys.stderr)
    if args.out:
        if os.path.dirname(os.path.abspath(args.out)) != os.path.dirname(os.path.abspath(args.policy)):
            print("note: the suggestion's file paths are relative to the policy's folder", file=sys.stderr)
        write_atomic(args.out, result["text"].encode(), 0o644)
        print(f"suggested policy written to {args.out}", file=sys.stderr)
    sys.stdout.write(result["diff"])
    return 0
