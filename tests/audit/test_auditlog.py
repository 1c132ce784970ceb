"""Tests for the tamper-evident audit log (pangate.audit.log / pangate.audit.verify)."""

import asyncio
import base64
import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pangate.audit.keys import load_or_create_signing_key, sign_file, verify_file
from pangate.audit.log import (GENESIS, AuditBacklogFull, AuditWriter, FileOps, dumps_line, line_hash,
                              list_audit_files)
from pangate.audit.verify import verify_log
from pangate.cli.main import main as pangate_main

DAY = 86400.0
T0 = 1_750_000_000.0  # 2025-06-15


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def pub(key):
    return key.public_key()


class Clock:
    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


def make(d, key, **kw):
    kw.setdefault("flush_delay", 0.005)
    return AuditWriter(str(d), key, **kw)


def write_log(d, key, n=20, **kw):
    w = make(d, key, **kw)
    for i in range(n):
        w.append({"event": "request", "identity": f"svc-{i % 3}", "outcome": "allow", "i": i})
    assert w.close()
    return list_audit_files(str(d))


def read_lines(path):
    with open(path, "rb") as f:
        return f.read().split(b"\n")[:-1]


def write_lines(path, lines):
    with open(path, "wb") as f:
        f.write(b"".join(l + b"\n" for l in lines))


def all_records(d):
    return [json.loads(l) for f in list_audit_files(str(d)) for l in read_lines(f)]


def line_of(lines, seq):
    return next(i for i, l in enumerate(lines) if json.loads(l)["seq"] == seq)


# ---------------------------------------------------------------- format, chain, checkpoints

def test_chain_checkpoints_and_format(tmp_path, key, pub):
    [f] = write_log(tmp_path, key, n=25, checkpoint_every=10)
    lines = read_lines(f)
    recs = [json.loads(l) for l in lines]
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert recs[0]["prev"] == GENESIS and recs[0]["event"] == "audit_start"
    for a, b, r in zip(lines, lines[1:], recs[1:]):
        assert r["prev"] == line_hash(a)
    assert all(l == dumps_line(json.loads(l)) for l in lines)  # compact, sorted keys
    assert all(r["time"].endswith("Z") and len(r["time"]) == 24 for r in recs)
    cps = [r for r in recs if r["event"] == "checkpoint"]
    assert [c["reason"] for c in cps] == ["count", "count", "close"]
    assert cps[0]["covers"] == [1, 10] and cps[1]["covers"] == [12, 21]
    assert all(c["head"] == c["prev"] and c["file"] == os.path.basename(f) for c in cps)
    assert recs[-2]["event"] == "audit_stop"
    rep = verify_log(str(tmp_path), pub)
    assert rep.ok, rep.summary()
    assert (rep.records, rep.checkpoints) == (27, 3)
    assert rep.identities == {"svc-0", "svc-1", "svc-2"}
    assert rep.first_time and rep.last_time and "OK" in rep.summary()


def test_interval_checkpoint(tmp_path, key, pub):
    w = make(tmp_path, key, checkpoint_interval=0.05)
    w.wait_durable(w.append({"event": "x"}), 2)
    deadline = time.time() + 3
    while time.time() < deadline and not any(r["event"] == "checkpoint" for r in all_records(tmp_path)):
        time.sleep(0.02)
    assert [r["reason"] for r in all_records(tmp_path) if r["event"] == "checkpoint"] == ["interval"]
    assert verify_log(str(tmp_path), pub, live=True).ok
    w.close()
    assert verify_log(str(tmp_path), pub).ok


def test_forbidden_and_reserved_fields(tmp_path, key):
    w = make(tmp_path, key)
    for bad in ({"event": "x", "Authorization": "b"}, {"event": "x", "req": {"headers": [{"proxy_authorization": 1}]}},
                {"event": "x", "a": {"b": {"password": "p"}}}, {"event": "x", "token": "t"},
                {"event": "x", "secret": 1}, {"event": "checkpoint"}, {"event": "x", "seq": 3}):
        with pytest.raises(ValueError):
            w.append(bad)
    w.append({"event": "x", "token_sha256_prefix": "ab12"})  # only exact names are refused
    w.close()


