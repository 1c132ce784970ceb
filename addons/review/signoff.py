"""Signed access-review sign-offs (PCI DSS 7.2.5.1: reviewed periodically, with sign-off).

`pangate review --sign-off NAME --key KEY` writes one file per sign-off under
`<audit dir>/reviews/`: what was reviewed (period, policy digest, sha256 of
the report) signed with the reviewer's own Ed25519 key (the approver key of
`pangate approver keygen`; the policy holds its public key under approvers).

Why a file and not a write to the trail: the running gateway owns the audit
writer (one writer per directory, hash chain in memory), so the CLI never
appends to it. The gateway's monitor stage picks new sign-off files up,
verifies them against the policy's approver keys, and records
`access_review_signed` (or alerts `access_review_signoff_invalid`). The next
review and the evidence pack read the files themselves, and verify them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time

from cryptography.exceptions import InvalidSignature

from pangate.audit.keys import key_id
from pangate.common.files import read_public, write_atomic

FORMAT = "pangate-access-review-signoff/1"
DIRNAME = "reviews"
RECORDED = ".recorded"  # names of sign-offs the gateway has recorded in the trail
_NAME = re.compile(r"^signoff-[0-9TZ]+-[A-Za-z0-9_.@-]+\.json$")


def canonical(doc: dict) -> bytes:
    body = {k: v for k, v in doc.items() if k != "sig"}
    return FORMAT.encode() + b"\n" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def directory(audit_dir: str) -> str:
    return os.path.join(audit_dir, DIRNAME)


def create(audit_dir: str, reviewer: str, private_key, period: dict, policy_digest: str | None,
           report_sha256: str, identities: list[str], note: str = "", clock=time.time) -> str:
    """Write a signed sign-off; returns its path."""
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", reviewer):
        raise ValueError(f"reviewer name {reviewer!r}: letters, digits and _ . @ - only")
    now = clock()
    doc = {"type": FORMAT, "reviewer": reviewer,
           "signed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
           "period": period, "policy_digest": policy_digest, "report_sha256": report_sha256,
           "identities": sorted(identities), "note": note[:500],
           "key_id": key_id(private_key.public_key())}
    doc["sig"] = base64.b64encode(private_key.sign(canonical(doc))).decode()
    d = directory(audit_dir)
    os.makedirs(d, mode=0o750, exist_ok=True)
    path = os.path.join(d, f"signoff-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{reviewer}.json")
    if os.path.exists(path):
        raise ValueError(f"{path} exists: one sign-off per reviewer per second")
    write_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o640)
    return path


def signed_review(path: str) -> str:
    """Where the review a sign-off signed is kept: review-<time>-<reviewer>.json beside it."""
    d, name = os.path.split(path)
    return os.path.join(d, "review-" + name.removeprefix("signoff-"))


def files(audit_dir: str) -> list[str]:
    d = directory(audit_dir)
    try:
        return [os.path.join(d, n) for n in sorted(os.listdir(d)) if _NAME.match(n)]
    except OSError:
        return []


def verify(path: str, policy=None, public_key_file: str | None = None) -> dict:
    """{"ok", "reason", "doc"}: the signature checked against the reviewer's key in the policy
    (approvers.NAME.public_key_file), or the given public key file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if not isinstance(doc, dict) or doc.get("type") != FORMAT:
            return {"ok": False, "reason": "not a pangate sign-off", "doc": None}
    except (OSError, ValueError) as e:
        return {"ok": False, "reason": f"unreadable: {e}", "doc": None}
    reviewer = doc.get("reviewer")
    key_file = public_key_file
    if key_file is None and policy is not None:
        approver = policy.approvers.get(reviewer)
        key_file = approver.public_key_file if approver else None
    if not key_file:
        return {"ok": False, "reason": f"{reviewer!r} is no approver with a public key in the policy", "doc": doc}
    try:
        pub = read_public(key_file, "reviewer key")
        pub.verify(base64.b64decode(doc.get("sig") or ""), canonical(doc))
    except (ValueError, InvalidSignature, TypeError) as e:
        return {"ok": False, "reason": f"bad signature ({type(e).__name__})", "doc": doc}
    return {"ok": True, "reason": "signature verified", "doc": doc}


def unrecorded(audit_dir: str, policy) -> list[tuple[str, dict]]:
    """Sign-off files the trail has no record of yet, each with its verification."""
    done = _recorded(audit_dir)
    return [(p, verify(p, policy)) for p in files(audit_dir) if os.path.basename(p) not in done]


def _recorded(audit_dir: str) -> set[str]:
    try:
        with open(os.path.join(directory(audit_dir), RECORDED), encoding="utf-8") as f:
            return {line.strip() for line in f if line.strip()}
    except OSError:
        return set()


def mark_recorded(audit_dir: str, path: str) -> None:
    names = _recorded(audit_dir) | {os.path.basename(path)}
    write_atomic(os.path.join(directory(audit_dir), RECORDED), ("\n".join(sorted(names)) + "\n").encode(), 0o640)


def latest(audit_dir: str, policy=None) -> dict | None:
    """The newest sign-off with its verification, or None."""
    found = files(audit_dir)
    return {"file": found[-1], **verify(found[-1], policy)} if found else None
