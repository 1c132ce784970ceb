"""Session recordings: a masked copy of every flow, in mitmproxy's own flow format.

Readable with `mitmweb -r FILE` / `mitmdump -r FILE`. What is saved is a copy
scrubbed of everything sensitive: credential headers dropped, injected secrets
replaced, card numbers masked in URL, headers, bodies and websocket messages.
Then, as the second wall, the flow is serialized (`get_state()`, what
mitmproxy's FlowWriter writes) and every bytes and str value of that state --
header names, close reasons, metadata, error messages, refusal bodies -- passes
the sink scrubber before it is written, so a field nobody thought of is
covered too.
Files are written by a background thread, rotate by age and size, and each
closed file gets a signed digest (`<file>.sig`) that `pangate audit verify`
checks. If recordings cannot be written the gateway refuses traffic (503)
until they can, like the audit trail.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque

from mitmproxy import ctx, exceptions, http
from mitmproxy.flow import Flow
from mitmproxy.io import tnetstring

from pangate.common.loopfutures import settle
from pangate.common import events
from pangate.common.loopfirst import LOOP_FIRST
from pangate.audit.addon import SECRET_PARAM
from pangate.audit.keys import load_or_create_signing_key, sign_file
from pangate.credentials.addon import CLIENT_CREDENTIAL_HEADERS
from pangate.chain.context import KEY, FlowContext, refuse
from pangate.chain.failsafe import FLOW_HOOKS, Component, safe_traceback
from pangate.chain.scrub import rewrite_body, rewrite_headers
from pangate.chain.snapshot import Snapshots
from pangate.credentials.forms import Redactor, echo_forms
from pangate.masking.decoders import Limits, decode
from pangate.pan.engine import Masker
from pangate.sinks.scrubber import SinkScrubber, default as sink_scrubber, generated_id

log = logging.getLogger("pangate")
DROP_HEADERS = {h.lower() for h in ("Proxy-Authorization", "Set-Cookie", *CLIENT_CREDENTIAL_HEADERS)}
WITHHELD = b"[pangate: body withheld from the recording: it could not be decoded to be masked]"
SUFFIX = ".mitm"
SYNC_SECONDS = 0.2  # recordings are evidence but not the source of truth: fsync in groups
BATCH = 256
DROP_REPORT_SECONDS = 10.0  # while flows are being dropped, how often the count is reported
WAIT_SECONDS = 5.0  # longest a response waits for its recording before it is withheld
# The second wall decodes each stored body to scrub it: bounded, since it runs for every flow
# (on the writer thread). A body past this is not stored.
MAX_SEALED_BODY = 64 << 20
_SEAL_LIMITS = Limits(max_bytes=MAX_SEALED_BODY)
SEAL_MEMO_LEN = 256  # values up to this long are remembered once found clean
SEAL_MEMO_MAX = 4096  # values (and certificates) remembered, then forgotten all at once


class Scrubber:
    """Makes the masked copy of a flow that may be stored."""

    def __init__(self, masker: Masker | None = None, secrets=(), header_names=(), query_names=()):
        self.masker = masker or Masker()
        self.secrets = [s for s in secrets if s]
        self.drop = DROP_HEADERS | {h.lower() for h in header_names}
        self.query_names = {q.lower() for q in query_names}
        self.redactor = Redactor(f for s in self.secrets for f in echo_forms(s))  # for the second wall
        self.seal_memo = SealMemo()  # what StateSeals found clean under these secrets

    def text(self, value: str) -> str:
        for s in self.secrets:
            value = value.replace(s, "[secret]")
        return self.masker.mask_text(value)[0]

    def data(self, value: bytes) -> bytes:
        for s in self.secrets:
            value = value.replace(s.encode(), b"[secret]")
        return self.masker.mask(value)[0]

    def headers(self, headers) -> None:
        rewrite_headers(headers, self.text, drop=self.drop)

    def message(self, msg: http.Message, body_masked: bool = False) -> None:
        self.headers(msg.headers)
        if msg.trailers:
            self.headers(msg.trailers)
        if body_masked:  # ResponseMasking already masked this body in the flow: not scanned twice
            if self.secrets and msg.raw_content:
                body = msg.get_content(strict=False) or b""
                out = body
                for sec in self.secrets:
                    out = out.replace(sec.encode(), b"[secret]")
                if out != body:
                    msg.content = out
            return
        if msg.raw_content:
            def masked(body: bytes) -> bytes | None:
                out = self.data(body)
                return out if out != body else None  # re-encoded per Content-Encoding, as the reader expects

            rewrite_body(msg, masked, _withhold)

    def request(self, req: http.Request) -> None:
        for name in list(req.query.keys()):
            if name.lower() in self.query_names or SECRET_PARAM.search(name):
                req.query[name] = "[redacted]"
        req.path = self.text(self.masker.mask_url(req.path)[0])
        req.authority = self.text(req.authority)
        self.message(req)

    def response(self, resp: http.Response, body_masked: bool) -> None:
        self.message(resp, body_masked=body_masked)
        resp.reason = self.text(resp.reason)

    def flow(self, flow: http.HTTPFlow, copy: bool = True) -> http.HTTPFlow:
        f = flow.copy() if copy else flow
        f.metadata = {KEY: dict(FlowContext.of(flow).data)}  # other addons' notes are not vetted: dropped
        self.request(f.request)
        if f.response is not None:
            self.response(f.response, bool(FlowContext.of(f).response_masked))
        if f.websocket is not None:
            for m in f.websocket.messages:
                m.content = self.data(m.content)
        if f.error is not None:
            f.error.msg = self.text(f.error.msg)
        if f.comment:
            f.comment = self.text(f.comment)
        return f

    def state(self, state: dict) -> dict:
        """flow(), on a flow's get_state() snapshot: the same scrub, and only the messages are
        rebuilt as objects. Rebuilding the whole flow would parse its connections' certificates
        again (most of what a small flow costs); connections are the StateSeal's to check."""
        if state.get("type") != "http":
            return self.flow(Flow.from_state(state), copy=False).get_state()
        out = dict(state)
        notes = dict((state.get("metadata") or {}).get(KEY) or {})
        out["metadata"] = {KEY: notes}  # other addons' notes are not vetted: dropped
        req = http.Request.from_state(state["request"])
        self.request(req)
        out["request"] = req.get_state()
        if state.get("response") is not None:
            resp = http.Response.from_state(state["response"])
            self.response(resp, bool(FlowContext(notes).response_masked))
            out["response"] = resp.get_state()
        if state.get("websocket") is not None:
            ws = dict(state["websocket"])
            ws["messages"] = [(m[0], m[1], self.data(m[2]), *m[3:]) for m in ws.get("messages") or ()]
            out["websocket"] = ws
        if state.get("error") is not None:
            out["error"] = dict(state["error"], msg=self.text(state["error"]["msg"]))
        if state.get("comment"):
            out["comment"] = self.text(state["comment"])
        return out