def test_durable_sync_and_async(tmp_path, key):
    w = make(tmp_path, key, flush_delay=5.0)  # strict waiters must not sit out flush_delay
    t = time.monotonic()
    assert w.wait_durable(w.append({"event": "a"}), 2)

    async def go():
        seqs = [w.append({"event": "b", "i": i}) for i in range(50)]
        return await asyncio.gather(*(w.adurable(s, timeout=2) for s in seqs))
    assert all(asyncio.run(go()))
    assert time.monotonic() - t < 2
    w.close()


# ---------------------------------------------------------------- rotation, retention, restart

def test_rotation_by_size_chain_across_files(tmp_path, key, pub):
    files = write_log(tmp_path, key, n=60, max_file_bytes=2000)
    assert len(files) > 3
    for f in files[:-1]:  # every file is sealed on its own before rotation
        assert json.loads(read_lines(f)[-1])["reason"] == "rotate"
    for a, b in zip(files, files[1:]):
        assert json.loads(read_lines(b)[0])["prev"] == line_hash(read_lines(a)[-1])
    assert verify_log(str(tmp_path), pub).ok


def test_rotation_by_day_with_injected_clock(tmp_path, key, pub):
    clock = Clock(T0)
    w = make(tmp_path, key, clock=clock)
    w.append({"event": "a"})
    clock.t += DAY
    w.append({"event": "b"})
    clock.t -= 2 * DAY  # a clock going backwards must not send records to an older file
    w.append({"event": "c"})
    w.close()
    files = list_audit_files(str(tmp_path))
    assert [os.path.basename(f) for f in files] == ["audit-20250615-0001.jsonl", "audit-20250616-0001.jsonl"]
    assert json.loads(read_lines(files[0])[-1])["reason"] == "rotate"
    assert [json.loads(l)["event"] for l in read_lines(files[1])][:2] == ["b", "c"]
    assert verify_log(str(tmp_path), pub).ok


def test_retention_removes_old_files_and_anchors(tmp_path, key, pub):
    clock = Clock(T0)
    write_log(tmp_path, key, n=5, clock=clock)
    clock.t += DAY
    write_log(tmp_path, key, n=5, clock=clock)
    kept_first = list_audit_files(str(tmp_path))[1]
    clock.t += 365 * DAY  # only the first file is past 365 days
    write_log(tmp_path, key, n=5, clock=clock, retention_days=365)
    files = list_audit_files(str(tmp_path))
    assert files[0] == kept_first and len(files) == 2
    ret = [r for r in all_records(tmp_path) if r["event"] == "retention"]
    assert ret[0]["removed"] == ["audit-20250615-0001.jsonl"] and ret[0]["last_removed_seq"] == 8
    rep = verify_log(str(tmp_path), pub)
    assert rep.ok, rep.summary()
    assert any("anchored" in n for n in rep.notes)
    # deleting the oldest file by hand is not vouched for by any retention record
    os.unlink(files[0])
    rep = verify_log(str(tmp_path), pub)
    assert (rep.ok, rep.kind) == (False, "deleted")


def test_restart_continues_chain(tmp_path, key, pub):
    write_log(tmp_path, key, n=7, checkpoint_every=5)
    write_log(tmp_path, key, n=7, checkpoint_every=5)
    recs = all_records(tmp_path)
    starts = [r for r in recs if r["event"] == "audit_start"]
    assert len(starts) == 2 and starts[1]["previous_clean_close"] is True
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert verify_log(str(tmp_path), pub).ok


CRASH = """
import os, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
from pangate.audit.log import AuditWriter
key = serialization.load_pem_private_key(open(sys.argv[2], 'rb').read(), None)
w = AuditWriter(sys.argv[1], key, checkpoint_every=4)
for i in range(10):
    s = w.append({"event": "request", "i": i})
w.wait_durable(s, 5)
os._exit(9)  # killed: no audit_stop, no closing checkpoint
"""


