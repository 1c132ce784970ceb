"""`pangate audit verify|show|rotate-key`: check the audit trail, read it, change its key.

verify exits 0 when the log (and recordings) are intact, 1 at the first broken
place (which it names), 2 when it cannot read what it was given.

rotate-key replaces the signing key on purpose and says so in the trail: with
the old key the change is sealed by it (verify then trusts the new key on its
word); with `--lost` it is recorded unsealed and verify needs the new public key
given. Run it with the gateway stopped: one writer per audit directory.
"""

from __future__ import annotations

import json
import os
import sys

from pangate.audit.log import FILE_RE, file_sort_key, iter_lines_reverse, list_audit_files
from pangate.audit.verify import verify_instances, verify_log
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
    r = audit.add_parser("rotate-key", help="replace the signing key and record the change in the trail")
    r.add_argument("--key", required=True, help="the signing key file (pangate_audit_key)")
    r.add_argument("--audit-dir", required=True, help="the audit directory (pangate_audit_dir)")
    r.add_argument("--reason", default="", help="why, for the record (e.g. a ticket)")
    r.add_argument("--lost", action="store_true",
                   help="the old key is gone: record the rotation unsealed (verify then needs the new public key)")
    r.set_defaults(func=rotate_cmd)


def add_verify_arguments(p) -> None:
    p.add_argument("path", nargs="+", help="audit directory, or audit files in chain order; several "
                   "directories are several gateway instances' chains, each verified on its own")
    p.add_argument("--pubkey", action="append",
                   help=f"Ed25519 public key of the checkpoints (default {DEFAULT_PUBKEY} if present); repeat for "
                        "several keys (rotated keys, or each instance's). Retired keys kept by rotate-key beside "
                        "it (KEY.<id>.pub) are used too")
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
    instances = len(paths) > 1 and all(os.path.isdir(p) for p in paths)
    pubkey = args.pubkey or ([DEFAULT_PUBKEY] if os.path.exists(DEFAULT_PUBKEY) else None)
    if pubkey is None:
        print("warning: no public key (--pubkey): signatures are NOT checked", file=sys.stderr)
    elif not args.pubkey:
        print(f"using public key {DEFAULT_PUBKEY}", file=sys.stderr)
    for p in pubkey or ():
        if not os.path.exists(p):
            print(f"pangate audit verify: {p} does not exist", file=sys.stderr)
            return 2
    live = args.live
    if not live:
        pid = live_writer(paths[0] if len(paths) == 1 else os.path.dirname(paths[-1]) or ".")
        if pid is not None:
            print(f"the gateway (pid {pid}) is writing this log: its newest records are not signed yet "
                  "(verified as --live)", file=sys.stderr)
            live = True
    progress = Progress("verifying") if args.progress or sys.stderr.isatty() else None
    if instances and args.recordings:
        print("pangate audit verify: --recordings goes with one audit directory at a time", file=sys.stderr)
        return 2
    try:
        if instances:
            rep = verify_instances(paths, pubkey, live=live, progress=progress)
        else:
            rep = verify_log(target, pubkey, progress, live=live, recordings=args.recordings)
    except (OSError, ValueError) as e:
        if progress is not None:
            progress.clear()
        print(f"pangate audit verify: cannot read the audit log: {e}", file=sys.stderr)
        return 2
    if progress is not None:
        progress.end()
    print(rep.summary())
    if getattr(rep, "kind", None) == "truncated" and not live and getattr(rep, "records", 0):  # one chain only
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
    pid = _last_start_pid(directory)  # read first: our own reader must not count as holding the file
    if pid is None or pid == os.getpid() or not _alive(pid):
        return None
    held = _holds_open(pid, directory)
    return pid if held is None or held or _runs_gateway(pid) else None


def _last_start_pid(directory: str) -> int | None:
    """The pid in the newest run's audit_start, unless that run ended with its close checkpoint."""
    try:
        files = list_audit_files(directory)
    except OSError:
        return None
    for f in reversed(files):
        try:
            lines = iter_lines_reverse(f)
            try:
                for raw in lines:
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        continue  # a line being written
                    if rec.get("event") == "checkpoint" and rec.get("reason") == "close":
                        return None
                    if rec.get("event") == "audit_start":
                        pid = rec.get("pid")
                        return pid if isinstance(pid, int) and pid > 0 else None
            finally:
                lines.close()
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


