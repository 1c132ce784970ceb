"""Recording writer under faults: full disks, full queues, torn files left by a crash."""

from __future__ import annotations

import asyncio
import errno
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mitmproxy.io import FlowReader
from mitmproxy.test import tflow

from pangate.audit.keys import verify_file
from pangate.recording.addon import RecordingFiles, Scrubber


class Disk:
    """An opener whose files refuse writes (ENOSPC) while `full` is set."""

    def __init__(self):
        self.full = threading.Event()
        self.opened: list[str] = []

    def __call__(self, path, mode):
        self.opened.append(path)
        return _File(open(path, mode), self)


class _File:
    def __init__(self, fo, disk):
        self.fo, self.disk = fo, disk

    def write(self, data):
        if self.disk.full.is_set():
            self.fo.write(data[: len(data) // 2])  # a partial write, as a filling disk does
            self.fo.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.fo.write(data)

    def __getattr__(self, name):
        return getattr(self.fo, name)


def _flow(i=0):
    f = tflow.tflow(resp=True)
    f.metadata["pangate"] = {"request_id": f"r{i}"}
    return f


def _read(path):
    with open(path, "rb") as fh:
        return [f.metadata["pangate"]["request_id"] for f in FlowReader(fh).stream()]


def _wait(cond, timeout=10):
    ev = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if cond():
            return True
        ev.wait(0.01)
    return False


def test_an_outage_keeps_one_file_and_loses_nothing(tmp_path):
    key = Ed25519PrivateKey.generate()
    disk, states = Disk(), []
    files = RecordingFiles(str(tmp_path), key, 1 << 30, 3600, on_state=states.append, retry_interval=0.02,
                           opener=disk)
    files.put((_flow(0), Scrubber()))
    assert _wait(lambda: files.written(1))
    disk.full.set()
    for i in range(1, 6):
        files.put((_flow(i), Scrubber()))
    assert _wait(lambda: files.failure is not None)
    assert _wait(lambda: len(disk.opened) >= 5)  # many retries ...
    disk.full.clear()
    assert _wait(lambda: files.written(6))
    files.close()
    assert len(set(disk.opened)) == 1  # ... one file
    (rec,) = tmp_path.glob("*.mitm")
    assert _read(rec) == [f"r{i}" for i in range(6)]  # the partial writes were cut back
    assert verify_file(str(rec), key.public_key())[0]
    assert states[0] is not None and states[-1] is None


def test_the_queue_is_bounded_and_drops_are_reported(tmp_path):
    key = Ed25519PrivateKey.generate()
    disk, seen = Disk(), []
    disk.full.set()
    files = RecordingFiles(str(tmp_path), key, 1 << 30, 3600, retry_interval=0.02, opener=disk, max_queue=5,
                           on_event=lambda kind, alert, fields: seen.append((kind, alert, fields)))
    accepted = [files.put((_flow(i), Scrubber())) for i in range(400)]
    assert _wait(lambda: files.failure is not None)
    assert files.put((_flow(999), Scrubber()), refused=True) is None  # refusals are counted during an outage
    kept = [s for s in accepted if s is not None]
    assert len(kept) <= 5 + 256  # the queue plus one batch being retried
    assert files.dropped == 400 - len(kept) + 1
    disk.full.clear()
    assert _wait(lambda: files.written(kept[-1]))
    assert _wait(lambda: seen)
    files.close()
    (kind, alert, fields), = seen
    assert kind == "recordings_dropped" and alert and fields["count"] == files.dropped
    assert sum(len(_read(r)) for r in tmp_path.glob("*.mitm")) == len(kept)


def test_awritten_settles_when_the_flow_is_in_the_file(tmp_path):
    key = Ed25519PrivateKey.generate()
    disk = Disk()
    files = RecordingFiles(str(tmp_path), key, 1 << 30, 3600, retry_interval=0.02, opener=disk)

    async def go():
        seq = files.put((_flow(1), Scrubber()))
        assert await files.awritten(seq, 5)
        disk.full.set()
        seq2 = files.put((_flow(2), Scrubber()))
        assert not await files.awritten(seq2, 0.3)  # not in the file: the response would be withheld
        disk.full.clear()
        assert await files.awritten(seq2, 5)
    asyncio.run(go())
    files.close()


def test_stopping_during_an_outage_ends_and_counts_the_rest(tmp_path):
    key = Ed25519PrivateKey.generate()
    disk, seen = Disk(), []
    files = RecordingFiles(str(tmp_path), key, 1 << 30, 3600, retry_interval=0.02, opener=disk,
                           on_event=lambda kind, alert, fields: seen.append(kind))
    disk.full.set()
    files.put((_flow(1), Scrubber()))
    assert _wait(lambda: files.failure is not None)
    files.close()
    assert not files.thread.is_alive() and files.dropped == 1 and seen == ["recordings_dropped"]


def _good_file(tmp_path, key, n=3):
    files = RecordingFiles(str(tmp_path), key, 1 << 30, 3600)
    for i in range(n):
        files.put((_flow(i), Scrubber()))
    files.close()
    (rec,) = tmp_path.glob("*.mitm")
    (tmp_path / (rec.name + ".sig")).unlink()  # as a crash leaves it: unsigned
    return rec


def test_a_torn_last_flow_is_cut_then_signed(tmp_path):
    key = Ed25519PrivateKey.generate()
    rec = _good_file(tmp_path, key)
    whole = rec.read_bytes()
    second = _good_file(tmp_path / "x", key, 1).read_bytes()
    rec.write_bytes(whole + second[: len(second) // 2])  # killed in the middle of a write
    seen = []
    RecordingFiles(str(tmp_path), key, 1 << 30, 3600,
                   on_event=lambda kind, alert, fields: seen.append((kind, fields))).close()
    assert rec.read_bytes() == whole and _read(rec) == ["r0", "r1", "r2"]
    assert verify_file(str(rec), key.public_key())[0]
    assert seen == [("recording_repaired", {"file": rec.name, "cut_bytes": len(second) // 2,
                                            "kept_bytes": len(whole)})]


def test_a_torn_length_prefix_is_cut_too(tmp_path):
    key = Ed25519PrivateKey.generate()
    rec = _good_file(tmp_path, key)
    whole = rec.read_bytes()
    rec.write_bytes(whole + b"12")
    RecordingFiles(str(tmp_path), key, 1 << 30, 3600).close()
    assert rec.read_bytes() == whole and verify_file(str(rec), key.public_key())[0]


def test_garbage_inside_a_file_is_quarantined_unsigned(tmp_path):
    key = Ed25519PrivateKey.generate()
    rec = _good_file(tmp_path, key)
    whole = rec.read_bytes()
    head, _, _ = whole.partition(b":")
    end = len(head) + 1 + int(head)  # the first flow's closing type byte
    bad = whole[:end] + b"#" + whole[end + 1:]
    rec.write_bytes(bad)  # corrupt, not torn: nothing to cut safely
    seen = []
    RecordingFiles(str(tmp_path), key, 1 << 30, 3600,
                   on_event=lambda kind, alert, fields: seen.append((kind, alert))).close()
    assert not rec.exists() and not (tmp_path / (rec.name + ".sig")).exists()
    assert (tmp_path / (rec.name + ".torn")).read_bytes() == bad
    assert seen == [("recording_quarantined", True)]


def test_during_an_outage_the_byte_budget_drops_instead_of_holding(tmp_path):
    """Holding responses cannot help a writer that cannot write: past the budget flows are
    dropped and counted (as the flow-count bound does), and backlogged() stays false."""
    key = Ed25519PrivateKey.generate()
    disk = Disk()
    disk.full.set()
    files = RecordingFiles(str(tmp_path), key, 1 << 30, 3600, retry_interval=0.02, opener=disk,
                           max_queue_bytes=20_000)
    big = []
    for i in range(12):
        f = _flow(i)
        f.response.raw_content = b"x" * 4000
        big.append(f)
    files.put((big[0], Scrubber()))
    assert _wait(lambda: files.failure is not None)
    accepted = [files.put((f, Scrubber())) for f in big[1:]]
    assert not files.backlogged()
    assert None in accepted and files.dropped == accepted.count(None)
    disk.full.clear()
    kept = [s for s in accepted if s is not None]
    assert _wait(lambda: files.written(kept[-1]))
    files.close()