def test_crash_torn_tail_then_restart(tmp_path, key, pub):
    kpath = tmp_path / "k" / "audit.key"
    key = load_or_create_signing_key(str(kpath))
    pub = key.public_key()
    d = tmp_path / "audit"
    subprocess.run([sys.executable, "-c", CRASH, str(d), str(kpath)], check=False, timeout=60)
    [f] = list_audit_files(str(d))
    rep = verify_log(str(d), pub)
    assert (rep.ok, rep.kind) == (False, "truncated")
    assert verify_log(str(d), pub, live=True).ok
    with open(f, "ab") as fh:
        fh.write(b'{"event":"request","i":10,"pr')  # the write the kill interrupted
    rep = verify_log(str(d), pub)
    assert (rep.kind, rep.records, rep.where) == ("torn_tail", 11, f"{f}:14")  # audit_start + 10
    assert verify_log(str(d), pub, live=True).ok
    # restart: torn bytes set aside, chain continues from the last complete record
    w = make(d, key, checkpoint_every=4)
    w.append({"event": "after"})
    w.close()
    assert [n for n in os.listdir(d) if ".torn-" in n]
    start = [r for r in all_records(d) if r["event"] == "audit_start"][1]
    assert start["torn_tail"]["bytes"] == 29 and start["previous_clean_close"] is False
    rep = verify_log(str(d), pub)
    assert rep.ok, rep.summary()
    # verify says the trail survived a crash, and where: the window between the last record and the restart
    [u] = rep.unclean_shutdowns
    assert u["after_seq"] == start["seq"] - 1 and u["restarted"] == start["time"]
    assert "unclean shutdown" in rep.summary()


# ---------------------------------------------------------------- tampering

@pytest.fixture
def log10(tmp_path, key):
    [f] = write_log(tmp_path, key, n=20, checkpoint_every=10)
    return f, read_lines(f)


def test_edit_detected(log10, pub):
    f, lines = log10
    i = line_of(lines, 5)
    lines[i] = lines[i].replace(b'"allow"', b'"deny"')
    write_lines(f, lines)
    rep = verify_log(f, pub)
    assert (rep.kind, rep.where_seq, rep.where) == ("edited", 5, f"{f}:{i + 1}")


def test_delete_detected(log10, pub):
    f, lines = log10
    del lines[line_of(lines, 5)]
    write_lines(f, lines)
    rep = verify_log(f, pub)
    assert (rep.kind, rep.where_seq) == ("deleted", 6)


def test_insert_detected(log10, pub):
    f, lines = log10
    i = line_of(lines, 5)
    forged = json.loads(lines[i])
    forged.update(identity="evil", prev=line_hash(lines[i - 1]))  # links correctly, claims seq 5
    lines.insert(i, dumps_line(forged))
    write_lines(f, lines)
    rep = verify_log(f, pub)
    assert (rep.kind, rep.where) == ("inserted", f"{f}:{i + 1}")
    # a replayed copy of an older line
    f2 = f + ".2"
    lines.pop(i)
    lines.insert(i, lines[2])
    write_lines(f2, lines)
    assert verify_log([f2], pub).kind == "inserted"


def test_reorder_detected(log10, pub):
    f, lines = log10
    i = line_of(lines, 5)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    write_lines(f, lines)
    rep = verify_log(f, pub)
    assert (rep.kind, rep.where_seq) == ("reordered", 6)


def test_truncation_detected(log10, pub):
    f, lines = log10
    write_lines(f, lines[:-3])
    rep = verify_log(f, pub)
    assert (rep.kind, rep.where_seq) == ("truncated", len(lines) - 3)
    assert verify_log(f, pub, live=True).ok


def test_deleted_middle_file_detected(tmp_path, key, pub):
    files = write_log(tmp_path, key, n=60, max_file_bytes=2000)
    os.unlink(files[1])
    assert verify_log(str(tmp_path), pub).kind == "deleted"


def rechain(lines, start=0):
    """What an attacker without the key can do: recompute every hash after an edit."""
    out = list(lines[:start])
    for l in lines[start:]:
        r = json.loads(l)
        r["prev"] = line_hash(out[-1]) if out else GENESIS
        if r["event"] == "checkpoint":
            r["head"] = r["prev"]
        out.append(dumps_line(r))
    return out


