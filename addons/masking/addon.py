"""PAN masking in the data path: nothing readable leaves the gateway towards a workload.

Carriers:

- response headers, masked in `responseheaders` (before a streamed body's
  headers go out);
- buffered response bodies of any content type, decoded from any
  Content-Encoding mitmproxy knows and re-encoded after; form bodies are read
  as a server would (percent-escapes, `+`); a body that cannot be decoded is
  refused, never forwarded unread;
- streamed response bodies (`stream_large_bodies`, `text/event-stream`, and
  any body of unknown length while `stream_large_bodies` is set, because
  mitmproxy would otherwise switch it to raw streaming mid-body with no hook):
  decoded incrementally (gzip, deflate, br, zstd) and masked by
  pan.StreamMasker, which carries state across chunks in bounded memory.
  Content-Encoding is dropped (and Content-Length with it when the body was
  encoded); an identity body keeps its Content-Length because masking keeps
  byte length. If the masker or decoder fails mid-stream nothing more is sent
  and both connections are reset, so the client sees an error, not a clean
  truncated body;
- an injected credential echoed in a body is starred in the same pass, buffered
  or streamed (Credentials redacts it from headers);
- websocket messages: server to client masked; client to server checked by
  dlp.py and forwarded as sent to a card-data destination;
- at rest: once a request has been sent (response or error hook) its URL,
  headers and body are masked in the flow, and so are websocket messages
  already forwarded, so flow files and mitmweb keep only masked values.

Reveal (dlp.py): a revealed response body reaches the client unmasked by
streaming it, so the flow never stores it; headers stay masked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib


from pangate.chain.context import DropUpstreamBody, FlowContext, is_refused, refuse
from pangate.chain.failsafe import Component, safe_traceback
from pangate.chain.scrub import rewrite_body, rewrite_headers
from pangate.chain.wire import abort_connections, may_stream
from pangate.pan.engine import Masker, masker_from
from pangate.policy.model import Policy

log = logging.getLogger("pangate")
# Decoded output handed to the masker per step: bounds memory on highly compressed input.
_STEP = 1 << 20


def masker_for(policy: Policy) -> Masker:
    """The gateway's masker for a policy's `settings.masking` (also used by `pangate mask`)."""
    return masker_from(policy.masking.mode, policy.masking.hmac_key_env, os.environ)


# ---- incremental Content-Encoding decoders ------------------------------------------
class _Zlib:
    def __init__(self, wbits: int | None):
        self.wbits = wbits  # None: deflate, zlib-wrapped or raw, decided on the first bytes
        self.d = zlib.decompressobj(wbits) if wbits is not None else None
        self.head = b""

    def __call__(self, data: bytes):
        if self.d is None:
            self.head += data
            if len(self.head) < 2:
                return
            b0, b1 = self.head[0], self.head[1]
            zlib_wrapped = b0 & 0x0F == 8 and (b0 << 8 | b1) % 31 == 0
            self.d = zlib.decompressobj(15 if zlib_wrapped else -15)
            data, self.head = self.head, b""
        d = self.d
        while data:
            out = d.decompress(data, _STEP)
            if out:
                yield out
            data = d.unconsumed_tail
            if d.eof and d.unused_data and self.wbits == 31:  # concatenated gzip members
                data, self.d = d.unused_data, zlib.decompressobj(31)
                d = self.d

    def end(self):
        if self.d is None:
            if self.head:
                raise ValueError("truncated deflate body")
            return
        tail = self.d.flush()
        if tail:
            yield tail
        if not self.d.eof:
            raise ValueError("truncated compressed body")


class _Brotli:
    def __init__(self):
        import brotli
        self.d = brotli.Decompressor()

    def __call__(self, data: bytes):
        out = self.d.process(data)
        if out:
            yield out

    def end(self):
        if not self.d.is_finished():
            raise ValueError("truncated brotli body")
        return ()


class _Zstd:
    def __init__(self):
        try:
            from compression import zstd
        except ImportError:
            from backports import zstd
        self.new = zstd.ZstdDecompressor
        self.d, self.open = self.new(), False

    def __call__(self, data: bytes):
        while data or (self.open and not self.d.needs_input and not self.d.eof):
            self.open = True
            out = self.d.decompress(data, _STEP)
            if out:
                yield out
            data = b""
            if self.d.eof:  # the next frame, if any
                data, self.d, self.open = self.d.unused_data, self.new(), False

    def end(self):
        if self.open:
            raise ValueError("truncated zstd body")
        return ()


class _Identity:
    def __call__(self, data: bytes):
        yield data

    def end(self):
        return ()


DECODERS = {"": _Identity, "identity": _Identity, "gzip": lambda: _Zlib(31), "x-gzip": lambda: _Zlib(31),
            "deflate": lambda: _Zlib(None), "br": _Brotli, "zstd": _Zstd}


def stream_decoder(content_encoding: str):
    """An incremental decoder for a Content-Encoding value; ValueError if unsupported."""
    enc = content_encoding.strip().lower()
    if enc not in DECODERS:
        raise ValueError(f"cannot decode a streamed body with Content-Encoding {enc!r}")
    return DECODERS[enc]()


# ---- the stream callable ---------------------------------------------------------------
class BodyStream:
    """flow.response.stream: decode, mask, emit; b"" marks the end (flush).

    `events=True` (text/event-stream) also flushes at each blank line, so an
    event is delivered as soon as it is complete instead of waiting for the
    masker's lookahead. `reveal=True` emits the decoded body unmasked and only
    counts the PANs.
    """

    def __init__(self, flow, masker: Masker, decoder, events: bool = False, reveal: bool = False,
                 redact: tuple[bytes, ...] = ()):
        self.flow = flow
        self.decoder = decoder
        self.redact = _Redact(redact) if redact else None
        self.sm = masker.stream()
        self.events = events
        self.reveal = reveal
        self.failed = False
        self.tail = b""  # last decoded bytes, for the SSE event boundary

    def __call__(self, chunk: bytes) -> list[bytes]:
        if self.failed:
            return []
        try:
            return self._step(chunk)
        except Exception as e:
            self._fail(e)
            return []

    def _step(self, chunk: bytes) -> list[bytes]:
        parts = list(self.decoder(chunk) if chunk else self.decoder.end())
        for p in parts:
            self.tail = (self.tail + p)[-4:]
        # An SSE event is complete at a blank line of the *decoded* body; a PAN,
        # SAD value or secret never spans one, so every stage may flush there.
        boundary = bool(chunk) and self.events and (self.tail.endswith(b"\n\n") or self.tail.endswith(b"\r\n\r\n"))
        if self.redact is not None:
            parts = [self.redact.feed(p) for p in parts]
            if boundary or not chunk:
                parts.append(self.redact.flush())
        out = []
        for part in parts:
            masked = self.sm.feed(part)
            out.append(part if self.reveal else masked)
        if boundary or not chunk:
            tail = self.sm.flush()
            if not self.reveal:
                out.append(tail)
            if not chunk:
                self._note()
        return [o for o in out if o]

    def _note(self) -> None:
        fc = FlowContext.of(self.flow)
        if self.redact is not None and self.redact.count and isinstance(fc.credential, dict):
            fc.credential["echo_redacted"] = True
        if self.reveal:
            fc.reveal["pans_revealed"] = self.sm.count
        else:
            fc.add_pans_masked(self.sm.count)

    def _fail(self, exc: Exception) -> None:
        self.failed = True
        reason = "the response body could not be masked; the stream was cut"
        fc = FlowContext.of(self.flow)
        log.error("pangate masking stream failed (request_id=%s):\n%s", fc.request_id, safe_traceback(exc))
        fc.error = reason
        fc.failed_hook = "ResponseMasking.stream"
        abort_connections(self.flow, self.flow.client_conn, self.flow.server_conn)


class _Redact:
    """Stars every occurrence of the given secrets in a stream (same length).

    Complete occurrences in carry+data are replaced; one that is not complete
    yet can only start in the last len(secret)-1 bytes, which are held back.
    """

    def __init__(self, needles):
        self.needles = [n for n in needles if n]
        self.keep = max(map(len, self.needles), default=1) - 1
        self.carry = b""
        self.count = 0

    def feed(self, data: bytes) -> bytes:
        buf = self.carry + data
        for n in self.needles:
            if n in buf:
                self.count += buf.count(n)
                buf = buf.replace(n, b"*" * len(n))
        cut = max(0, len(buf) - self.keep)
        self.carry = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        out, self.carry = self.carry, b""
        return out


OFFLOAD_BYTES = 256 * 1024

# ---- the addon ---------------------------------------------------------------------------
class ResponseMasking(Component):
    """Masks PANs and strips sensitive authentication data from everything that flows back."""

    # What is kept of a flow is masked whether or not it was refused; a response
    # body is masked only for a flow that was not (a refusal replaced it).
    sees_refused = frozenset({"requestheaders", "request", "responseheaders", "error",
                              "websocket_message", "websocket_end"})

    def __init__(self, store, credentials=None):
        self.store = store
        # Credentials redacts an echoed secret from headers; bodies are redacted
        # here, in the one pass that decodes and masks them.
        self.credentials = credentials
        self.masker = Masker()
        store.subscribe(self._policy_changed)

    def _policy_changed(self, policy: Policy) -> None:
        self.masker = masker_for(policy)

    # -- requests refused before they left: keep (and let mitmdump print) only the masked form
    def requestheaders(self, flow):
        if is_refused(flow):
            self._refused(flow)

    def request(self, flow):
        if is_refused(flow):
            self._refused(flow)

    def _refused(self, flow) -> None:
        scrub_request(self.masker, flow)
        del FlowContext.of(flow).reveal  # nothing was revealed: the record must not say so

    # -- responses
    def responseheaders(self, flow):
        try:
            self._responseheaders(flow)
        except Exception as e:
            # Not left to failsafe: its buffered refusal could still be switched
            # to raw streaming by mitmproxy under stream_large_bodies.
            log.error("pangate ResponseMasking.responseheaders failed; flow refused:\n%s", safe_traceback(e))
            refuse(flow, 502, "gateway_error", "an internal check failed (ResponseMasking.responseheaders); "
                   "the response was not forwarded", "internal_error")  # drops the upstream body
            FlowContext.of(flow).failed_hook = "ResponseMasking.responseheaders"

    def _responseheaders(self, flow):
        # The request has been sent: from now on the flow keeps (and mitmdump
        # prints, from its `response` hook on) only its masked form.
        scrub_request(self.masker, flow)
        fc = FlowContext.of(flow)
        if fc.refused is not None:
            # An addon refused this response (or failed on it) after the upstream
            # answered. Buffering is not enough: mitmproxy would later switch a
            # large upstream body to raw streaming under the refusal's headers.
            # So the upstream body is read and dropped, and the refusal sent.
            flow.response.stream = DropUpstreamBody(flow.response.content or b"")
            del fc.reveal
            return
        resp = flow.response
        fc.add_pans_masked(mask_headers(self.masker, resp.headers))
        reveal = fc.reveal is not None
        events = resp.headers.get("content-type", "").lower().startswith("text/event-stream")
        if not (resp.stream or events or reveal or may_stream(flow, response=True)):
            return  # buffered: masked whole in `response`
        enc = resp.headers.get("content-encoding", "")
        try:
            decoder = stream_decoder(enc)
        except ValueError as e:
            refuse(flow, 502, "gateway_error", str(e), "unsupported_encoding")  # drops the upstream body
            del fc.reveal
            return
        resp.headers.pop("content-encoding", None)  # what goes out is decoded
        if enc.strip().lower() not in ("", "identity"):
            if "content-length" in resp.headers:
                resp.headers.pop("content-length")
                if not (flow.request.is_http2 or flow.request.is_http3):
                    resp.headers["transfer-encoding"] = "chunked"
        resp.stream = BodyStream(flow, self.masker, decoder, events=events, reveal=reveal,
                                 redact=self._secrets_of(flow))
        fc.streamed = True

    def _secrets_of(self, flow) -> tuple[bytes, ...]:
        secret = self.credentials.secret_sent(flow) if self.credentials is not None else None
        return tuple(f.encode() for f in secret.forms) if secret is not None else ()

    def response(self, flow):
        resp = flow.response
        if resp is None:
            return None
        fc = FlowContext.of(flow)
        if fc.streamed:
            if resp.raw_content:  # store_streamed_bodies: keep the stored copy masked at rest
                resp.content = self.masker.mask(resp.content)[0]
            return None
        count = mask_headers(self.masker, resp.headers)
        secrets = self._secrets_of(flow)
        if resp.raw_content and len(resp.raw_content) > OFFLOAD_BYTES:
            return self._mask_off_loop(flow, count, secrets)
        n, echoed = mask_response_body(self.masker, resp, secrets)
        self._masked(fc, count + n, echoed)
        return None

    async def _mask_off_loop(self, flow, count: int, secrets) -> None:
        # A big body is decoded, scanned and re-encoded on a worker thread, so the
        # event loop keeps serving other flows meanwhile (no 100 ms stalls). It is
        # taken out of the flow meanwhile: mitmweb must not read it unmasked.
        resp = flow.response
        work = resp.copy()
        resp.raw_content = b""
        n, echoed = await asyncio.to_thread(mask_response_body, self.masker, work, secrets)
        flow.response = work
        self._masked(FlowContext.of(flow), count + n, echoed)

    @staticmethod
    def _masked(fc: FlowContext, count: int, echoed: bool) -> None:
        if echoed:
            fc.credential["echo_redacted"] = True
        fc.response_masked = True  # the recorder need not scan it again
        fc.add_pans_masked(count)

    def error(self, flow):
        scrub_request(self.masker, flow)

    # -- websockets
    def websocket_message(self, flow):
        messages = flow.websocket.messages
        msg = messages[-1]
        fc = FlowContext.of(flow)
        if not msg.from_client and not msg.dropped and fc.reveal is None:
            out, n = self.masker.mask(msg.content)
            if n or out != msg.content:
                msg.content = out
                fc.pans_masked = fc.pans_masked + n
        # Messages already forwarded are kept masked at rest (flow files, mitmweb).
        for old in messages[-2:-1]:
            _mask_message_at_rest(self.masker, old)

    def websocket_end(self, flow):
        for msg in flow.websocket.messages:
            _mask_message_at_rest(self.masker, msg)


def _mask_message_at_rest(masker: Masker, msg) -> None:
    out, n = masker.mask(msg.content)
    if n:
        msg.content = out


def mask_response_body(masker: Masker, resp, secrets: tuple[bytes, ...] = ()) -> tuple[int, bool]:
    """Mask a buffered response body in place and star any echoed secret in it.

    Returns (PANs masked, whether a secret was echoed); raises on a body it
    cannot decode, which the flow's refusal then replaces.
    """
    body = resp.get_content(strict=True)
    if not body:
        return 0, False
    redacted = body
    for s in secrets:
        redacted = redacted.replace(s, b"*" * len(s))
    masked, n = mask_body(masker, redacted, resp.headers.get("content-type", ""))
    if n or masked != body:
        resp.set_content(masked)
    return n, redacted != body


def mask_headers(masker: Masker, headers) -> int:
    """Mask card numbers in every header value; returns how many."""
    count = 0

    def mask(value: str) -> str:
        nonlocal count
        masked, k = masker.mask_text(value)
        if "%" in masked:  # percent-encoded digits or separators (Location, Link, ...)
            masked, k2 = masker.mask_url(masked)
            k += k2
        count += k
        return masked if k else value

    rewrite_headers(headers, mask)
    return count


def mask_body(masker: Masker, body: bytes, content_type: str = "") -> tuple[bytes, int]:
    """A decoded body masked; form bodies also as a server decodes them (`+`, `%xx`)."""
    out, n = masker.mask(body)
    if "x-www-form-urlencoded" in content_type.lower():
        text, k = masker.mask_url(out.decode("latin-1"))
        out, n = text.encode("latin-1"), n + k
    return out, n


def scrub_request(masker: Masker, flow) -> None:
    """Mask the request kept in the flow, once it has been sent: nothing raw at rest."""
    req = flow.request
    path, n = masker.mask_url(req.path)
    if n:
        req.path = path
    mask_headers(masker, req.headers)
    if not req.raw_content:
        return

    def masked(body: bytes) -> bytes | None:
        out, k = mask_body(masker, body, req.headers.get("content-type", ""))
        return out if k or out != body else None

    def dropped(_req) -> None:
        req.content = b""  # cannot read it, so cannot vouch for it: drop the kept copy
        FlowContext.of(flow).request_body_dropped = True

    rewrite_body(req, masked, dropped)