def _last_key_id(directory: str) -> str | None:
    """The key id of the newest checkpoint: who sealed the trail last."""
    for path in reversed(list_audit_files(directory)):
        for line in iter_lines_reverse(path):
            if b'"event":"checkpoint"' in line:
                try:
                    return json.loads(line).get("key_id")
                except ValueError:
                    return None
    return None


def rotate_cmd(args) -> int:
    from pangate.audit.keys import key_id, load_public_key, retired_pub_path
    from pangate.audit.log import AuditError, AuditWriter
    from pangate.common.files import private_pem, public_pem, read_private, write_atomic, write_private
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    def fail(msg: str) -> int:
        print(f"pangate audit rotate-key: {msg}", file=sys.stderr)
        return 2

    key_path, directory = os.path.expanduser(args.key), args.audit_dir
    if not os.path.isdir(directory) or not list_audit_files(directory):
        return fail(f"{directory} holds no audit trail: nothing to rotate (a new trail makes its key at start)")
    staged = key_path + ".new"
    if os.path.exists(staged):
        return fail(f"{staged} exists: an earlier rotation did not finish. If the trail's last key_rotation names "
                    f"its key id, move it to {key_path}; otherwise remove it and run again")
    old_pub_path = key_path + ".pub"
    old = None
    if args.lost:
        if os.path.exists(key_path):
            return fail(f"{key_path} exists: --lost is for a key that is gone; rotate without --lost")
        old_id = None
        if os.path.exists(old_pub_path):
            try:
                old_id = key_id(load_public_key(old_pub_path))
            except (OSError, ValueError):
                old_id = None
        old_id = old_id or _last_key_id(directory)
    else:
        if not os.path.exists(key_path):
            return fail(f"{key_path} does not exist; if the key is lost, run again with --lost")
        try:
            old = read_private(key_path, "audit signing key")
        except ValueError as e:
            return fail(str(e))
        old_id = key_id(old.public_key())
        sealed_by = _last_key_id(directory)
        if sealed_by is not None and sealed_by != old_id:
            return fail(f"{key_path} is key {old_id}, but the trail was last sealed by {sealed_by}: "
                        "restore that key, or rotate with --lost")
    new = Ed25519PrivateKey.generate()
    new_id = key_id(new.public_key())
    try:
        write_private(staged, private_pem(new))  # O_EXCL, 0600: never briefly readable, never clobbered
    except OSError as e:
        return fail(f"cannot write {staged}: {e}")
    try:
        writer = AuditWriter(directory, new if args.lost else old)
        try:
            seq = writer.rotate_key(new, reason=args.reason, lost=args.lost, old_key_id=old_id)
        finally:
            ok = writer.close()
        if not ok:
            raise AuditError(f"the rotation record could not be written: {writer.failure}")
    except (OSError, ValueError, AuditError) as e:
        os.unlink(staged)
        return fail(str(e))
    # The trail now names the new key: install it. Old public key first, so it is never lost.
    kept = None
    if os.path.exists(old_pub_path) and old_id:
        kept = retired_pub_path(key_path, old_id)
        with open(old_pub_path, "rb") as f:
            write_atomic(kept, f.read(), 0o644)
    elif old is not None:
        kept = retired_pub_path(key_path, old_id)
        write_atomic(kept, public_pem(old.public_key()), 0o644)
    os.replace(staged, key_path)
    write_atomic(old_pub_path, public_pem(new.public_key()), 0o644)
    print(f"rotated the audit signing key {old_id or '(unknown)'} -> {new_id} (key_rotation record seq {seq})")
    print(f"new key: {key_path}, public key {old_pub_path}" + (f"; old public key kept as {kept}" if kept else ""))
    if args.lost:
        print("recorded WITHOUT the old key: verification trusts the new key only when you give it:\n"
              f"  pangate audit verify {directory} --pubkey {old_pub_path}")
    else:
        print(f"sealed by the old key; verify follows it: pangate audit verify {directory} --pubkey {old_pub_path}")
    print("restart the gateway to sign with the new key")
    return 0
