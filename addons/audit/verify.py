"""Verifier for the audit log written by `auditlog.AuditWriter` (PCI DSS 10.3.4/10.5.1).

Walks the chain line by line (streaming, constant memory) and stops at the FIRST
broken place, classifying it:

  edited          a line's hash no longer matches the next line's `prev`, or a
                  checkpoint's head/covers/file disagree with the chain
  deleted         seq gap (records or whole files missing), or the oldest file
                  does not start at seq 1 and no retention record vouches for it
  inserted        an extra line: the line after it links to the line before it,
                  or it duplicates the previous seq
  reordered       seq goes backwards / the missing seq follows right after
  truncated       the log does not end with the checkpoint signed at close
                  (`live=True` accepts an unsigned tail of a running writer)
  bad_signature   checkpoint signature invalid, or made with another key
  missing_signature  checkpoint without sig, or more records than its `every`
                  allows since the last checkpoint
  torn_tail       the final line is incomplete (crash mid-write); everything
                  before it has been verified
  bad_json        a line that is not a JSON object with an integer seq

Anchoring: the chain starts at seq 1 with prev = 64 zeros, unless retention
removed old files; then the first remaining record (seq S, prev P) is accepted
only if some chained `retention` record states last_removed_seq = S-1 and
last_removed_hash = P. That record is itself sealed by later checkpoints.

Key rotation: checkpoints carry the key_id that signed them, and the verifier
holds a keyring (key id -> public key). A `key_rotation` record names the old and
new key ids and carries the new public key. Sealed by a checkpoint of the old key
(the normal case), it makes the new key trusted on the old one's word; recorded
without the old key (`sealed: false`, the old key was lost), the new key must be
in the keyring the operator gave: nothing unsealed in the trail is trusted. Any
other change of key id between checkpoints is a bad_signature.

Without a public key the chain is still checked but signatures are not
(`report.signatures_checked` is False); an attacker who can write the files could
then rewrite the whole chain, so always pass the key for evidence.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature

from pangate.audit.keys import key_id, load_keyring, load_public_key, verify_file
from pangate.audit.log import GENESIS, checkpoint_message, line_hash, list_audit_files


@dataclass
class VerifyReport:
    ok: bool = True
    records: int = 0          # non-checkpoint records verified
    checkpoints: int = 0
    identities: set = field(default_factory=set)
    first_time: str | None = None
    last_time: str | None = None
    files: list = field(default_factory=list)
    recordings: list = field(default_factory=list)  # (path, ok, reason)
    signatures_checked: bool = False
    last_seq: int | None = None
    notes: list = field(default_factory=list)
    error: str | None = None
    kind: str | None = None
    where: str | None = None  # "file:line"
    where_seq: int | None = None
    # Restarts after a crash: {"last_record": time, "restarted": time, "after_seq": n, "file": name}
    unclean_shutdowns: list = field(default_factory=list)
    instances: set = field(default_factory=set)  # the `instance` its records name (one, normally)
    # Signing key changes: {"seq", "time", "old_key_id", "new_key_id", "sealed", "reason"}
    rotations: list = field(default_factory=list)

    def fail(self, kind: str, item: "_Line | None", error: str) -> "VerifyReport":
        self.ok, self.kind, self.error = False, kind, error
        if item is not None:
            self.where, self.where_seq = f"{item.path}:{item.lineno}", item.seq
        return self

    def summary(self) -> str:
        head = "OK" if self.ok else f"FAILED ({self.kind})"
        out = [f"audit log verification: {head}",
               f"  files: {len(self.files)}  records: {self.records}  checkpoints: {self.checkpoints}"
               f"  last seq: {self.last_seq}",
               f"  time range: {self.first_time} .. {self.last_time}",
               f"  identities: {', '.join(sorted(self.identities)) or '-'}",
               *([f"  instance: {', '.join(sorted(self.instances))}"] if self.instances else []),
               f"  signatures: {'verified' if self.signatures_checked else 'NOT checked (no public key)'}"]
        if self.recordings:
            bad = [r for r in self.recordings if not r[1]]
            out.append(f"  recordings: {len(self.recordings)} signed, {len(bad)} failed")
        for u in self.unclean_shutdowns:
            out.append(f"  unclean shutdown: the writer stopped without closing after seq {u['after_seq']} "
                       f"({u['last_record']}) and restarted at {u['restarted']}; records of flows in that "
                       "window may be missing")
        for r in self.rotations:
            how = ("sealed by the old key" if r["sealed"] else
                   "recorded WITHOUT the old key (lost); the new key was taken from the keys given, not the log")
            out.append(f"  key rotation at seq {r['seq']} ({r['time']}): {r['old_key_id']} -> {r['new_key_id']}, "
                       f"{how}" + (f"; reason: {r['reason']}" if r.get("reason") else ""))
        out += [f"  note: {n}" for n in self.notes]
        if not self.ok:
            out.append(f"  error: {self.error}")
            out.append(f"  first broken place: {self.where} (seq {self.where_seq})")
        return "\n".join(out)


@dataclass
class _Line:
    path: str
    lineno: int
    raw: bytes
    torn: bool = False
    rec: dict | None = None
    seq: int | None = None
    hash: str = ""
    err: str = ""


def _parse(path: str, lineno: int, raw: bytes) -> _Line:
    item = _Line(path, lineno, raw)
    if not raw.endswith(b"\n"):
        item.torn = True
        return item
    line = raw[:-1]
    item.hash = line_hash(line)
    try:
        rec = json.loads(line)
    except ValueError as e:
        item.err = f"not JSON: {e}"
        return item
    if not isinstance(rec, dict) or type(rec.get("seq")) is not int or not isinstance(rec.get("prev"), str):
        item.err = "not an audit record (needs integer seq and prev)"
        return item
    item.rec, item.seq = rec, rec["seq"]
    return item


def _read(files: list[str], progress, total: int):
    done = 0
    for path in files:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                done += len(raw)
                if progress is not None:
                    progress(done, total)
                yield _parse(path, lineno, raw)


def _collect(path) -> tuple[list[str], list[str]]:
    """Audit files (chain order) and signed recordings below `path`."""
    if isinstance(path, (list, tuple)):
        return [str(p) for p in path], []
    if os.path.isdir(path):
        sigs = []
        for root, _dirs, names in os.walk(path):
            sigs += [os.path.join(root, n[:-4]) for n in names if n.endswith(".sig")]
        return list_audit_files(path), sorted(sigs)
    return [path], []


def _classify(item: _Line, prev: _Line, pprev_hash: str | None, nxt: _Line | None):
    """Name the break between `prev` (verified) and `item` (does not link)."""
    s, exp = item.seq, prev.seq + 1
    nseq = nxt.seq if nxt is not None else None
    nxt_links_prev = nseq == exp and nxt.rec["prev"] == prev.hash
    # A later record came early: the missing seq follows. If the next line links
    # straight to prev but not to this line, this line is more likely foreign.
    if s > exp and nseq is not None and exp <= nseq < s and not (
            nxt_links_prev and item.rec["prev"] != nxt.hash):
        return "reordered", item, f"seq {s} appears before seq {nseq}"
    if nxt_links_prev:
        return "inserted", item, f"extra record between seq {prev.seq} and {exp}"
    if s == exp:
        if nseq == exp:
            return "inserted", item, f"two records claim seq {exp}"
        return "edited", prev, f"record seq {prev.seq} was changed: its hash no longer matches prev of seq {s}"
    if s > exp:
        return "deleted", item, f"records seq {exp}..{s - 1} are missing before this line"
    if s == prev.seq:
        if item.rec["prev"] == pprev_hash:  # links to what preceded prev: prev is the extra one
            return "inserted", prev, f"extra record before the original seq {s}"
        return "inserted", item, f"duplicate seq {s}"
    return "reordered", item, f"seq {s} appears after seq {prev.seq}"


class _Keys:
    """Which key must sign the next checkpoint, following key_rotation records."""

    def __init__(self, ring: dict):
        self.given = dict(ring)   # what the operator supplied: trusted without the log's word
        self.ring = dict(ring)    # plus keys introduced by sealed rotations
        self.current: str | None = None  # key id of the last verified checkpoint
        self.pending: dict | None = None  # a key_rotation since the last checkpoint

    def rotation(self, rec: dict) -> str | None:
        """Check a key_rotation record where it appears; an error message or None."""
        if self.pending is not None:
            return "two key rotations without a checkpoint between them"
        new_id, raw = rec.get("new_key_id"), rec.get("new_public_key")
        try:
            pub = load_public_key(base64.b64decode(raw or "", validate=True))
        except (ValueError, TypeError):
            return "key_rotation record without a readable new public key"
        if key_id(pub) != new_id:
            return f"key_rotation names new key {new_id} but carries key {key_id(pub)}"
        if self.current is not None and rec.get("old_key_id") != self.current:
            return f"key_rotation from key {rec.get('old_key_id')}, but the log was signed by {self.current}"
        self.pending = {"rec": rec, "pub": pub}
        return None

    def signer(self, kid: str, checking: bool):
        """The public key a checkpoint by `kid` must verify with: (kind, message) on failure."""
        p = self.pending
        if p is not None and p["rec"].get("sealed") is not False:
            want = self.current if self.current is not None else p["rec"].get("old_key_id")
            if kid != want:
                return None, ("bad_signature", f"key rotation not sealed by the old key {want} "
                                               f"(checkpoint signed by {kid})")
        elif p is not None:  # lost: the new key seals it, and only a key the operator gave counts
            if kid != p["rec"].get("new_key_id"):
                return None, ("bad_signature", f"checkpoint after a rotation to {p['rec'].get('new_key_id')} "
                                               f"is signed by {kid}")
            if checking and kid not in self.given:
                return None, ("bad_signature", f"key rotation to {kid} was recorded without the old key: "
                                               "give its public key with --pubkey to trust it")
        elif self.current is not None and kid != self.current:
            return None, ("bad_signature", f"signed by key {kid}, but the log was signed by {self.current} "
                                           "and records no key rotation")
        if not checking:
            return None, None
        pub = self.ring.get(kid)
        if pub is None:
            known = ", ".join(sorted(self.ring)) or "-"
            return None, ("bad_signature", f"signed by key {kid}, verifying with key(s) {known}")
        return pub, None

    def checkpoint_done(self, kid: str) -> None:
        p, self.pending = self.pending, None
        if p is not None and p["rec"].get("sealed") is not False:
            self.current = p["rec"]["new_key_id"]
            self.ring.setdefault(self.current, p["pub"])
        else:
            self.current = kid


def _check_checkpoint(item: _Line, cp_first: int, first_cp_lenient: bool, keys: _Keys, checking: bool):
    rec = item.rec
    if not rec.get("sig") or not rec.get("key_id"):
        return "missing_signature", "checkpoint without signature"
    covers = rec.get("covers")
    if rec.get("head") != rec["prev"]:
        return "edited", "checkpoint head does not match the chain"
    if not (isinstance(covers, list) and len(covers) == 2 and covers[1] == item.seq - 1
            and (covers[0] == cp_first or (first_cp_lenient and covers[0] <= cp_first))):
        return "edited", f"checkpoint covers {covers}, chain says [{cp_first}, {item.seq - 1}]"
    if rec.get("file") != os.path.basename(item.path):
        return "edited", f"checkpoint sealed file {rec.get('file')}, found in {os.path.basename(item.path)}"
    pub, bad = keys.signer(rec["key_id"], checking)
    if bad is not None:
        return bad
    if pub is None:
        return None
    try:
        msg = checkpoint_message(item.seq, rec["head"], covers, rec["file"], rec.get("time", ""),
                                 rec.get("reason", ""), rec.get("every", 0))
        pub.verify(base64.b64decode(rec["sig"]), msg)
    except (InvalidSignature, ValueError, TypeError):
        return "bad_signature", "checkpoint signature does not verify"
    return None


def _recording_files(directory: str) -> list[str]:
    """Session recordings (and orphaned signatures) under `directory`, oldest first."""
    names = set()
    for n in os.listdir(directory):
        if n.endswith(".mitm"):
            names.add(n)
        elif n.endswith(".mitm.sig"):
            names.add(n[:-4])
    return [os.path.join(directory, n) for n in sorted(names)]


def verify_log(path, public_key=None, progress: Callable[[int, int], None] | None = None, *,
               live: bool = False, checkpoint_every: int | None = 1000,
               recordings: str | None = None) -> VerifyReport:
    """Verify a directory, one file, or an ordered list of files.

    `public_key` is one key (object, PEM bytes or path) or a list of them: the
    keyring. A path `<key>.pub` brings the retired keys rotation kept beside it.

    `checkpoint_every` is the unsigned-stretch limit until the first checkpoint;
    after that each checkpoint's own signed `every` applies. None disables it.
    `recordings` is a directory of session recordings: each must carry a valid
    signature (live: except the newest, still being written)."""
    files, recordings_signed = _collect(path)
    unsigned_ok = None
    if recordings:
        found = _recording_files(recordings)
        recordings_signed = sorted(set(recordings_signed) | set(found))
        if live and found and not os.path.exists(found[-1] + ".sig"):
            unsigned_ok = found[-1]
    rep = VerifyReport(files=files)
    if public_key is None:
        ring = {}
    else:
        ring = load_keyring(public_key if isinstance(public_key, (list, tuple)) else [public_key])
    keys = _Keys(ring)
    checking = rep.signatures_checked = bool(ring)
    total = sum(os.path.getsize(f) for f in files)

    lines = _read(files, progress, total)
    prev: _Line | None = None
    pprev_hash = None
    anchor: _Line | None = None
    vouched: set = set()
    cp_first, since_cp, every = 0, 0, checkpoint_every
    item = next(lines, None)
    while item is not None:
        nxt = next(lines, None)
        if item.torn:
            if live and nxt is None and item.path == files[-1]:
                rep.notes.append(f"ignored incomplete last line {item.path}:{item.lineno} (live log)")
                break
            return rep.fail("torn_tail", item, f"incomplete final line ({len(item.raw)} bytes), "
                                               "probably a crash mid-write; all earlier records verified")
        if item.rec is None:
            return rep.fail("bad_json", item, item.err)
        rec = item.rec
        if prev is None:
            if not (item.seq == 1 and rec["prev"] == GENESIS):
                anchor = item
            cp_first = item.seq
        elif item.seq != prev.seq + 1 or rec["prev"] != prev.hash:
            kind, where, msg = _classify(item, prev, pprev_hash, nxt if nxt and nxt.rec else None)
            return rep.fail(kind, where, msg)

        if rec.get("event") == "checkpoint":
            bad = _check_checkpoint(item, cp_first, anchor is not None and rep.checkpoints == 0, keys, checking)
            if bad:
                return rep.fail(bad[0], item, bad[1])
            keys.checkpoint_done(rec["key_id"])
            rep.checkpoints += 1
            cp_first, since_cp = item.seq + 1, 0
            every = rec.get("every") or every
        else:
            since_cp += 1
            if every and since_cp > every:
                return rep.fail("missing_signature", item,
                                f"{since_cp} records since the last checkpoint, at most {every} allowed")
            if rec.get("event") == "key_rotation":
                bad = keys.rotation(rec)
                if bad:
                    return rep.fail("bad_signature", item, bad)
                rep.rotations.append({"seq": item.seq, "time": rec.get("time"), "old_key_id": rec.get("old_key_id"),
                                      "new_key_id": rec.get("new_key_id"), "sealed": rec.get("sealed") is not False,
                                      "reason": rec.get("reason")})
            if rec.get("event") == "retention":
                vouched.add((rec.get("last_removed_seq"), rec.get("last_removed_hash")))
            if rec.get("event") == "audit_start" and rec.get("previous_clean_close") is False and prev is not None:
                rep.unclean_shutdowns.append({"after_seq": prev.seq, "last_record": prev.rec.get("time"),
                                              "restarted": rec.get("time"), "file": os.path.basename(item.path)})
            rep.records += 1
            if isinstance(rec.get("instance"), str):
                rep.instances.add(rec["instance"])
            ident = rec.get("identity")
            if isinstance(ident, dict):
                ident = ident.get("name") or ident.get("id")
            if isinstance(ident, str):
                rep.identities.add(ident)
        t = rec.get("time")
        if isinstance(t, str):
            rep.first_time = rep.first_time or t
            rep.last_time = t
        pprev_hash = prev.hash if prev else None
        prev, rep.last_seq = item, item.seq
        item = nxt

    if prev is None:
        return rep.fail("truncated", None, "no audit records found")
    if anchor is not None and (anchor.seq - 1, anchor.rec["prev"]) not in vouched:
        return rep.fail("deleted", anchor, f"log starts at seq {anchor.seq} and no retention record "
                                           "accounts for the earlier records")
    if anchor is not None:
        rep.notes.append(f"chain anchored at seq {anchor.seq} by a retention record")
    closed = prev.rec.get("event") == "checkpoint" and prev.rec.get("reason") == "close"
    if not closed:
        if not live:
            return rep.fail("truncated", prev, "log does not end with the checkpoint signed at close "
                                               "(records removed from the end, or the writer is still "
                                               "running/crashed: use live mode)")
        rep.notes.append(f"{since_cp} records after the last checkpoint are not signed yet (live)")

    for rpath in recordings_signed:
        if rpath == unsigned_ok:
            rep.notes.append(f"recording {os.path.basename(rpath)} is still being written (live): not signed yet")
            continue
        ok, reason = verify_file(rpath, keys.ring) if checking else (None, "not checked (no public key)")
        rep.recordings.append((rpath, ok, reason))
        if ok is False and rep.ok:
            rep.ok, rep.error, rep.where = False, f"recording {rpath}: {reason}", rpath
            rep.kind = "edited" if "content" in reason else (
                "missing_signature" if "missing .sig" in reason else
                "deleted" if "missing" in reason else "bad_signature")
    return rep


@dataclass
class InstancesReport:
    """Several gateway instances' chains (one audit directory each), each verified on its own."""

    chains: list  # (directory, VerifyReport)
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for _, r in self.chains)

    @property
    def span(self) -> tuple[str | None, str | None]:
        firsts = [r.first_time for _, r in self.chains if r.first_time]
        lasts = [r.last_time for _, r in self.chains if r.last_time]
        return (min(firsts) if firsts else None, max(lasts) if lasts else None)

    def summary(self) -> str:
        out = []
        for directory, rep in self.chains:
            out.append(f"== {directory}")
            out.append(rep.summary())
        bad = [d for d, r in self.chains if not r.ok]
        first, last = self.span
        out.append(f"instances: {len(self.chains)} chains, {len(self.chains) - len(bad)} OK"
                   + (f", FAILED: {', '.join(bad)}" if bad else ""))
        out.append(f"  records: {sum(r.records for _, r in self.chains)}  merged time range: {first} .. {last}")
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)


def verify_instances(directories: list[str], public_key=None, *, live: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> InstancesReport:
    """Verify each instance's chain separately (they are independent chains) and merge their spans.

    public_key: as for verify_log, the keyring every chain is checked against (each instance's key)."""
    chains = [(d, verify_log(d, public_key, progress, live=live)) for d in directories]
    rep = InstancesReport(chains)
    seen: dict[str, str] = {}
    for d, r in chains:
        if len(r.instances) > 1:
            rep.notes.append(f"{d} holds records of several instances ({', '.join(sorted(r.instances))})")
        for name in r.instances:
            if name in seen and seen[name] != d:
                rep.notes.append(f"instance {name} appears in both {seen[name]} and {d}: a copied directory?")
            seen.setdefault(name, d)
    return rep
