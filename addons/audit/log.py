"""Tamper-evident audit log writer (PCI DSS 10.2, 10.3, 10.5.1, 10.7.2).

Plain module, no mitmproxy dependency. The verifier lives in `auditverify`.

Format: one compact JSON object per line, keys sorted, UTF-8. The writer adds
`seq` (1, 2, ... across all files), `prev` (hex SHA-256 of the previous line's
exact bytes without the newline; 64 zeros for the very first record) and `time`
(UTC, ms, "Z") when the caller gave none. The chain runs across rotated files.

Checkpoints are ordinary chained records `{"event": "checkpoint", "covers":
[first, last], "head": <hash of record `last`>, "file", "time", "reason",
"every", "sig", "key_id"}`, written every `checkpoint_every` records, every
`checkpoint_interval` seconds (if anything was written since), as the last record
of a file before rotation ("rotate") and at close ("close"). `sig` is Ed25519
over `checkpoint_message(...)`. Signing the head seals every earlier line, since
each line's hash is inside the next line.

Failure detection (what really fails, and how it is seen):
  * ENOSPC / EIO / EROFS / EACCES from open, write or fsync -> OSError -> failed.
  * fsync failure: Linux may drop the dirty pages, so after any failure the file
    is reopened, truncated to the last offset known to be fsynced, and the whole
    backlog is rewritten from memory (also repairs partial writes).
  * Audit dir renamed/removed/replaced (lost mount, `mv`): writes to an open fd
    would still "succeed", so every batch stats the dir and compares
    (st_dev, st_ino) with the one seen at start, and checks that the open file is
    still linked at its path. Recovery needs the same directory back; an empty
    replacement is refused (it would silently restart the evidence elsewhere).
  * A file that shrank below its fsynced size (durable records lost or removed)
    keeps the writer failed: it fails closed, an operator must look.
Checks run once per batch, so a rename racing a batch may land that batch in the
renamed directory; nothing is lost, it is just there.

Outages cost bounded space and memory:
  * While writing fails, refusal records (the 503s the gateway sends because the
    trail is down, and any other refusal) are not queued one by one: they are
    counted per (code, identity) and written as one `refusals_coalesced` record
    when writing recovers. So recovery never needs more space than the outage
    produced before it, and the backlog holds only records of delivered traffic.
  * A reserve file (`.reserve`, `reserve_bytes`, preallocated) is released when
    the disk is full, so the records already acknowledged to clients and the
    outage's own records can still be written. The writer stays failed (the
    gateway refuses traffic) until free space is back above twice the reserve;
    then the reserve is taken again and `audit_recovered` is written.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import fcntl
import hashlib
import heapq
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pangate.common.loopfutures import settle
from pangate.audit.keys import key_id, public_raw
from pangate.common.files import write_atomic
from pangate.sinks.scrubber import SinkScrubber, default as default_scrubber, generated_id

log = logging.getLogger("pangate.audit.addon")

GENESIS = "0" * 64
FILE_RE = re.compile(r"^audit-(\d{8})-(\d{4,})\.jsonl$")
# Keys the gateway must never log. Matched case-insensitively, "_" == "-".
FORBIDDEN_KEYS = frozenset({"token", "authorization", "proxy-authorization", "password", "secret"})
# Written only by the writer; a caller using them would confuse the verifier.
RESERVED_EVENTS = frozenset({"checkpoint", "retention", "audit_start", "audit_stop", "audit_recovered",
                             "refusals_coalesced", "key_rotation"})
RESERVE = ".reserve"
MAX_COALESCED_KEYS = 1000  # (code, identity) pairs kept apart during one outage; the rest are pooled


def refusal_key(record: dict) -> tuple | None:
    """The coalescing key of a refusal record, or None for a record that must be kept whole."""
    if record.get("outcome") not in ("unavailable", "denied", "token_refused", "refused"):
        return None
    ident = record.get("identity")
    if isinstance(ident, dict):
        ident = ident.get("name")
    return (str(record.get("code")), str(ident) if ident is not None else None)


class AuditError(RuntimeError):
    """The log cannot be opened/continued safely."""


class AuditClosed(AuditError):
    pass


class AuditLocked(AuditError):
    """Another writer holds the audit directory: one chain per instance, one writer per chain."""


LOCK_FILE = ".lock"


def lock_directory(directory: str, instance: str | None) -> int:
    """Take the directory's exclusive lock (released when the fd closes, or the process dies).

    Two writers on one directory would fork its hash chain; the second one is
    refused, told which process holds it."""
    path = os.path.join(directory, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            holder = {}
        os.close(fd)
        who = f"pid {holder.get('pid', '?')}" + (f", instance {holder['instance']}" if holder.get("instance") else "")
        raise AuditLocked(f"the audit directory {directory} is in use by another writer ({who}): each gateway "
                          "instance needs its own pangate_audit_dir") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "instance": instance}).encode() + b"\n", 0)
    return fd


class AuditBacklogFull(AuditError):
    """Writing has failed long enough that the in-memory backlog is full."""


# ---------------------------------------------------------------- format helpers

# One prebuilt encoder: json.dumps() with non-default options builds a new
# encoder per call, which was a third of append()'s cost.
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def dumps_line(rec: dict) -> bytes:
    return _encode(rec).encode("utf-8")


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


_sec_cache = (None, "", "")  # (whole second, "YYYY-mm-ddTHH:MM:SS", "YYYYmmdd"): strftime is slow


def _second(t: float):
    global _sec_cache
    sec = int(t)
    c = _sec_cache
    if c[0] != sec:
        g = time.gmtime(sec)
        c = _sec_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", g), time.strftime("%Y%m%d", g))
    return c


def utc_iso(t: float) -> str:
    return "%s.%03dZ" % (_second(t)[1], int(t * 1000) % 1000)


def utc_day(t: float) -> str:
    return _second(t)[2]


def file_sort_key(name: str):
    m = FILE_RE.match(os.path.basename(name))
    return (m.group(1), int(m.group(2))) if m else ("", 0)


def list_audit_files(directory: str) -> list[str]:
    """Audit files in chain order (day, then number; not plain string order)."""
    names = [n for n in os.listdir(directory) if FILE_RE.match(n)]
    return [os.path.join(directory, n) for n in sorted(names, key=file_sort_key)]


def checkpoint_message(seq: int, head: str, covers, file: str, time_: str, reason: str, every: int) -> bytes:
    # Line-based text rather than JSON: unambiguous without relying on any JSON
    # serializer's choices, and the domain prefix stops cross-protocol reuse.
    return (f"pangate-audit-checkpoint/1\nseq={seq}\nhead={head}\ncovers={covers[0]}-{covers[1]}\n"
            f"file={file}\ntime={time_}\nreason={reason}\nevery={every}\n").encode()


_ok_keys: set = set()  # keys already found harmless; records reuse a small vocabulary


def check_record(rec, _depth: int = 0) -> None:
    """Raise ValueError if a forbidden key appears at any depth."""
    if _depth > 32:
        raise ValueError("audit record nested too deeply")
    if isinstance(rec, dict):
        for k, v in rec.items():
            if k not in _ok_keys:
                if isinstance(k, str) and k.lower().replace("_", "-") in FORBIDDEN_KEYS:
                    raise ValueError(f"audit record must not contain a {k!r} field")
                if len(_ok_keys) < 4096:
                    _ok_keys.add(k)
            if isinstance(v, (dict, list, tuple)):
                check_record(v, _depth + 1)
    elif isinstance(rec, (list, tuple)):
        for v in rec:
            if isinstance(v, (dict, list, tuple)):
                check_record(v, _depth + 1)


# Written by the writer from its own hashes and signatures, never from what it was given.
WRITER_OWNED = frozenset({"seq", "prev", "head", "sig", "key_id", "covers", "last_removed_hash"})


def scrub_record(rec, scrubber: SinkScrubber, _depth: int = 0, _skip=frozenset()):
    """A copy of rec with every string (keys included, at any depth) passed through the sink
    scrubber. Only strings are touched: numbers, booleans and None are returned as they are.

    This runs for every record on the event loop, so the common case is inlined: a string the
    scrubber already found clean (records reuse a small vocabulary) costs one set lookup."""
    clean, text = scrubber.known_clean(), scrubber.text
    t = type(rec)
    if t is dict:
        out = {}
        for k, v in rec.items():
            if k in _skip:
                out[k] = v
                continue
            tv = type(v)
            if tv is str:
                if v not in clean and not generated_id(k, v):
                    v = text(v)
            elif not (tv is int or tv is float or tv is bool or v is None):
                v = scrub_record(v, scrubber, _depth + 1)
            out[k if k in clean or type(k) is not str else text(k)] = v
        return out
    if t is list or t is tuple:
        return [scrub_record(v, scrubber, _depth + 1) for v in rec]
    if isinstance(rec, str):
        return text(str(rec))
    if isinstance(rec, (bytes, bytearray)):  # not JSON: recorded as the scrubbed text it holds
        return text(bytes(rec).decode("utf-8", "replace"))
    if isinstance(rec, dict):
        return scrub_record(dict(rec), scrubber, _depth)
    if isinstance(rec, (list, tuple)):
        return scrub_record(list(rec), scrubber, _depth)
    return rec


def scrub_line(line: bytes, scrubber: SinkScrubber | None = None) -> bytes:
    """An audit line as it may leave for a collector: its records scrubbed again (they were at
    append; this is the export's own wall). The same bytes unless something had to change, so a
    collector can still verify the chain; a line that is not a record is not sent as it is."""
    scrubber = scrubber or default_scrubber()
    try:
        rec = json.loads(line)
    except ValueError:
        return scrubber.data(line)
    if not isinstance(rec, dict):
        return scrubber.data(line)
    clean = scrub_record(rec, scrubber, _skip=WRITER_OWNED)
    return line if clean == rec else dumps_line(clean)


def iter_lines_reverse(path: str, chunk: int = 1 << 20):
    """Complete lines (without newline) from the end; a torn tail is skipped."""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        buf, tail_cut = b"", False
        while pos > 0:
            n = min(chunk, pos)
            pos -= n
            f.seek(pos)
            buf = f.read(n) + buf
            if not tail_cut:
                i = buf.rfind(b"\n")
                if i < 0:
                    continue
                buf, tail_cut = buf[:i], True  # drop what follows the last newline
            parts = buf.split(b"\n")
            buf = parts[0]  # may continue in the previous chunk
            yield from reversed(parts[1:])
        if tail_cut and buf:
            yield buf


# ---------------------------------------------------------------- writer

class FileOps:
    """The OS calls the writer thread uses; tests subclass it to inject faults."""
    open = staticmethod(os.open)
    write = staticmethod(os.write)
    fsync = staticmethod(os.fsync)
    close = staticmethod(os.close)
    ftruncate = staticmethod(os.ftruncate)
    fstat = staticmethod(os.fstat)
    stat = staticmethod(os.stat)
    unlink = staticmethod(os.unlink)
    statvfs = staticmethod(os.statvfs)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AuditWriter:
    """Thread-safe append-only writer with group commit, checkpoints and rotation.

    append() only serialises, hashes and queues (a few µs under a lock: seq and
    prev must be assigned in order). One background thread writes and fsyncs.
    """

    BATCH_MAX = 8192

    def __init__(self, directory: str, signing_key: Ed25519PrivateKey, *,
                 checkpoint_every: int = 1000, checkpoint_interval: float = 10.0,
                 max_file_bytes: int = 64 << 20, retention_days: int = 365,
                 fsync: bool = True, flush_delay: float = 0.05, max_backlog: int = 100_000,
                 retry_interval: float = 0.5, reserve_bytes: int = 1 << 20,
                 coalesce: Callable[[dict], tuple | None] | None = refusal_key,
                 on_state_change: Callable[[bool, str], None] | None = None,
                 clock: Callable[[], float] = time.time, fileops: FileOps | None = None,
                 scrubber: SinkScrubber | None = None, instance: str | None = None):
        self.directory = os.path.abspath(directory)
        self.instance = instance  # named in every record: one chain per gateway instance
        self._key = signing_key
        self._key_id = key_id(signing_key.public_key())
        self._every = checkpoint_every
        self._interval = checkpoint_interval
        self._max_bytes = max_file_bytes
        self._retention_days = retention_days
        self._do_fsync = fsync
        self._flush_delay = flush_delay
        self._max_backlog = max_backlog
        self._retry_interval = retry_interval
        self._on_state_change = on_state_change
        self._clock = clock
        self._ops = fileops or FileOps()
        self._scrubber = scrubber or default_scrubber()  # every record passes it before it is hashed
        self._reserve_bytes = reserve_bytes
        self._coalesce = coalesce
        self._coalesced: dict[tuple, list] = {}  # key -> [count, first time, last time]
        self._low_space = False

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)      # writer thread waits here
        self._durable_cv = threading.Condition(self._lock)  # wait_durable() waits here
        self._pending: list[tuple[int, bytes, str]] = []  # (seq, line+\n, file name)
        self._first_pending = 0.0
        self._urgent = False
        self._idle = False
        self._stopping = False
        self._abandon = False
        self._closed = False
        self._durable_seq = 0
        self._async_waiters: list = []
        self._tie = itertools.count()
        self._failure: str | None = None
        self._failed_since = 0.0
        self._last_attempt = 0.0

        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        self._lock_fd = lock_directory(self.directory, instance)
        try:
            st = os.stat(self.directory)
            self._dir_id = (st.st_dev, st.st_ino)
            start_info = self._recover_state()
            self._take_reserve()
        except BaseException:
            os.close(self._lock_fd)  # a writer that did not start holds nothing
            raise
        self._last_cp_mono = time.monotonic()
        self._fd: int | None = None
        self._thread = threading.Thread(target=self._run, name="pangate-audit-writer", daemon=True)
        self._thread.start()
        self._append_internal({"event": "audit_start", "pid": os.getpid(), **start_info})

    # -- startup ---------------------------------------------------------------

    def _recover_state(self) -> dict:
        """Find seq/prev/checkpoint state from the newest files; set aside a torn tail."""
        files = list_audit_files(self.directory)
        info: dict = {}
        self._seq, self._head = 0, GENESIS
        self._cp_first, self._since_cp = 1, 0
        self._cur_file = None
        self._cur_day, self._cur_n, self._cur_size = "", 0, 0
        self._dur_name, self._dur_off = None, 0
        self._dir_synced = None
        if not files:
            return info
        newest = files[-1]
        size = os.path.getsize(newest)
        with open(newest, "rb") as f:
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
        if tail and not tail.endswith(b"\n"):
            cut = size - (len(tail) - tail.rfind(b"\n") - 1) if b"\n" in tail else (
                0 if size <= len(tail) else None)
            if cut is None:
                raise AuditError(f"{newest}: last line longer than 1 MiB and incomplete")
            aside = f"{newest}.torn-{utc_day(time.time())}-{time.time_ns()}"
            with open(newest, "rb") as f:
                f.seek(cut)
                write_atomic(aside, f.read(), 0o640)
            with open(newest, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
            info["torn_tail"] = {"file": os.path.basename(newest), "bytes": size - cut,
                                 "moved_to": os.path.basename(aside)}
            log.warning("audit: torn final line in %s (%d bytes) moved to %s", newest, size - cut, aside)
            size = cut
        name = os.path.basename(newest)
        m = FILE_RE.match(name)
        self._cur_file, self._cur_day, self._cur_n, self._cur_size = name, m.group(1), int(m.group(2)), size
        self._dur_name, self._dur_off = name, size
        self._dir_synced = name  # existed before we started: no retention pass for it

        last = last_cp = oldest_line = None
        for path in reversed(files):
            for line in iter_lines_reverse(path):
                oldest_line = line
                if last is None:
                    last = line
                if b'"event":"checkpoint"' in line:
                    last_cp = line
                    break
            if last_cp is not None:
                break
        if last is None:
            return info
        try:
            last_rec = json.loads(last)
            self._seq, self._head = int(last_rec["seq"]), line_hash(last)
            if last_cp is not None:
                self._cp_first = int(json.loads(last_cp)["seq"]) + 1
            else:
                self._cp_first = int(json.loads(oldest_line)["seq"])
        except (ValueError, KeyError, TypeError) as e:
            raise AuditError(f"cannot continue the audit chain, last record unreadable: {e}") from None
        self._since_cp = self._seq - self._cp_first + 1
        info["previous_clean_close"] = last_rec.get("event") == "checkpoint" and last_rec.get("reason") == "close"
        return info

    # -- public API ----------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._failure is None

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, record: dict) -> int:
        """Queue one record; return its seq. Raises ValueError for forbidden or
        writer-owned fields, AuditBacklogFull / AuditClosed when it cannot accept."""
        return self.add(record)[0]

    def add(self, record: dict) -> tuple[int, dict]:
        """append(), also returning the record as written (scrubbed): what a log line may quote.

        Every record, whoever built it (flows, events, alerts), passes the sink scrubber
        here, before it is hashed: this is the one way into the trail."""
        check_record(record)
        if "seq" in record or "prev" in record:
            raise ValueError("seq and prev are assigned by the audit writer")
        if record.get("event") in RESERVED_EVENTS:
            raise ValueError(f"event {record.get('event')!r} is reserved for the audit writer")
        rec = scrub_record(record, self._scrubber)
        with self._lock:
            if self._stopping:
                raise AuditClosed("audit writer is closed")
            if self._failure is not None and self._coalesce is not None:
                key = self._coalesce(rec)
                if key is not None:
                    self._count_refusal_locked(key)
                    return 0, rec
            if len(self._pending) >= self._max_backlog:
                raise AuditBacklogFull(f"audit backlog full ({len(self._pending)} records unwritten): {self._failure}")
            seq = self._append_locked(rec)
            if self._failure is not None:
                self._urgent = True  # retry writing on each append while failed
                self._wake.notify()
            elif self._idle:
                self._wake.notify()
            return seq, rec

    @property
    def key_id(self) -> str:
        return self._key_id

    def rotate_key(self, new_key: Ed25519PrivateKey, *, reason: str = "", lost: bool = False,
                   old_key_id: str | None = None) -> int:
        """Record a change of signing key and sign with `new_key` from now on; returns the record's seq.

        Normally the `key_rotation` record (old and new key ids, the new public key) is
        sealed at once by a checkpoint signed with the OLD key, so the verifier can
        trust the new key on the old one's word. `lost=True` is for an old key that is
        gone: the writer was opened with the new key already, `old_key_id` names the
        lost one, and the record is sealed only by the new key, which the verifier
        then needs from the operator."""
        new_id = key_id(new_key.public_key())
        rec = {"event": "key_rotation", "old_key_id": old_key_id if lost else self._key_id,
               "new_key_id": new_id, "new_public_key": public_raw(new_key.public_key()),
               "sealed": not lost, "reason": reason}
        with self._lock:
            if self._stopping:
                raise AuditClosed("audit writer is closed")
            if lost and new_id != self._key_id:
                raise ValueError("a rotation without the old key needs the writer opened with the new key")
            seq = self._append_locked(rec)
            if not lost:
                self._checkpoint_locked("key_rotation")
            self._key, self._key_id = new_key, new_id
            self._urgent = True
            self._wake.notify()
        return seq

    def wait_durable(self, seq: int, timeout: float | None = None) -> bool:
        """Block until record `seq` is written (and fsynced if fsync=True)."""
        with self._lock:
            if self._durable_seq >= seq:
                return True
            self._urgent = True  # someone is waiting: don't sit out flush_delay
            self._wake.notify()
            return self._durable_cv.wait_for(lambda: self._durable_seq >= seq or self._abandon, timeout) \
                and self._durable_seq >= seq

    async def adurable(self, seq: int, timeout: float | None = None) -> bool:
        """Await durability without blocking the event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._durable_seq >= seq:
                return True
            if self._abandon:
                return False
            fut = loop.create_future()
            heapq.heappush(self._async_waiters, (seq, next(self._tie), loop, fut))
            self._urgent = True
            self._wake.notify()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False

    def close(self, timeout: float = 10.0) -> bool:
        """Write audit_stop and a final signed checkpoint, flush, stop the thread.
        Returns False if records could not be written within `timeout` (they are lost)."""
        self._flush_coalesced()  # an outage still open at stop is accounted for too
        with self._lock:
            if self._stopping:
                return self._durable_seq >= self._seq
            self._append_locked({"event": "audit_stop"})
            self._checkpoint_locked("close")
            self._stopping = True
            self._urgent = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._lock:
                self._abandon = True
                self._wake.notify()
            self._thread.join(2)
        ok = self._durable_seq >= self._seq
        if not ok:
            log.error("audit: closed with %d records unwritten: %s", self._seq - self._durable_seq, self._failure)
        if self._lock_fd is not None and not self._thread.is_alive():
            os.close(self._lock_fd)  # the next writer of this directory may start
            self._lock_fd = None
        return ok

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- chain (caller holds self._lock) -------------------------------------------------

    def _count_refusal_locked(self, key: tuple) -> None:
        if key not in self._coalesced and len(self._coalesced) >= MAX_COALESCED_KEYS:
            key = ("*", "*")
        now = self._clock()
        entry = self._coalesced.get(key)
        if entry is None:
            self._coalesced[key] = [1, now, now]
        else:
            entry[0] += 1
            entry[2] = now

    def _flush_coalesced(self) -> None:
        with self._lock:
            counts, self._coalesced = self._coalesced, {}
        if not counts:
            return
        rows = [{"code": k[0], "identity": k[1], "count": v[0], "first": utc_iso(v[1]), "last": utc_iso(v[2])}
                for k, v in sorted(counts.items(), key=lambda kv: -kv[1][0])]
        self._append_internal({"event": "refusals_coalesced", "total": sum(r["count"] for r in rows),
                               "refusals": rows})

    def _append_internal(self, rec: dict) -> int:
        rec = scrub_record(rec, self._scrubber, _skip=WRITER_OWNED)  # reasons quote paths, OS messages
        with self._lock:
            seq = self._append_locked(rec)
            if self._stopping:  # e.g. audit_recovered during close: the log must still end sealed
                self._checkpoint_locked("close")
            return seq

    def _append_locked(self, rec: dict) -> int:
        now = self._clock()
        self._route_locked(now)
        if "time" not in rec:
            rec["time"] = utc_iso(now)
        seq = self._emit_locked(rec)
        self._since_cp += 1
        if self._since_cp >= self._every:
            self._checkpoint_locked("count")
        return seq

    def _route_locked(self, now: float) -> None:
        day = utc_day(now)
        if self._cur_file is not None and not (day > self._cur_day or self._cur_size >= self._max_bytes):
            return
        if self._cur_file is not None and self._since_cp:
            self._checkpoint_locked("rotate")  # seal the old file so it verifies on its own
        # A clock that went backwards must not make us reuse an older file name.
        if day > self._cur_day:
            self._cur_day, self._cur_n = day, 1
        else:
            self._cur_n += 1
        self._cur_file = f"audit-{self._cur_day}-{self._cur_n:04d}.jsonl"
        self._cur_size = 0

    def _emit_locked(self, rec: dict) -> int:
        if self.instance is not None:
            rec.setdefault("instance", self.instance)
        seq = self._seq + 1
        rec["seq"], rec["prev"] = seq, self._head
        line = dumps_line(rec)
        self._head, self._seq = line_hash(line), seq
        line += b"\n"
        self._cur_size += len(line)
        if not self._pending:
            self._first_pending = time.monotonic()
        self._pending.append((seq, line, self._cur_file))
        return seq

    def _checkpoint_locked(self, reason: str) -> None:
        if not self._since_cp:
            return
        seq, covers, t = self._seq + 1, [self._cp_first, self._seq], utc_iso(self._clock())
        msg = checkpoint_message(seq, self._head, covers, self._cur_file, t, reason, self._every)
        self._emit_locked({"event": "checkpoint", "covers": covers, "head": self._head,
                           "file": self._cur_file, "time": t, "reason": reason, "every": self._every,
                           "key_id": self._key_id, "sig": base64.b64encode(self._key.sign(msg)).decode()})
        self._cp_first, self._since_cp = seq + 1, 0
        self._last_cp_mono = time.monotonic()

    # -- writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except Exception:  # a bug here must not kill auditing silently
            log.exception("audit writer thread crashed")
            self._set_failure("writer thread crashed")
        finally:
            with self._lock:
                self._abandon = True
                self._durable_cv.notify_all()
                waiters, self._async_waiters = self._async_waiters, []
            for _, _, loop, fut in waiters:
                settle(loop, fut, False)
            if self._fd is not None:
                self._close_fd()

    def _step(self) -> bool:
        """Wait for work, then write one batch. Returns False when the thread should exit."""
        probe_space = False
        with self._lock:
            if self._abandon:
                return False
            now = time.monotonic()
            if self._since_cp and not self._stopping and now - self._last_cp_mono >= self._interval:
                self._checkpoint_locked("interval")
            if not self._pending:
                if self._stopping:
                    return False
                if self._failure is not None and self._low_space:
                    # Nothing left to write, but still failed for want of space: poll for it.
                    self._wake.wait(self._retry_interval)
                    probe_space = True
                else:
                    self._idle = True
                    left = self._last_cp_mono + self._interval - now if self._since_cp else 1.0
                    self._wake.wait(max(0.001, min(left, 1.0)))
                    self._idle = False
                    return True
        if probe_space:
            if self._failure is not None and not self._pending and self._space_back():
                self._take_reserve()
                self._recovered()
            return True
        with self._lock:
            if not self._pending:
                return True
            if self._failure is not None:
                left = self._last_attempt + self._retry_interval - now
                if left > 0 and not self._urgent:
                    self._wake.wait(left)
                    return True
            elif not (self._urgent or self._stopping or len(self._pending) >= self.BATCH_MAX):
                left = self._first_pending + self._flush_delay - now
                if left > 0:
                    self._wake.wait(left)
                    return True
            self._urgent = False
            batch = self._pending[:self.BATCH_MAX]
        self._write_batch(batch)
        return True

    def _write_batch(self, batch) -> None:
        self._last_attempt = time.monotonic()
        try:
            self._check_dir()
            i = 0
            while i < len(batch):
                name = batch[i][2]
                j = i
                while j < len(batch) and batch[j][2] == name:
                    j += 1
                self._ensure_open(name)
                data = b"".join(e[1] for e in batch[i:j])
                view = memoryview(data)
                while view:  # os.write may write less than asked
                    view = view[self._ops.write(self._fd, view):]
                if self._do_fsync:
                    self._ops.fsync(self._fd)
                self._dur_off += len(data)
                self._commit(batch[j - 1][0], j - i)
                i = j
        except OSError as e:
            self._close_fd()
            self._set_failure(f"{type(e).__name__}: {e}")
            if e.errno == errno.ENOSPC and self._release_reserve():
                self._urgent = True  # retry at once into the released space
            return
        if self._failure is not None:
            if self._low_space and not self._space_back():
                return  # written into the reserve; stay failed until the disk has room again
            self._take_reserve()
            self._recovered()

    def _check_dir(self) -> None:
        st = self._ops.stat(self.directory)
        if (st.st_dev, st.st_ino) != self._dir_id:
            raise OSError(errno.ESTALE, "audit directory was replaced (not the one opened at start)", self.directory)
        if self._fd is not None:
            fst = self._ops.fstat(self._fd)
            path = os.path.join(self.directory, self._dur_name)
            if fst.st_nlink == 0:
                raise OSError(errno.ESTALE, "open audit file was deleted", path)
            pst = self._ops.stat(path)
            if (pst.st_dev, pst.st_ino) != (fst.st_dev, fst.st_ino):
                raise OSError(errno.ESTALE, "open audit file was replaced", path)

    def _ensure_open(self, name: str) -> None:
        if self._fd is not None and self._dur_name == name:
            return
        if self._fd is not None:
            self._close_fd()
        if name != self._dur_name:
            self._dur_name, self._dur_off = name, 0
        path = os.path.join(self.directory, name)
        self._fd = self._ops.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        size = self._ops.fstat(self._fd).st_size
        if size < self._dur_off:
            raise OSError(errno.EIO, f"audit file shrank from {self._dur_off} to {size} bytes: "
                                     "durable records lost or removed", path)
        if size > self._dur_off:  # leftovers of a failed write/fsync; rewritten from memory
            self._ops.ftruncate(self._fd, self._dur_off)
        if self._dir_synced != name:
            _fsync_dir(self.directory)  # make the new directory entry itself durable
            self._dir_synced = name
            self._apply_retention(name)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                self._ops.close(fd)
            except OSError:
                pass

    def _commit(self, seq: int, n: int) -> None:
        with self._lock:
            del self._pending[:n]
            self._durable_seq = seq
            self._durable_cv.notify_all()
            done = []
            while self._async_waiters and self._async_waiters[0][0] <= seq:
                done.append(heapq.heappop(self._async_waiters))
        for _, _, loop, fut in done:
            settle(loop, fut, True)

    def _apply_retention(self, current: str) -> None:
        """On opening a new file: delete whole files older than retention_days (a
        prefix of the chain) and record what went, so the verifier can anchor."""
        cutoff = utc_day(self._clock() - self._retention_days * 86400)
        files = list_audit_files(self.directory)
        old = []
        for path in files:
            name = os.path.basename(path)
            if name == current or file_sort_key(name)[0] >= cutoff:
                break
            old.append(path)
        if not old:
            return
        try:
            last = next(iter_lines_reverse(old[-1]), None)
            last_seq = json.loads(last)["seq"] if last else None
            for path in old:
                self._ops.unlink(path)
            _fsync_dir(self.directory)
        except (OSError, ValueError, KeyError) as e:
            log.error("audit retention failed: %s", e)  # keeping too much is the safe failure
            return
        self._append_internal({"event": "retention", "removed": [os.path.basename(p) for p in old],
                               "retention_days": self._retention_days, "last_removed_seq": last_seq,
                               "last_removed_hash": line_hash(last) if last else None})

    # -- reserve --------------------------------------------------------------------------

    def _reserve_path(self) -> str:
        return os.path.join(self.directory, RESERVE)

    def _take_reserve(self) -> None:
        if self._reserve_bytes <= 0:
            return
        path = self._reserve_path()
        try:
            if os.path.exists(path) and os.path.getsize(path) >= self._reserve_bytes:
                self._low_space = False
                return
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self._reserve_bytes)
            finally:
                os.close(fd)
            self._low_space = False
        except OSError as e:
            log.warning("audit: cannot keep a %d-byte reserve in %s: %s", self._reserve_bytes, self.directory, e)

    def _release_reserve(self) -> bool:
        self._low_space = True
        try:
            os.unlink(self._reserve_path())
            log.error("audit: disk full; released the reserve to write what clients were already answered")
            return True
        except OSError:
            return False

    def _space_back(self) -> bool:
        try:
            st = self._ops.statvfs(self.directory)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= 2 * self._reserve_bytes

    # -- health -------------------------------------------------------------------------

    def _set_failure(self, reason: str) -> None:
        with self._lock:
            first = self._failure is None
            self._failure = reason
            if first:
                self._failed_since = self._clock()
        if first:
            self._notify_state(False, reason)
            log.error("audit log writing failed: %s", reason)

    def _recovered(self) -> None:
        with self._lock:
            reason, self._failure = self._failure, None
            since = self._failed_since
        self._flush_coalesced()
        # The outage itself is audit-worthy (10.7.2): when, why, how long.
        self._append_internal({"event": "audit_recovered", "failure": reason,
                               "failed_since": utc_iso(since), "outage_s": round(self._clock() - since, 3)})
        self._notify_state(True, f"recovered from: {reason}")
        log.warning("audit log writing recovered after: %s", reason)  # after the state: tests wait on it

    def _notify_state(self, healthy: bool, reason: str) -> None:
        if self._on_state_change is not None:
            try:
                self._on_state_change(healthy, reason)
            except Exception:
                log.exception("audit on_state_change callback failed")


