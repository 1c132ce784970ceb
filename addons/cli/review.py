"""`pangate review` (access review, sign-off) and `pangate evidence` (the PCI DSS evidence pack).

    pangate review --since 90d [--audit-dir DIR] [--policy FILE] [--format html|md|csv] [--out FILE]
    pangate review --since 90d --sign-off NAME [--key approver.key] [--note TEXT]
    pangate evidence --since 90d --out DIR [--key certs/audit-signing.key]
    pangate evidence verify DIR [--pubkey certs/audit-signing.key.pub]

A sign-off is a file under the audit directory signed with the reviewer's
approver key (see pangate.review.signoff for why not a write to the trail);
the running gateway records it in the trail, the next review shows it.
"""

from __future__ import annotations

import os
import sys

DEFAULT_AUDIT = "var/audit"
DEFAULT_POLICY = "policies.yaml"
DEFAULT_AUDIT_KEY = "certs/audit-signing.key"


def _common(p) -> None:
    p.add_argument("--since", default="90d", help="period start: 90d, 12h, 2w ago, or a UTC date (default 90d)")
    p.add_argument("--audit-dir", default=DEFAULT_AUDIT, metavar="DIR", help=f"audit trail (default {DEFAULT_AUDIT})")
    p.add_argument("--policy", default=DEFAULT_POLICY, metavar="FILE", help=f"policy file (default {DEFAULT_POLICY})")
    p.add_argument("--progress", action="store_true", help="draw a progress bar on stderr even when it is not a TTY")


def register(sub) -> None:
    r = sub.add_parser("review", help="access review per identity: grants used and unused; sign-off",
                       description="Report per identity its grants, which were used, and its activity "
                                   "(PCI DSS 7.2.5.1); --sign-off records a signed review.")
    _common(r)
    r.add_argument("--format", choices=("html", "md", "csv"), help="report format (default: from --out, else md)")
    r.add_argument("--out", metavar="FILE", help="write the report here instead of stdout")
    r.add_argument("--sign-off", metavar="NAME", help="sign the review as approver NAME (its key in the policy)")
    r.add_argument("--key", metavar="FILE", help="the reviewer's private key (default $PANGATE_APPROVER_KEY_FILE)")
    r.add_argument("--note", default="", help="a note kept with the sign-off")
    r.set_defaults(func=review_cmd)
    e = sub.add_parser("evidence", help="the PCI DSS evidence pack: policy, trail checks, counts, reviews, signed",
                       description="Write an evidence pack mapped to PCI DSS v4.0.1 requirements, or verify one.")
    _common(e)
    e.add_argument("action", nargs="?", choices=("build", "verify"), default="build",
                   help="build (default) or verify a pack")
    e.add_argument("dir", nargs="?", help="the pack to verify")
    e.add_argument("--out", metavar="DIR", help="where to write the pack (a new or empty directory)")
    e.add_argument("--key", default=DEFAULT_AUDIT_KEY, metavar="FILE",
                   help=f"audit signing key that signs the manifest (default {DEFAULT_AUDIT_KEY})")
    e.add_argument("--pubkey", metavar="FILE", help="audit public key (default: KEY.pub)")
    e.add_argument("--recordings", metavar="DIR", help="session recordings whose signatures to check")
    e.set_defaults(func=evidence_cmd)


def _progress(args):
    from pangate.cli.progress import Progress

    return Progress("reading the audit trail") if args.progress or sys.stderr.isatty() else None


def load_review(args):
    """(policy, review document) for the period of args."""
    from pangate.policy.model import load_policy
    from pangate.review import access, signoff, trail

    since = trail.parse_since(args.since)
    policy = load_policy(args.policy)
    bar = _progress(args)
    try:
        records = list(trail.read(args.audit_dir, since, bar))
    finally:
        if bar is not None:
            bar.end()
    return policy, access.build(policy, records, since, signoff=signoff.latest(args.audit_dir, policy))


def review_cmd(args) -> int:
    from pangate.common.files import write_atomic
    from pangate.review import render

    policy, doc = load_review(args)
    if args.sign_off:
        return _sign_off(args, policy, doc)
    fmt = args.format or (os.path.splitext(args.out)[1].lstrip(".").lower() if args.out else "md")
    if fmt not in ("html", "md", "csv"):
        fmt = "md"
    text = render.render(doc, fmt)
    if args.out:
        write_atomic(args.out, text.encode(), 0o640)
        print(f"access review written to {args.out} ({len(doc['identities'])} identities)", file=sys.stderr)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _sign_off(args, policy, doc) -> int:
    import json

    from pangate.audit.keys import key_id
    from pangate.common.files import read_private, read_public, write_atomic
    from pangate.review import access, signoff

    key_path = args.key or os.environ.get("PANGATE_APPROVER_KEY_FILE")
    if not key_path:
        print("pangate review: --sign-off needs the reviewer's key (--key or PANGATE_APPROVER_KEY_FILE)",
              file=sys.stderr)
        return 2
    approver = policy.approvers.get(args.sign_off)
    if approver is None or not approver.public_key_file:
        print(f"pangate review: {args.sign_off!r} is no approver with a public_key_file in {args.policy}",
              file=sys.stderr)
        return 2
    key = read_private(os.path.expanduser(key_path), "reviewer key")
    if key_id(key.public_key()) != key_id(read_public(approver.public_key_file, "approver key")):
        print(f"pangate review: {key_path} is not the key of approver {args.sign_off} in the policy", file=sys.stderr)
        return 2
    report = access.digest(doc)
    path = signoff.create(args.audit_dir, args.sign_off, key, doc["period"], doc["policy"]["digest"], report,
                          [i["identity"] for i in doc["identities"]], args.note)
    # What was signed, next to the signature: the evidence pack includes both.
    write_atomic(signoff.signed_review(path), json.dumps(doc, indent=1, sort_keys=True).encode(), 0o640)
    print(f"sign-off recorded: {path} (review sha256 {report[:16]}); a running gateway adds it to the audit trail")
    return 0


def evidence_cmd(args) -> int:
    from pangate.review import evidence

    if args.action == "verify":
        if not args.dir:
            print("pangate evidence verify: give the pack directory", file=sys.stderr)
            return 2
        ok, lines = evidence.verify_pack(args.dir, args.pubkey)
        print("\n".join(lines))
        return 0 if ok else 1
    if not args.out:
        print("pangate evidence: --out DIR is required", file=sys.stderr)
        return 2
    policy, doc = load_review(args)
    bar = _progress(args)
    result = evidence.build_pack(args.out, policy, doc, args.audit_dir, args.key, args.pubkey,
                                 recordings=args.recordings, progress=bar)
    if bar is not None:
        bar.end()
    print(f"evidence pack written to {args.out}: {result['files']} files, manifest signed "
          f"(key {result['key_id']}); index: {os.path.join(args.out, 'index.html')}")
    return 0