def test_rechained_edit_caught_by_signature(log10, pub):
    f, lines = log10
    i = line_of(lines, 5)
    lines[i] = lines[i].replace(b'"allow"', b'"deny"')
    write_lines(f, rechain(lines, i))
    rep = verify_log(f, pub)
    assert (rep.kind, rep.where_seq) == ("bad_signature", 11)  # first checkpoint after the edit
    assert verify_log(f).ok  # without the key only the chain is checked
    assert "NOT checked" in verify_log(f).summary()


def test_forged_and_missing_signature(log10, key, pub):
    f, lines = log10
    i = line_of(lines, 11)
    cp = json.loads(lines[i])
    cp["sig"] = base64.b64encode(bytes(64)).decode()
    write_lines(f, rechain(lines[:i] + [dumps_line(cp)] + lines[i + 1:], i))
    assert verify_log(f, pub).kind == "bad_signature"
    del cp["sig"]
    write_lines(f, rechain(lines[:i] + [dumps_line(cp)] + lines[i + 1:], i))
    rep = verify_log(f, pub)
    assert (rep.kind, rep.where_seq) == ("missing_signature", 11)


def test_checkpoints_stripped_caught(log10, pub):
    f, lines = log10
    kept = [json.loads(l) for l in lines if b'"checkpoint"' not in l]
    for n, r in enumerate(kept, 1):
        r["seq"] = n
    write_lines(f, rechain([dumps_line(r) for r in kept]))
    assert verify_log(f, pub).kind == "truncated"  # no signed close either
    rep = verify_log(f, pub, checkpoint_every=10)  # the writer's interval, as the verifier knows it
    assert (rep.kind, rep.where_seq) == ("missing_signature", 11)


def test_wrong_public_key(log10):
    f, _ = log10
    rep = verify_log(f, Ed25519PrivateKey.generate().public_key())
    assert rep.kind == "bad_signature" and "key" in rep.error


def test_bad_json_and_torn_middle_file(tmp_path, key, pub):
    files = write_log(tmp_path, key, n=40, max_file_bytes=2000)
    lines = read_lines(files[0])
    with open(files[0], "wb") as fh:
        fh.write(b"".join(l + b"\n" for l in lines[:-1]) + lines[-1][:10])
    assert verify_log(str(tmp_path), pub, live=True).kind == "torn_tail"  # only the very end may be torn
    write_lines(files[0], lines[:2] + [b"{not json"] + lines[3:])
    rep = verify_log(str(tmp_path), pub)
    assert (rep.kind, rep.where) == ("bad_json", f"{files[0]}:3")


# ---------------------------------------------------------------- failures

class FaultyOps(FileOps):
    """Fault injection: as root, chmod does not stop writes, so fail the syscalls."""

    def __init__(self):
        self.fail = None  # "write", "fsync", "open", "partial"
        self.calls = 0

    def write(self, fd, data):
        if self.fail == "write":
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.fail == "partial":  # half reaches the file, then the disk is full
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    def fsync(self, fd):
        if self.fail == "fsync":
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)

    def open(self, *a):
        if self.fail == "open":
            raise OSError(errno.EROFS, "Read-only file system")
        return os.open(*a)


def wait_until(pred, timeout=5):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("fault", ["write", "partial", "fsync", "open"])
def test_failure_backlog_recovery_no_loss(tmp_path, key, pub, fault):
    ops, states = FaultyOps(), []
    w = make(tmp_path, key, fileops=ops, retry_interval=0.05,
             on_state_change=lambda ok, why: states.append((ok, why)))
    w.wait_durable(w.append({"event": "before"}), 2)
    if fault == "open":
        ops.fail = "write"  # force a reopen, which then fails too
        w.append({"event": "x"})
        assert wait_until(lambda: not w.healthy)
    ops.fail = fault
    seqs = [w.append({"event": "during", "i": i}) for i in range(30)]
    assert not w.wait_durable(seqs[-1], timeout=0.3)
    assert not w.healthy and w.failure and states[0][0] is False

    async def later():
        return await w.adurable(seqs[-1], timeout=5)

    res = {}
    t = threading.Thread(target=lambda: res.update(ok=asyncio.run(later())))
    t.start()
    time.sleep(0.1)
    ops.fail = None
    assert w.wait_durable(seqs[-1], timeout=5)
    t.join(5)
    assert res["ok"] is True
    assert wait_until(lambda: w.healthy) and states[-1][0] is True
    w.close()
    recs = all_records(tmp_path)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))  # no loss, no duplicates
    assert [r["i"] for r in recs if r["event"] == "during"] == list(range(30))
    assert any(r["event"] == "audit_recovered" for r in recs)
    assert verify_log(str(tmp_path), pub).ok


