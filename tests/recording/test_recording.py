"""Session recordings: the scrubbed copy, file rotation and signatures (no gateway needed)."""

from __future__ import annotations

import asyncio
import gzip
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mitmproxy.io import FlowReader
from mitmproxy.test import tflow
from mitmproxy.websocket import WebSocketMessage

from pangate.audit.keys import verify_file
from pangate.audit.verify import verify_log
from pangate.pan.engine import find_pans
from pangate.recording.addon import WITHHELD, RecordingFiles, Scrubber

PAN = "4111111111111111"
SECRET = "sk_live_injected_0123456789"


def _flow():
    f = tflow.tflow(resp=True, ws=True)
    f.request.path = f"/pay?card={PAN}&access_token=tok123&key2=v"
    f.request.headers["Authorization"] = f"Bearer {SECRET}"
    f.request.headers["Proxy-Authorization"] = "Basic cmVhZGVyOnRvaw=="
    f.request.headers["Cookie"] = "sid=abc"
    f.request.headers["X-Backend-Key"] = SECRET
    f.request.headers["X-Note"] = f"card {PAN}"
    f.request.content = f'{{"number": "{PAN}", "echo": "{SECRET}"}}'.encode()
    f.response.headers["Set-Cookie"] = "sid=abc"
    f.response.headers["Content-Encoding"] = "gzip"
    f.response.raw_content = gzip.compress(f'{{"pan": "{PAN}"}}'.encode())
    f.websocket.messages.append(WebSocketMessage(1, True, f"card {PAN}".encode()))
    f.metadata["pangate"] = {"request_id": "r1"}
    f.metadata["someone-else"] = {"raw": PAN}
    return f


def test_scrubbed_copy_keeps_nothing_sensitive():
    original = _flow()
    s = Scrubber(secrets=[SECRET], header_names=["X-Backend-Key"])
    f = s.flow(original)
    req, resp = f.request, f.response
    for h in ("Authorization", "Proxy-Authorization", "Cookie", "X-Backend-Key"):
        assert h not in req.headers
    assert "Set-Cookie" not in resp.headers
    assert req.query["access_token"] == "[redacted]" and req.query["key2"] == "v"
    assert PAN not in req.path and PAN[-4:] in req.path
    assert PAN not in req.headers["X-Note"]
    assert PAN not in req.get_text() and SECRET not in req.get_text() and "[secret]" in req.get_text()
    assert PAN not in resp.get_text() and resp.headers["Content-Encoding"] == "gzip"
    assert PAN.encode() not in f.websocket.messages[-1].content
    assert f.metadata == {"pangate": {"request_id": "r1"}}
    state = repr(f.get_state()).encode()
    assert not find_pans(state) and SECRET.encode() not in state
    assert PAN in original.request.get_text()  # the live flow is untouched


def test_undecodable_body_is_withheld():
    f = tflow.tflow(resp=True)
    f.response.headers["Content-Encoding"] = "gzip"
    f.response.raw_content = b"not gzip " + PAN.encode()
    out = Scrubber().flow(f)
    assert out.response.raw_content == WITHHELD


def test_files_rotate_and_are_signed(tmp_path):
    key = Ed25519PrivateKey.generate()
    files = RecordingFiles(str(tmp_path), key, rotate_bytes=1, rotate_seconds=3600)
    for _ in range(3):
        files.put((_flow(), Scrubber()))
    files.close()
    recs = sorted(tmp_path.glob("*.mitm"))
    assert len(recs) == 3  # one flow each: every write passes the 1-byte limit
    for r in recs:
        assert verify_file(str(r), key.public_key()) == (True, "ok")
        with open(r, "rb") as fh:
            (read,) = list(FlowReader(fh).stream())
        assert read.metadata["pangate"]["request_id"] == "r1"
    with open(recs[0], "ab") as fh:
        fh.write(b"x")
    assert verify_file(str(recs[0]), key.public_key())[0] is False


def test_rotation_signs_the_running_digest_without_reading_the_file_back(tmp_path, monkeypatch):
    """The writer hashes what it writes; a rotation signs that (no second read of every byte)."""
    from pangate.audit import keys

    key = Ed25519PrivateKey.generate()
    reads = []
    real = keys._file_digest
    monkeypatch.setattr(keys, "_file_digest", lambda path: reads.append(path) or real(path))
    files = RecordingFiles(str(tmp_path), key, rotate_bytes=1, rotate_seconds=3600)
    for _ in range(3):
        files.put((_flow(), Scrubber()))
    files.close()
    assert reads == []
    recs = sorted(tmp_path.glob("*.mitm"))
    assert len(recs) == 3
    for r in recs:
        assert verify_file(str(r), key.public_key()) == (True, "ok")  # the digest is of the bytes on disk