def _withhold(msg) -> None:
    msg.headers.pop("content-encoding", None)
    msg.content = WITHHELD


class SealMemo:
    """What StateSeals found clean under one Scrubber's secrets: short values (header names and
    values, hosts, ids repeat from flow to flow) and certificate verdicts (every flow of a
    connection, and every connection to one upstream, carries the same certificates, and
    checking one costs more than the rest of a small flow). Forgotten when the sink's secrets
    change; shared by the writer thread's seals only."""

    def __init__(self):
        self.generation = None
        self.values: set = set()
        self.certs: dict = {}

    def under(self, generation) -> "SealMemo":
        if generation != self.generation:
            self.generation, self.values, self.certs = generation, set(), {}
        return self


class StateSeal:
    """The second wall: a flow's serialized state with every bytes and str value scrubbed.

    Walks what `flow.get_state()` returns -- exactly what FlowWriter serializes -- so every
    field is covered, present and future: keys, header names and values, URL parts, bodies
    (decoded first, within bounds), websocket messages and close reasons, error messages,
    metadata, comments. Certificates are binary: one that holds anything the scrubber would
    change (an SNI with a card number, say, in mitmproxy's generated certificate) is dropped.
    """

    def __init__(self, sink: SinkScrubber | None = None, redactor: Redactor | None = None,
                 memo: "SealMemo | None" = None):
        self.sink = sink or sink_scrubber()
        self.redactor = redactor or Redactor()
        memo = (memo or SealMemo()).under(self.sink.secrets.generation)
        self.clean, self.certs = memo.values, memo.certs

    def text(self, value: str) -> str:
        if value in self.clean:
            return value
        out = self.sink.text(self.redactor.text(value))
        self._remember(value, out)
        return out

    def data(self, value: bytes) -> bytes:
        if value in self.clean:
            return value
        out = self.sink.data(self.redactor.data(value))
        self._remember(value, out)
        return out

    def _remember(self, value, out) -> None:
        if out == value and len(value) <= SEAL_MEMO_LEN:
            if len(self.clean) >= SEAL_MEMO_MAX:
                self.clean.clear()
            self.clean.add(value)

    def state(self, state: dict) -> dict:
        return self._walk(state, None)

    def _walk(self, obj, key):
        if isinstance(obj, dict):
            if "headers" in obj and "content" in obj:
                return self._message(obj)
            out = {}
            for k, v in obj.items():
                if k == "certificate_list" and isinstance(v, (list, tuple)):
                    out[k] = [c for c in v if self._cert_clean(c)]
                elif k == "mitmcert" and v is not None:
                    out[k] = v if self._cert_clean(v) else None
                else:
                    out[self._walk(k, None) if isinstance(k, (str, bytes)) else k] = self._walk(v, k)
            return out
        if isinstance(obj, str):
            return obj if key is not None and generated_id(key, obj) else self.text(obj)
        if isinstance(obj, (bytes, bytearray)):
            return self.data(bytes(obj))
        if isinstance(obj, list):
            return [self._walk(v, None) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self._walk(v, None) for v in obj)
        return obj

    def _message(self, msg: dict) -> dict:
        body = msg.get("content")
        out = self._walk({k: v for k, v in msg.items() if k != "content"}, None)
        if not body:
            out["content"] = body
            return out
        headers = list(out.get("headers") or ())
        coding = b", ".join(v for k, v in headers if k.lower() == b"content-encoding").decode("latin-1")
        try:
            plain = decode(body, coding, _SEAL_LIMITS) if coding else body
        except Exception:  # undecodable, unsupported or too large: not stored
            plain = None
        if plain is None or len(plain) > MAX_SEALED_BODY:
            out["headers"] = tuple((k, v) for k, v in headers if k.lower() != b"content-encoding")
            out["content"] = WITHHELD
            return out
        clean = self.data(plain)
        if clean == plain:
            out["content"] = body  # nothing to change: kept as encoded, as the reader expects
        else:  # stored decoded: re-encoding would only cost time on the writer thread
            out["headers"] = tuple((k, v) for k, v in headers if k.lower() != b"content-encoding")
            out["content"] = clean
        return out

    def _cert_clean(self, pem) -> bool:
        if not isinstance(pem, (str, bytes)):
            return False
        verdict = self.certs.get(pem)
        if verdict is None:
            verdict = self._check_cert(pem)
            if len(self.certs) >= SEAL_MEMO_MAX:
                self.certs.clear()
            self.certs[pem] = verdict
        return verdict

    def _check_cert(self, pem) -> bool:
        text = pem.decode("latin-1") if isinstance(pem, bytes) else pem
        try:
            der = base64.b64decode("".join(ln for ln in text.splitlines() if not ln.startswith("-----")))
        except ValueError:
            return False
        return self.data(der) == der and self.text(text) == text


