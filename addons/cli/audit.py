"""`pangate audit verify|show`: check the audit trail and read it.

verify exits 0 when the log (and recordings) are intact, 1 at the first broken
place (which it names), 2 when it cannot read what it was given.
"""

from __future__ import annotations

import json
import os
import sys

from pangate.audit.log import FILE_RE, file_sort_key, list_audit_files
from pangate.audit.verify import verify_log
from pangate.cli.progress import Progress

DEFAULT_PUBKEY = "certs/audit-signing.key.pub"


def register(sub) -> None:
    audit = sub.add_parser("audit", help="verify and read the audit trail").add_subparsers(
        dest="audit_command", metavar="ACTION", required=True)
    v = audit.add_parser("verify", help="check the hash chain, signatures and recordings; exit 1 if broken")
    add_verify_arguments(v)
    v.set_defaults(func=verify_cmd)
    s = audit.add_parser("show", help="print audit records, filtered")
    s.add_argument("path", help="audit directory or file")
    s.add_argument("--identity", help="only records of this identity")
    s.add_argument("--outcome", help="only this outcome (allowed, denied, token_refused, error, ...)")
    s.add_argument("--event", help="only this event type (request, connect, policy_loaded, ...)")
    s.add_argument("--request-id", help="only the records of this request id")
    s.add_argument("--since", help="only records at or after this UTC time (ISO 8601 prefix, e.g. 2026-01-31T12)")
    s.add_argument("--json", action="store_true", help="print the records as JSON lines")
    s.set_defaults(func=show_cmd)


def add_verify_arguments(p) -> None:
    p.add_argument("path", nargs="+", help="audit directory, or audit files in chain order")
    p.add_argument("--pubkey", help=f"Ed25519 public key of the checkpoints (default {DEFAULT_PUBKEY} if present)")
    p.add_argument("--recordings", help="directory of session recordings whose signatures to check")
    p.add_argument("--live", action="store_true", help="the gateway is running: accept an unsigned tail")
    p.add_argument("--progress", action="store_true", help="draw a progress bar on stderr even when it is not a TTY")


def verify_cmd(args) -> int:
    paths = args.path
    target = paths[0] if len(paths) == 1 else (
        sorted(paths, key=file_sort_key) if all(FILE_RE.match(os.path.basename(p)) for p in paths) else paths)
    for p in paths:
        if not os.path.exists(p):
            print(f"pangate audit verify: {p} does not exist", file=sys.stderr)
            return 2
    pubkey = args.pubkey or (DEFAULT_PUBKEY if os.path.exists(DEFAULT_PUBKEY) else None)
    if pubkey is None:
        print("warning: no public key (--pubkey): signatures are NOT checked", file=sys.stderr)
    elif not args.pubkey:
        print(f"using public key {pubkey}", file=sys.stderr)
    live = args.live
    if not live:
        pid = live_writer(paths[0] if len(paths) == 1 else os.path.dirname(paths[-1]) or ".")
        if pid is not None:
            print(f"the gateway (pid {pid}) is writing this log: its newest records are not signed yet "
                  "(verified as --live)", file=sys.stderr)
            live = True
    progress = Progress("verifying") if args.progress or sys.stderr.isatty() else None
    try:
        rep = verify_log(target, pubkey, progress, live=live, recordings=args.recordings)
    except (OSError, ValueError) as e:
        if progress is not None:
            progress.clear()
        print(f"pangate audit verify: cannot read the audit log: {e}", file=sys.stderr)
        return 2
    if progress is not None:
        progress.end()
    print(rep.summary())
    if rep.kind == "truncated" and not live and rep.records:
        print("no running gateway is writing this log (none holds it: the last one stopped without its "
              "closing checkpoint, or records were removed from the end); if a gateway elsewhere writes it, "
              "use --live", file=sys.stderr)
    return 0 if rep.ok else 1


# ---- is a gateway writing this log? --------------------------------------------------------
# The writer leaves no lock file; what it does leave is its pid in the `audit_start`
# record of each run and, when it stops, a `checkpoint` whose reason is "close". A log
# whose newest run has no close checkpoint is being written if that pid is alive and
# (where /proc says) holds a file of this directory open; otherwise the writer crashed
# or records were cut off the end, which verify reports as it is.