def test_leftover_file_is_sealed_on_start(tmp_path):
    key = Ed25519PrivateKey.generate()
    (tmp_path / "flows-20260101-000000-001.mitm").write_bytes(b"")
    RecordingFiles(str(tmp_path), key, 1 << 20, 3600).close()
    assert verify_file(str(tmp_path / "flows-20260101-000000-001.mitm"), key.public_key())[0]


def test_verify_live_accepts_only_the_newest_unsigned(tmp_path):
    key = Ed25519PrivateKey.generate()
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "flows-1.mitm").write_bytes(b"a")
    (rec / "flows-2.mitm").write_bytes(b"b")
    from pangate.audit.log import AuditWriter
    audit = tmp_path / "audit"
    AuditWriter(str(audit), key).close()
    rep = verify_log(str(audit), key.public_key(), live=True, recordings=str(rec))
    assert not rep.ok and rep.kind == "missing_signature" and "flows-1" in rep.where


def test_a_full_queue_is_written_whole(tmp_path):
    """Batches are cut at BATCH flows; no flow between two batches is lost."""
    from mitmproxy.io import FlowReader

    from pangate.recording.addon import BATCH

    key = Ed25519PrivateKey.generate()
    files = RecordingFiles(str(tmp_path), key, rotate_bytes=1 << 30, rotate_seconds=3600)
    n = 2 * BATCH + 7
    for _ in range(n):
        files.put((_flow(), Scrubber()))
    files.close()
    count = 0
    for rec in tmp_path.glob("*.mitm"):
        with open(rec, "rb") as fh:
            count += len(list(FlowReader(fh).stream()))
    assert count == n


def test_a_flow_that_cannot_be_scrubbed_is_stored_as_a_bare_stub():
    class Broken:
        def flow(self, flow, copy=True):
            raise RuntimeError("scrubbing failed on 4111111111111111")

    f = _flow()
    f.request.path = "/pay?card=4111111111111111&token=sk_live_x"
    f.comment = "card 4111111111111111"
    stub = RecordingFiles._scrub(f, Broken())  # the state that is written
    state = repr(stub)
    assert "4111111111111111" not in state and "sk_live_x" not in state


def _flows_of_every_shape():
    yield _flow()
    f = _flow()
    f.error = tflow.terr()
    f.error.msg = f"upstream said {PAN}"
    f.comment = f"held: card {PAN}"
    yield f
    f = tflow.tflow(resp=True)
    f.metadata["pangate"] = {"response_masked": True}
    f.response.text = f'{{"echo": "{SECRET}"}}'
    f.response.reason = f"OK {PAN}"
    yield f
    yield tflow.tflow()  # no response yet


def test_a_snapshot_is_scrubbed_as_the_flow_would_be():
    # The writer scrubs the snapshot the event loop took (Scrubber.state); what it stores must
    # be what scrubbing the flow itself stores, field for field.
    s = Scrubber(secrets=[SECRET], header_names=["X-Backend-Key"])
    for f in _flows_of_every_shape():
        assert s.state(f.get_state()) == s.flow(f).get_state() | {"id": f.id}


def test_a_snapshot_that_cannot_be_scrubbed_is_stored_as_a_bare_stub():
    class Broken:
        def state(self, state):
            raise RuntimeError("scrubbing failed on 4111111111111111")

    f = _flow()
    f.comment = "card 4111111111111111"
    stub = RecordingFiles._scrub(f.get_state(), Broken())
    assert stub is not None and "4111111111111111" not in repr(stub) and SECRET not in repr(stub)


def test_a_writer_behind_by_its_byte_budget_is_backlogged_until_it_catches_up(tmp_path):
    """Backpressure, not a backlog: past max_queue_bytes of queued bodies backlogged() is true
    (the Recorder then holds responses until their flows are written), and it clears once the
    writer has written them; nothing is dropped."""
    release = threading.Event()

    def slow_open(path, mode):
        release.wait(30)  # the disk is slow: the writer cannot open its file yet
        return open(path, mode)

    key = Ed25519PrivateKey.generate()
    files = RecordingFiles(str(tmp_path), key, 1 << 30, 3600, opener=slow_open, max_queue_bytes=200_000)
    big = _flow()
    big.response.headers.pop("Content-Encoding")
    big.response.raw_content = b"x" * 60_000
    seqs = [files.put((big.get_state(), Scrubber()))]
    assert not files.backlogged()
    seqs += [files.put((big.get_state(), Scrubber())) for _ in range(4)]
    assert files.backlogged()  # 5 x 60 KB queued: over the 200 KB budget
    release.set()
    assert asyncio.run(files.awritten(seqs[-1], 30)), "the writer never caught up"
    assert all(files.written(s) for s in seqs)
    assert not files.backlogged() and files.dropped == 0
    files.close()
    (rec,) = sorted(tmp_path.glob("*.mitm"))
    with open(rec, "rb") as fh:
        assert len(list(FlowReader(fh).stream())) == 5
