"""`pangate approve ID`, `pangate deny ID --reason ...`, `pangate approvals`, `pangate approver keygen`.

The approver's private key is read from a file (PANGATE_APPROVER_KEY_FILE or
--key-file), never from the command line, and signs each call; the name is
PANGATE_APPROVER or --as. The gateway is PANGATE_CONTROL (default
http://127.0.0.1:8089).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ed25519

from pangate.control.calls import sign_call
from pangate.common.files import keygen_command, read_private
from pangate.common.webhook import is_loopback

DEFAULT_CONTROL = "http://127.0.0.1:8089"


def register(sub) -> None:
    for name, help_text in (("approve", "approve a pending request"), ("deny", "deny a pending request"),
                            ("approvals", "list pending approvals")):
        p = sub.add_parser(name, help=help_text)
        if name != "approvals":
            p.add_argument("id", help="the approval id (apr_...)")
        if name == "deny":
            p.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
        p.add_argument("--as", dest="approver", default=os.environ.get("PANGATE_APPROVER"),
                       help="your approver name in the policy (default $PANGATE_APPROVER)")
        p.add_argument("--key-file", default=os.environ.get("PANGATE_APPROVER_KEY_FILE"),
                       help="your Ed25519 private key file (default $PANGATE_APPROVER_KEY_FILE)")
        p.add_argument("--control", default=os.environ.get("PANGATE_CONTROL", DEFAULT_CONTROL),
                       help=f"the gateway's control endpoint (default $PANGATE_CONTROL or {DEFAULT_CONTROL})")
        p.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
        p.set_defaults(func=_call, action="list" if name == "approvals" else name)
    kg = sub.add_parser("approver", help="approver keys").add_subparsers(dest="approver_command", metavar="ACTION",
                                                                         required=True)
    k = kg.add_parser("keygen", help="create your approver key pair; put KEY.pub in the policy")
    k.add_argument("--key", required=True, help="private key path (public key: KEY.pub)")
    k.set_defaults(func=_keygen)


def _keygen(args) -> int:
    return keygen_command(args.key, "keep the private key to yourself; in policies.yaml:  "
                                    "approvers: {{YOUR_NAME: {{public_key_file: {pub}}}}}")


def _load_key(path: str | None) -> ed25519.Ed25519PrivateKey:
    if not path:
        raise ValueError("no approver key: set PANGATE_APPROVER_KEY_FILE (or --key-file)")
    return read_private(path, "approver key", " (make one with `pangate approver keygen`)")


def _call(args) -> int:
    parts = urlsplit(args.control)
    if parts.scheme != "http" or not parts.hostname or not is_loopback(parts.hostname):
        print(f"the control endpoint is on loopback over http, not {args.control!r}", file=sys.stderr)
        return 2
    if not args.approver:
        print("who are you? set PANGATE_APPROVER (or --as NAME)", file=sys.stderr)
        return 2
    try:
        key = _load_key(args.key_file)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    body, auth = sign_call(key, args.approver, args.action, getattr(args, "id", None),
                           getattr(args, "reason", None))
    req = urllib.request.Request(args.control.rstrip("/") + "/v1/approvals", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": auth})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via HTTP(S)_PROXY
    try:
        with opener.open(req, timeout=15) as resp:
            status, doc = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        status, doc = e.code, json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError) as e:
        print(f"cannot reach the gateway at {args.control}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=1))
    elif status != 200:
        print(f"refused: {doc.get('reason', doc)}", file=sys.stderr)
    elif args.action == "list":
        _print_pending(doc["pending"])
    else:
        a = doc["approval"]
        state = {"granted": "approved", "denied": "denied"}.get(a["status"], f"recorded "
                                                                 f"({len(a['approvals'])}/{a['required']} approvals)")
        print(f"{a['id']}: {state} (rule {a['rule']}, requester {a['requester']})")
    return 0 if status == 200 else 1


def _print_pending(pending: list[dict]) -> None:
    if not pending:
        print("no pending approvals")
        return
    for p in pending:
        r = p["request"]
        print(f"{p['id']}  {p['rule']:<16} {p['requester']:<16} {r['method']} {r['host']}{r['path']}  "
              f"{len(p['approvals'])}/{p['required']} approvals, {p['mode']}, expires in {p['expires_in']:.0f}s")