def test_directory_renamed_away_detected(tmp_path, key, pub):
    d = tmp_path / "audit"
    w = make(d, key, retry_interval=0.05)
    w.wait_durable(w.append({"event": "a"}), 2)
    os.rename(d, str(d) + ".gone")  # open fd would still accept writes
    s = w.append({"event": "b"})
    assert wait_until(lambda: not w.healthy)
    assert not w.wait_durable(s, 0.2)
    os.rename(str(d) + ".gone", d)
    assert w.wait_durable(s, 5) and wait_until(lambda: w.healthy)
    w.close()
    assert verify_log(str(d), pub).ok


def test_replaced_directory_and_deleted_file_fail_closed(tmp_path, key):
    d = tmp_path / "audit"
    w = make(d, key, retry_interval=0.05)
    w.wait_durable(w.append({"event": "a"}), 2)
    os.unlink(list_audit_files(str(d))[0])
    w.append({"event": "b"})
    assert wait_until(lambda: not w.healthy) and "deleted" in w.failure
    w.close(timeout=0.3)


def test_backlog_bounded(tmp_path, key):
    ops = FaultyOps()
    w = make(tmp_path, key, fileops=ops, max_backlog=20, retry_interval=10)
    ops.fail = "write"
    with pytest.raises(AuditBacklogFull):
        for i in range(100):
            w.append({"event": "x"})
    ops.fail = None
    assert w.close()


# ---------------------------------------------------------------- keys, recordings, CLI

def test_signing_key_created_0600(tmp_path):
    p = tmp_path / "certs" / "audit-signing.key"
    k = load_or_create_signing_key(str(p))
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600 and os.path.exists(str(p) + ".pub")
    k2 = load_or_create_signing_key(str(p))
    assert k2.public_key().public_bytes_raw() == k.public_key().public_bytes_raw()


def test_recording_signatures(tmp_path, key, pub):
    d = tmp_path / "audit"
    write_log(d, key, n=3)
    rec = d / "recordings" / "s1.cast"
    rec.parent.mkdir()
    rec.write_bytes(b"session bytes")
    doc = sign_file(str(rec), key)
    assert doc["size"] == 13 and verify_file(str(rec), pub) == (True, "ok")
    assert verify_log(str(d), pub).recordings[0][1] is True
    assert verify_file(str(rec), Ed25519PrivateKey.generate().public_key())[0] is False
    rec.write_bytes(b"session bytez")
    ok, why = verify_file(str(rec), pub)
    assert not ok and "changed" in why
    rep = verify_log(str(d), pub)
    assert (rep.ok, rep.kind) == (False, "edited")


def test_progress_and_the_verify_command(tmp_path, key, capsys):
    kp = tmp_path / "k.key"
    key = load_or_create_signing_key(str(kp))
    d = tmp_path / "audit"
    write_log(d, key, n=30, max_file_bytes=2000)
    seen = []
    verify_log(str(d), key.public_key(), progress=lambda a, b: seen.append((a, b)))
    assert seen[-1][0] == seen[-1][1] == sum(os.path.getsize(f) for f in list_audit_files(str(d)))
    assert pangate_main(["audit", "verify", str(d), "--pubkey", str(kp) + ".pub"]) == 0
    assert "OK" in capsys.readouterr().out
    f = list_audit_files(str(d))[-1]
    write_lines(f, read_lines(f)[:-1])
    assert pangate_main(["audit", "verify", str(d), "--pubkey", str(kp) + ".pub"]) == 1


class CountingOps(FileOps):
    """Counts the syscalls a batch of appends costs: group commit, measured without a clock."""

    def __init__(self):
        self.writes = self.fsyncs = 0

    def write(self, fd, data):
        self.writes += 1
        return os.write(fd, data)

    def fsync(self, fd):
        self.fsyncs += 1
        os.fsync(fd)