def _last_lines(path: str, block: int = 1 << 16):
    """The complete lines of a file, newest first."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        tail = b""
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            buf = f.read(end - start) + tail
            lines = buf.split(b"\n")
            tail = lines.pop(0) if start > 0 else b""
            for raw in reversed(lines):
                if raw.strip():
                    yield raw
            end = start


def _holds_open(pid: int, directory: str) -> bool | None:
    """Whether process pid has a file in directory open; None when /proc cannot say."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    want = os.path.realpath(directory) + os.sep
    for n in names:
        try:
            if os.readlink(os.path.join(fd_dir, n)).startswith(want):
                return True
        except OSError:
            continue
    return False


def live_writer(path: str) -> int | None:
    """The pid of a running gateway writing the audit log at path (a directory or a file), or None."""
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    try:
        files = list_audit_files(directory)
    except OSError:
        return None
    for f in reversed(files):
        try:
            for raw in _last_lines(f):
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue  # a line being written
                if rec.get("event") == "checkpoint" and rec.get("reason") == "close":
                    return None
                if rec.get("event") == "audit_start":
                    pid = rec.get("pid")
                    if not isinstance(pid, int) or pid <= 0 or not _alive(pid):
                        return None
                    held = _holds_open(pid, directory)
                    return pid if held is None or held or _runs_gateway(pid) else None
        except OSError:
            return None
    return None


def _runs_gateway(pid: int) -> bool:
    """A pid reused by another program is not our writer (the writer may have its file closed while failed)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return any(w in cmd for w in (b"mitmdump", b"mitmweb", b"gateway.py"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def iter_records(path: str):
    files = list_audit_files(path) if os.path.isdir(path) else [path]
    for f in files:
        with open(f, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if raw.endswith(b"\n"):  # a last line without one is still being written
                    try:
                        yield json.loads(raw)
                    except ValueError:
                        raise ValueError(f"{f}:{lineno}: not a JSON audit record "
                                         "(`pangate audit verify` says what happened)") from None


def _matches(rec: dict, args) -> bool:
    ident = rec.get("identity")
    name = ident.get("name") if isinstance(ident, dict) else ident
    return ((not args.identity or name == args.identity)
            and (not args.outcome or rec.get("outcome") == args.outcome)
            and (not args.event or rec.get("event") == args.event)
            and (not args.request_id or rec.get("request_id") == args.request_id)
            and (not args.since or str(rec.get("time", "")) >= args.since))


def show_cmd(args) -> int:
    if not os.path.exists(args.path):
        print(f"pangate audit show: {args.path} does not exist", file=sys.stderr)
        return 2
    try:
        for rec in iter_records(args.path):
            _show(rec, args)
    except (OSError, ValueError) as e:
        print(f"pangate audit show: {e}", file=sys.stderr)
        return 2
    return 0


def _show(rec: dict, args) -> None:
    if rec.get("event") == "checkpoint" or not _matches(rec, args):
        return
    if args.json:
        print(json.dumps(rec, sort_keys=True))
        return
    ident = rec.get("identity")
    d = rec.get("destination") or {}
    where = f" {d.get('method')} {d.get('scheme')}://{d.get('host')}:{d.get('port')}{d.get('path')}" if d else ""
    line = (f"{rec.get('time')} #{rec.get('seq')} {rec.get('event')} {rec.get('outcome') or ''} "
            f"{(ident or {}).get('name') if isinstance(ident, dict) else ident or '-'}"
            f"{where} {rec.get('status') or ''} {rec.get('code') or ''} {rec.get('request_id') or ''}").rstrip()
    # Approval events are about people: who asked, who decided, under which rule.
    extra = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
             for k in SHOW_FIELDS if (v := rec.get(k)) not in (None, "", [])]
    print(" ".join([line, *extra]))


SHOW_FIELDS = ("approval_id", "rule", "requester", "approver", "approvers", "voter", "reason")