def serialize(flow, scrubber: "Scrubber") -> dict:
    """What is stored of a flow (the flow, or its get_state() snapshot): the scrubbed copy,
    serialized, then sealed."""
    state = scrubber.state(flow) if isinstance(flow, dict) else scrubber.flow(flow, copy=False).get_state()
    return StateSeal(redactor=scrubber.redactor, memo=scrubber.seal_memo).state(state)


def _weight(flow) -> int:
    """What a queued flow (or its get_state() snapshot) holds in bodies, plus a little for the rest."""
    if isinstance(flow, dict):
        msgs = [flow.get("request"), flow.get("response")]
        body = sum(len(m.get("content") or b"") for m in msgs if isinstance(m, dict))
        ws = (flow.get("websocket") or {}).get("messages") or ()
        return 1024 + body + sum(len(m[2]) for m in ws if isinstance(m, (list, tuple)) and len(m) > 2
                                 and isinstance(m[2], (bytes, str)))
    msgs = [m for m in (getattr(flow, "request", None), getattr(flow, "response", None)) if m is not None]
    return 1024 + sum(len(m.raw_content or b"") for m in msgs)


class RecordingFiles:
    """Owns the recording files on a background thread: append, rotate, sign.

    Outages cost bounded space, memory and files:
      * A write that fails (ENOSPC, EIO, ...) keeps the file it was writing: the retry
        reopens that same file, cuts it back to the end of its last whole flow (a
        partial write is undone) and goes on there. One outage, one file.
      * At most `max_queue` flows wait in memory. Past that a flow is not queued but
        counted; so are refused flows while writing fails (the audit trail already
        records those refusals, coalesced). The count is reported as a
        `recordings_dropped` event (an alert) once writing works again, or every
        DROP_REPORT_SECONDS while it does not.
      * Past `max_queue_bytes` of bodies waiting, `backlogged()` says so and the Recorder
        holds each response until its flow is written: backpressure, nothing dropped. While
        writing fails, flows past that budget are dropped and counted instead.
      * `put()` returns a number; `awritten(n)` says when that flow is in the file
        (handed to the kernel: it survives the gateway being killed). The Recorder
        holds each response until then, so no answered flow is missing after a crash.
    At start, files left unsigned by a crash are checked: a torn last flow is cut off
    (`recording_repaired`, with the bytes cut) and the file signed; a file that is not
    a sequence of whole flows before its end is renamed `.torn` and never signed
    (`recording_quarantined`).
    """

    def __init__(self, directory: str, key, rotate_bytes: int, rotate_seconds: float, on_state=None, *,
                 max_queue: int = 10000, on_event=None, retry_interval: float = 0.5, opener=None,
                 max_queue_bytes: int = 128 << 20):
        self.directory = os.path.abspath(directory)
        self.key, self.rotate_bytes, self.rotate_seconds = key, rotate_bytes, rotate_seconds
        self.on_state, self.on_event = on_state, on_event
        self.max_queue, self.retry_interval = max_queue, retry_interval
        self.max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0  # body bytes of the flows queued or being scrubbed, not yet written
        self._opener = opener or open
        self._items: deque = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._seq = 0  # numbers handed out by put()
        self._done = 0  # every flow up to this number is written (or given up)
        self._lost: set[int] = set()  # numbers given up without being written
        self._waiters: list = []  # heap of (seq, tie, loop, future)
        self._tie = itertools.count()
        self.dropped = 0
        self._reported, self._reported_at = 0, time.monotonic()
        self.failure: str | None = None
        self._fo = self._path = None
        self._good = 0  # end of the last whole flow in the current file
        self._to_sign: str | None = None  # closed, not signed yet (signing failed)
        self._to_sign_written: tuple[str, int] | None = None  # its running digest and size
        self._hash = None  # sha256 of the open file's bytes [0, _good): signed at rotation, never re-read
        self._opened = 0.0
        self._synced, self._dirty = 0.0, False
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        self._seal_leftovers()
        self.thread = threading.Thread(target=self._run, name="pangate-recorder", daemon=True)
        self.thread.start()

    # -- start: crash leftovers ---------------------------------------------------------

    def _seal_leftovers(self) -> None:
        """Files left open by a crash: cut a torn last flow, quarantine garbage, sign the rest."""
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if not name.endswith(SUFFIX) or os.path.exists(path + ".sig"):
                continue
            good, size, whole = scan_flows(path)
            if not whole:
                os.replace(path, path + ".torn")
                log.error("pangate recording: %s is not a sequence of whole flows (from byte %d); "
                          "kept as %s.torn, unsigned", name, good, name)
                self._event("recording_quarantined", alert=True, file=name, torn_at=good, size=size)
                continue
            if good < size:
                with open(path, "r+b") as fo:
                    fo.truncate(good)
                    os.fsync(fo.fileno())
                log.warning("pangate recording: %s ended in a torn flow; cut %d bytes", name, size - good)
                self._event("recording_repaired", alert=False, file=name, cut_bytes=size - good, kept_bytes=good)
            sign_file(path, self.key)

    # -- producer side (event loop) -----------------------------------------------------

    def put(self, item, refused: bool = False) -> int | None:
        """Queue (flow or its get_state() snapshot, scrubber); its number, or None if it was counted
        as dropped instead."""
        with self._cv:
            if (self._stopping or len(self._items) >= self.max_queue or (refused and self.failure is not None)
                    or (self.failure is not None and self._queued_bytes > self.max_queue_bytes)):
                self.dropped += 1
                return None
            self._seq += 1
            weight = _weight(item[0])
            self._queued_bytes += weight
            self._items.append((self._seq, item, weight))
            self._cv.notify()
            return self._seq

    def backlogged(self) -> bool:
        """More body bytes wait to be recorded than the budget: the writer is behind. Not while
        writing fails: a held response would not help it catch up, so past the budget flows are
        dropped and counted instead (recordings_dropped), as refused ones are."""
        return self.failure is None and self._queued_bytes > self.max_queue_bytes

    def written(self, seq: int) -> bool:
        with self._cv:
            return seq <= self._done and seq not in self._lost

    async def awritten(self, seq: int, timeout: float) -> bool:
        """Wait until flow `seq` is in its file; False if it was given up or the time ran out."""
        loop = asyncio.get_running_loop()
        with self._cv:
            if seq <= self._done:
                return seq not in self._lost
            fut = loop.create_future()
            heapq.heappush(self._waiters, (seq, next(self._tie), loop, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self.thread.join(10)

    # -- writer thread ------------------------------------------------------------------

    def _take(self) -> tuple[list, bool]:
        with self._cv:
            if not self._items and not self._stopping:
                self._cv.wait(SYNC_SECONDS)
            batch, size = [], 0
            # The rest waits for the next round: a batch is scrubbed whole before it is written,
            # so its bytes are bounded too (a quarter of the budget, at least one flow).
            while self._items and len(batch) < BATCH and (not batch or size < self.max_queue_bytes // 4):
                seq, item, weight = self._items.popleft()
                batch.append((seq, item, weight))
                size += weight
            return batch, self._stopping and not self._items

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            pending = []
            with LOOP_FIRST:  # the scrub is pure Python: the event loop gets the GIL back sooner
                for seq, (flow, scrubber), _ in batch:
                    # None: lost, settled in its turn (the flows queued before it are not written yet)
                    pending.append((seq, self._scrub(flow, scrubber)))
            batch_bytes = sum(weight for _, _, weight in batch)
            del batch  # the snapshots: only their sealed states are kept until written
            while True:
                try:
                    self._write(pending)
                    if self.failure is not None:
                        self._state(None)
                    break
                except OSError as e:
                    self._close_quietly()
                    self._state(f"{type(e).__name__}: {e}")
                    with self._cv:
                        if not self._stopping:
                            self._cv.wait(self.retry_interval)  # then the same flows, same file
                        giving_up = self._stopping
                    if giving_up:  # stopping with the disk still refusing: count what is left
                        try:
                            self._write(pending)
                        except OSError:
                            self._close_quietly()
                            with self._cv:
                                rest = [seq for seq, _ in pending] + [seq for seq, _, _ in self._items]
                                self._queued_bytes -= sum(weight for _, _, weight in self._items)
                                self._items.clear()
                            for seq in rest:
                                self._finish(seq, lost=True)
                            with self._cv:
                                self.dropped += len(rest)
                            stop = True
                        break
            with self._cv:
                self._queued_bytes -= batch_bytes
            self._report_drops()
        try:
            self._rotate()
            if self._to_sign:
                sign_file(self._to_sign, self.key, self._to_sign_written)
        except OSError as e:
            log.error("pangate recording: the last file could not be closed and signed: %s", e)
        self._report_drops(final=True)
        self._finish(self._seq, lost=True)  # nobody waits past close

    def _finish(self, seq: int, lost: bool = False) -> None:
        """Flows up to `seq` are settled; wake who waits for them."""
        ready = []
        with self._cv:
            if lost:
                self._lost.update(s for s in range(self._done + 1, seq + 1))
            self._done = max(self._done, seq)
            while self._waiters and self._waiters[0][0] <= self._done:
                s, _, loop, fut = heapq.heappop(self._waiters)
                ready.append((loop, fut, s not in self._lost))
            if len(self._lost) > 4096:  # only numbers someone may still ask about are kept
                self._lost = {s for s in self._lost if s > self._done - 4096}
        for loop, fut, ok in ready:
            settle(loop, fut, ok)

    def _report_drops(self, final: bool = False) -> None:
        with self._cv:
            count = self.dropped - self._reported
            due = final or self.failure is None or time.monotonic() - self._reported_at >= DROP_REPORT_SECONDS
            if not count or not due:
                return
            self._reported, self._reported_at = self.dropped, time.monotonic()
        log.error("pangate recording: %d flows were not recorded (queue full or recordings unwritable)", count)
        self._event("recordings_dropped", alert=True, count=count, total=self.dropped, failure=self.failure)

    def _event(self, kind: str, alert: bool, **fields) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, alert, fields)
            except Exception:
                log.exception("pangate recording: event callback failed")

    @staticmethod
    def _scrub(flow, scrubber: "Scrubber") -> dict | None:
        """The state to store for a flow (see serialize), or a bare stub's if it cannot be made."""
        try:
            return serialize(flow, scrubber)
        except Exception as e:  # never store what could not be scrubbed: keep a bare stub instead
            log.error("pangate recording: a flow could not be scrubbed; only a stub is kept:\n%s", safe_traceback(e))
        try:
            if isinstance(flow, dict):  # a snapshot (Recorder._save)
                flow = Flow.from_state(flow)
            for msg in (flow.request, flow.response):
                if msg is not None:
                    msg.headers.clear()
                    msg.trailers = None
                    msg.content = WITHHELD
            flow.request.path = "/"  # path and query can carry card numbers and secrets
            flow.request.authority = ""
            if flow.websocket is not None:
                flow.websocket.messages = []
            if flow.error is not None:
                flow.error.msg = "[withheld]"
            flow.comment = ""
            flow.metadata = {}
            return StateSeal().state(flow.get_state())
        except Exception as e2:
            log.error("pangate recording: not even a stub of a flow could be kept: %s", type(e2).__name__)
            return None

    def _write(self, pending: list) -> None:
        if self._to_sign:  # a rotation whose signature failed: signed before anything new
            sign_file(self._to_sign, self.key, self._to_sign_written)
            self._to_sign = self._to_sign_written = None
        self._rotate_if_due()
        while pending:
            if self._fo is None:
                self._open()
            seq, state = pending[0]
            if state is None:
                pending.pop(0)
                self._finish(seq, lost=True)
                continue
            data = tnetstring.dumps(state)  # as mitmproxy's FlowWriter.add writes get_state()
            self._fo.write(data)
            self._fo.flush()
            good = self._fo.tell()
            if self._hash is not None and good == self._good + len(data):
                self._hash.update(data)
            else:  # not the bytes counted: the rotation reads the file instead
                self._hash = None
            self._good = good
            self._dirty = True
            pending.pop(0)  # written: a retry after a failure resumes after it, no duplicates
            self._finish(seq)
            self._rotate_if_due()
        now = time.monotonic()
        if self._fo is not None and self._dirty and now - self._synced >= SYNC_SECONDS:
            os.fsync(self._fo.fileno())  # group commit: one fsync per window
            self._synced, self._dirty = now, False

    def _rotate_if_due(self) -> None:
        if self._path is not None and (time.time() - self._opened >= self.rotate_seconds
                                       or self._good >= self.rotate_bytes):
            self._rotate()

    def _open(self) -> None:
        if self._path is not None and os.path.exists(self._path):
            # The file of this outage: cut back to its last whole flow, go on from there.
            fo = self._opener(self._path, "r+b")
            try:
                fo.truncate(self._good)
                fo.seek(self._good)
            except BaseException:
                fo.close()
                raise
            self._fo = fo
            return
        if self._path is not None:
            log.error("pangate recording: %s vanished while it could not be written; starting a new file",
                      self._path)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        n = 1
        while os.path.exists(path := os.path.join(self.directory, f"flows-{stamp}-{n:03d}{SUFFIX}")):
            n += 1
        self._fo = self._opener(path, "xb")
        self._path, self._opened, self._good = path, time.time(), 0
        self._hash = hashlib.sha256()

    def _rotate(self) -> None:
        if self._path is None:
            return
        if self._fo is None:
            self._open()  # closed by a failure: reopened (and cut back) to be closed properly
        self._fo.flush()
        os.fsync(self._fo.fileno())
        self._fo.close()
        self._fo = None
        self._dirty = False
        written = (self._hash.hexdigest(), self._good) if self._hash is not None else None
        self._to_sign, self._to_sign_written = self._path, written
        self._path, self._good, self._hash = None, 0, None
        sign_file(self._to_sign, self.key, written)
        self._to_sign = self._to_sign_written = None

    def _close_quietly(self) -> None:
        if self._fo is not None:
            try:
                self._fo.close()
            except OSError:
                pass
            self._fo = None

    def _state(self, failure: str | None) -> None:
        with self._cv:
            self.failure = failure
        if self.on_state:
            self.on_state(failure)


def scan_flows(path: str) -> tuple[int, int, bool]:
    """(end of the last whole flow, file size, whether all before that end are whole flows
    and only a torn tail -- a frame the file ends inside of -- may follow)."""
    size = os.path.getsize(path)
    good = 0
    with open(path, "rb") as fo:
        while good < size:
            fo.seek(good)
            head = fo.read(12)
            colon = head.find(b":")
            if colon < 0:
                return good, size, len(head) < 12 and head.isdigit() or not head
            if colon == 0 or not head[:colon].isdigit():
                return good, size, False
            end = good + colon + 1 + int(head[:colon]) + 1
            if end > size:
                return good, size, True  # the file ends inside this flow: a torn tail
            fo.seek(good)
            frame = fo.read(end - good)
            try:
                state = tnetstring.loads(frame)
            except ValueError:
                return good, size, False
            if not isinstance(state, dict):
                return good, size, False
            good = end
    return good, size, True



class Recorder(Component):
    """Saves a masked copy of every finished flow to pangate_recordings_dir."""

    sees_refused = FLOW_HOOKS  # refused flows are recorded too

    problem_code = "recording_unavailable"

    def __init__(self, store, credentials=None):
        self.store = store
        self.credentials = credentials
        self.files: RecordingFiles | None = None
        self._loop = None
        self._failed = False
        self._scrubber: tuple = (None, None, None)  # (policy, secrets, Scrubber): rebuilt when either changes
        self._snapshots = Snapshots()  # flow states for the writer, connections remembered

    def load(self, loader):
        seal_flow_writers()
        loader.add_option("pangate_recordings_dir", str, "var/recordings",
                          "Directory of masked session recordings (mitmproxy flow files); empty disables them.")
        loader.add_option("pangate_recordings_rotate_mb", int, 64, "Start a new recording file at this size.")
        loader.add_option("pangate_recordings_rotate_minutes", int, 60, "Start a new recording file this often.")
        loader.add_option("pangate_recordings_queue", int, 10000,
                          "Most flows waiting in memory to be recorded; past that they are dropped, counted "
                          "and the count audited (recordings_dropped).")
        loader.add_option("pangate_recordings_queue_mb", int, 128,
                          "Most body megabytes waiting in memory to be recorded; past that each response "
                          "waits for its flow to be written (backpressure, nothing dropped).")

    def configure(self, updated):
        keys = {"pangate_recordings_dir", "pangate_recordings_rotate_mb", "pangate_recordings_rotate_minutes",
                "pangate_recordings_queue", "pangate_recordings_queue_mb", "pangate_audit_key"}
        if not keys & set(updated):
            return
        opts = ctx.options
        if opts.pangate_recordings_rotate_mb < 1 or opts.pangate_recordings_rotate_minutes < 1:
            raise exceptions.OptionsError("pangate_recordings_rotate_mb and _minutes must be at least 1")
        if opts.pangate_recordings_queue < 1 or opts.pangate_recordings_queue_mb < 1:
            raise exceptions.OptionsError("pangate_recordings_queue and pangate_recordings_queue_mb must be at least 1")
        if self.files:
            self.files.close()
            self.files = None
        if not opts.pangate_recordings_dir:
            return
        try:
            key = load_or_create_signing_key(opts.pangate_audit_key, opts.pangate_audit_dir)
            self.files = RecordingFiles(opts.pangate_recordings_dir, key, opts.pangate_recordings_rotate_mb << 20,
                                        opts.pangate_recordings_rotate_minutes * 60, self._state_changed,
                                        max_queue=opts.pangate_recordings_queue, on_event=self._event,
                                        max_queue_bytes=opts.pangate_recordings_queue_mb << 20)
        except (OSError, ValueError) as e:
            raise exceptions.OptionsError(f"pangate recordings: {e}") from None

    def running(self):
        self._loop = asyncio.get_running_loop()

    def done(self):
        if self.files:
            self.files.close()
            self.files = None

    def _state_changed(self, failure: str | None) -> None:
        """Writer thread: flip health now (the Guard reads it), report from the event loop."""
        self.healthy = failure is None
        self.problem = f"session recordings cannot be written ({failure}); requests are refused until they can" \
            if failure else ""
        if self._loop is not None and self._failed != (failure is not None):
            self._failed = failure is not None
            kind = "recording_write_failed" if failure else "recording_write_recovered"
            self._loop.call_soon_threadsafe(lambda: events.emit(kind, alert=failure is not None,
                                                                reason=failure or "recovered"))

    def _event(self, kind: str, alert: bool, fields: dict) -> None:
        """Writer thread (or configure, before the loop runs): an event for the audit trail."""
        if self._loop is None:
            events.emit(kind, alert=alert, **fields)
        else:
            self._loop.call_soon_threadsafe(lambda: events.emit(kind, alert=alert, **fields))

    def scrubber(self) -> Scrubber:
        policy = self.store.policy
        secret_map = self.credentials.secrets if self.credentials else None
        if self._scrubber[0] is policy and self._scrubber[1] is secret_map:
            return self._scrubber[2]
        headers, params = set(), set()
        for d in (policy.destinations.values() if policy else ()):
            if d.credential is not None and d.credential.name:
                (params if d.credential.type == "query" else headers).add(d.credential.name)
        secrets = [f for s in secret_map.values() for f in s.forms] if secret_map else []
        scrubber = Scrubber(secrets=secrets, header_names=headers, query_names=params)
        self._scrubber = (policy, secret_map, scrubber)
        return scrubber

    def _save(self, flow) -> int | None:
        fc = FlowContext.of(flow)
        if self.files is None or fc.recording_saved:
            return None
        fc.recording_saved = True
        # Scrubbed on the writer thread: masking a copy must not stall the event loop. The loop
        # only takes the flow's state (what FlowWriter would read; chain.snapshot).
        return self.files.put((self._snapshots.flow(flow), self.scrubber()), refused=fc.refused is not None)

    def http_connect(self, flow):
        if flow.response is not None and flow.response.status_code >= 300:
            self._save(flow)

    def response(self, flow):
        if flow.websocket is not None or self.files is None or FlowContext.of(flow).recording_saved:
            return None
        seq = self._save(flow)
        if not ctx.options.pangate_audit_strict:
            # Default mode: recordings follow the response within the writer's group window,
            # like the audit trail's (the loss bound README states); no response waits for them,
            # unless the writer is behind by more than its byte budget: then this one waits for
            # its flow to be written (backpressure instead of a backlog that grows with the load).
            if seq is not None and self.files is not None and self.files.backlogged():
                return self._wait(seq)
            return None
        if FlowContext.of(flow).refused is not None:
            return None if seq is None else self._wait(seq)  # a refusal is answered either way
        return self._withhold_unless_written(flow, seq)

    async def _wait(self, seq: int) -> bool:
        """The response goes out once its recording is in the file: a crash cannot lose a flow
        its client was answered for."""
        files = self.files
        return files is not None and await files.awritten(seq, WAIT_SECONDS)

    async def _withhold_unless_written(self, flow, seq: int | None) -> None:
        if seq is not None and await self._wait(seq):
            return
        fc = FlowContext.of(flow)
        refuse(flow, 503, "unavailable", "the session recording of this request could not be written; "
               "the response was withheld", self.problem_code)
        events.emit("recording_response_withheld", alert=True, request_id=fc.request_id,
                    reason="dropped" if seq is None else "not written in time")

    def websocket_end(self, flow):
        self._save(flow)

    def error(self, flow):
        self._save(flow)


def seal_flow_writers() -> None:
    """Every flow mitmproxy itself serializes passes the StateSeal too.

    mitmproxy writes flows outside the Recorder: `save_stream_file` (its Save
    addon) and mitmweb's flow download both go through io.FlowWriter.add,
    which dumps `flow.get_state()` as it is. Replacing that one method makes
    them sinks with the same second wall as the recordings. Idempotent across
    script reloads.
    """
    from mitmproxy import io

    if getattr(io.FlowWriter.add, "pangate_sealed", False):
        return

    def add(self, f) -> None:
        tnetstring.dump(StateSeal().state(f.get_state()), self.fo)

    add.pangate_sealed = True
    io.FlowWriter.add = add