def test_appends_are_group_committed(tmp_path, key, pub):
    # Why counts, not a records/s bound: the rate belongs to scripts/bench; what
    # makes it possible is that many appends share one write and one fsync.
    n = 20000
    ops = CountingOps()
    w = make(tmp_path, key, fileops=ops, flush_delay=0.05)
    for i in range(n):
        s = w.append({"event": "request", "identity": "svc", "host": "api.example", "i": i})
    assert w.wait_durable(s, 30)
    assert w.close()
    assert ops.fsyncs <= n // 100, ops.fsyncs
    assert ops.writes <= n // 100, ops.writes
    assert verify_log(str(tmp_path), pub).records >= n


def test_refusals_during_an_outage_are_coalesced_not_queued(tmp_path, key, pub):
    ops = FaultyOps()
    w = make(tmp_path, key, fileops=ops, retry_interval=0.05)
    w.wait_durable(w.append({"event": "before"}), 2)
    ops.fail = "write"
    delivered = w.append({"event": "request", "outcome": "allowed", "i": 1})  # answered before the outage
    assert wait_until(lambda: not w.healthy)
    backlog = len(w._pending)
    for i in range(5000):
        assert w.append({"event": "request", "outcome": "unavailable", "code": "audit_unavailable",
                         "identity": {"name": f"svc{i % 3}"}}) == 0
    assert len(w._pending) == backlog  # refusals cost no backlog while the trail is down
    ops.fail = None
    assert w.wait_durable(delivered, 5) and wait_until(lambda: w.healthy)
    w.close()
    recs = all_records(tmp_path)
    summary = [r for r in recs if r["event"] == "refusals_coalesced"]
    assert len(summary) == 1 and summary[0]["total"] == 5000
    assert {(r["identity"], r["count"]) for r in summary[0]["refusals"]} == {("svc0", 1667), ("svc1", 1667),
                                                                             ("svc2", 1666)}
    assert [r["event"] for r in recs].index("refusals_coalesced") < [r["event"] for r in recs].index(
        "audit_recovered")
    assert verify_log(str(tmp_path), pub).ok


class FullDiskOps(FaultyOps):
    """ENOSPC until `free` says the disk has room; the reserve's release makes room for `room` bytes."""

    def __init__(self, directory):
        super().__init__()
        self.directory, self.room, self.free = directory, 0, 0

    def write(self, fd, data):
        reserve = os.path.exists(os.path.join(self.directory, ".reserve"))
        if self.fail == "full" and (reserve or len(data) > self.room):
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.fail == "full":
            self.room -= len(data)
        return os.write(fd, data)

    def statvfs(self, path):
        st = os.statvfs(path)
        return os.statvfs_result((st.f_bsize, 1, st.f_blocks, self.free, self.free, *tuple(st)[5:]))


def test_full_disk_uses_the_reserve_then_recovers_when_space_returns(tmp_path, key, pub):
    d = tmp_path / "audit"
    ops = FullDiskOps(str(d))
    w = make(d, key, fileops=ops, retry_interval=0.05, reserve_bytes=64 << 10)
    assert (d / ".reserve").stat().st_size == 64 << 10
    w.wait_durable(w.append({"event": "before"}), 2)
    ops.fail, ops.room = "full", 64 << 10
    acked = w.append({"event": "request", "outcome": "allowed", "i": 7})
    # The reserve is released and what clients were already answered is written into it...
    assert w.wait_durable(acked, 5)
    assert not (d / ".reserve").exists()
    # ...but the writer stays failed (the gateway refuses) while the disk is still full.
    time.sleep(0.2)
    assert not w.healthy
    for _ in range(100):
        w.append({"event": "request", "outcome": "unavailable", "code": "audit_unavailable"})
    ops.free = 1 << 30  # an operator freed space
    ops.fail = None
    assert wait_until(lambda: w.healthy)
    assert (d / ".reserve").stat().st_size == 64 << 10
    w.close()
    recs = all_records(d)
    assert [r["i"] for r in recs if r.get("i") == 7] == [7]
    assert sum(r["total"] for r in recs if r["event"] == "refusals_coalesced") == 100
    assert verify_log(str(d), pub).ok
