"""PAN masking in the data path: nothing readable leaves the gateway towards a workload.

Carriers:

- the status line's reason phrase and every response header name and value,
  masked in `responseheaders` (before a streamed body's headers go out) in
  every normalized view (pan.views); one that cannot be read with confidence
  refuses the response with its code;
- buffered response bodies of any content type: decoded within the limits of
  `pangate_max_decoded_mb` / `pangate_max_decode_ratio` (masking.decoders:
  stacked codings such as "gzip, br" too; past a limit: 502
  `decoded_body_too_large`), masked in every view of every declared
  Content-Type (`pan.views.mask_views`: charsets, UTF-16/32, JSON/HTML/percent
  escapes, Unicode digits and separators) and re-encoded (a stacked coding is
  sent decoded). A body that cannot be decoded or read with confidence is
  refused (502 with the precise code), never forwarded unread. Big or
  compressed bodies are decoded and masked on a worker thread;
- streamed response bodies (`stream_large_bodies`, `text/event-stream`, and
  any body of unknown length while `stream_large_bodies` is set, because
  mitmproxy would otherwise switch it to raw streaming mid-body with no hook):
  decoded incrementally within the same limits and masked by
  masking.bodies.MaskStream (raw view while the body is plain ASCII, every
  view in bounded windows from the first chunk that needs them). A decoded
  body is sent without Content-Encoding and Content-Length; an identity body
  keeps its Content-Length and the stream is cut if masking would change its
  length. If masking or decoding fails mid-stream nothing more is sent and
  both connections are reset (the flow records the code), so the client sees
  an error, not a clean truncated body;
- response trailers (HTTP/2), masked in `response`;
- byte ranges: toward a card-data destination `Range`/`If-Range` are stripped
  (settings.range: strip, the default) so the body is fetched, and masked,
  whole; or refused (settings.range: refuse, 403 `range_refused`). A 206
  from a card-data destination is refused (502 `partial_content`);
- an injected credential echoed in a body, websocket message or control frame
  is starred in the same pass in every echo form (credentials.forms; Credentials
  redacts headers);
- websocket messages and ping/pong/close payloads server to client, masked
  (control frames have no mitmproxy hook: `control_filters` wraps the frame
  writer); client to server checked by dlp;
- at rest: once a request has been sent (response or error hook) its URL,
  headers, trailers and body are masked in the flow, and so are websocket
  messages already forwarded and the close reason, so flow files and mitmweb
  keep only masked values.

Reveal (dlp): a revealed response body reaches the client unmasked by
streaming it, so the flow never stores it; headers stay masked.
"""

from __future__ import annotations

import asyncio
import logging
import os

from pangate.chain.context import DropUpstreamBody, FlowContext, cut, is_refused, refuse
from pangate.chain.failsafe import Component, safe_traceback
from pangate.chain.wire import abort_connections, may_stream
from pangate.credentials.forms import Redactor
from pangate.masking.bodies import MaskStream, mask_body, mask_decoded
from pangate.masking.decoders import DecodeError, Decoder, Limits, decode, parse_encodings
from pangate.pan.engine import Masker, masker_from
from pangate.pan.views import UndecodableBody, mask_views, raw_view_suffices
from pangate.policy.model import Policy

log = logging.getLogger("pangate")
__all__ = ["ResponseMasking", "BodyStream", "mask_body", "mask_headers", "scrub_request", "masker_for",
           "limits_from", "control_filters"]
# Codings mitmproxy can write back after a body was masked; a stack is sent decoded instead.
_REENCODE = frozenset({"gzip", "deflate", "br", "zstd"})
OFFLOAD_BYTES = 256 * 1024  # a buffered body this big is decoded and masked off the event loop
KEPT_LIMITS = Limits(max_bytes=4 << 20, max_ratio=200.0, ratio_floor=1 << 20)
OFFLOAD_ENCODED = 1024  # so is any compressed body past this: it may inflate by orders of magnitude


def masker_for(policy: Policy) -> Masker:
    """The gateway's masker for a policy's `settings.masking` (also used by `pangate mask`)."""
    return masker_from(policy.masking.mode, policy.masking.hmac_key_env, os.environ)


def limits_from(options) -> Limits:
    """Decoding limits from the pangate_max_decoded_mb / pangate_max_decode_ratio options."""
    return Limits(max_bytes=int(getattr(options, "pangate_max_decoded_mb", 256)) << 20,
                  max_ratio=float(getattr(options, "pangate_max_decode_ratio", 200)))


def content_types(headers) -> list[str]:
    """Every declared Content-Type (a message may carry several; each reader may pick another), or [""]."""
    return headers.get_all("content-type") or [""]


# ---- the stream callable ---------------------------------------------------------------
class BodyStream:
    """flow.response.stream: decode (bounded), redact, mask, emit; b"" marks the end (flush).

    `events=True` (text/event-stream) also flushes at each blank line, so an
    event is delivered as soon as it is complete instead of waiting for the
    masker's lookahead. `reveal=True` emits the decoded body unmasked and only
    counts the PANs. Masking is masking.bodies.MaskStream: raw view while the
    body is plain ASCII, every normalized view from the first chunk that needs
    them. A body that passes a decoding limit, cannot be decoded, or cannot be
    read with confidence cuts the stream with that code.
    """

    def __init__(self, flow, masker: Masker, decoder: Decoder, events: bool = False, reveal: bool = False,
                 redact=(), content_type: str = "", redactor: Redactor | None = None, keep_length: bool = False):
        self.flow = flow
        self.decoder = decoder
        if redactor is None and redact:
            redactor = Redactor([f.decode("latin-1") if isinstance(f, bytes) else f for f in redact])
        self.ms = MaskStream(masker, content_type, redactor or None, reveal, keep_length)
        self.events = events
        self.reveal = reveal
        self.failed = False
        self.tail = b""  # last decoded bytes, for the SSE event boundary

    def __call__(self, chunk: bytes) -> list[bytes]:
        if self.failed:
            return []
        try:
            return self._step(chunk)
        except (DecodeError, UndecodableBody) as e:
            self._fail(e, e.code)
            return []
        except Exception as e:
            self._fail(e, None)
            return []

    def _step(self, chunk: bytes) -> list[bytes]:
        data = self.decoder.feed(chunk) if chunk else self.decoder.end()
        self.tail = (self.tail + data)[-4:]
        # An SSE event is complete at a blank line of the *decoded* body; a PAN,
        # SAD value or secret never spans one, so every stage may flush there.
        boundary = bool(chunk) and self.events and (self.tail.endswith(b"\n\n") or self.tail.endswith(b"\r\n\r\n"))
        out = self.ms.feed(data)
        if boundary or not chunk:
            out += self.ms.flush()
            if not chunk:
                self._note()
        return [out] if out else []

    def _note(self) -> None:
        fc = FlowContext.of(self.flow)
        if self.ms.echoed and isinstance(fc.credential, dict):
            fc.credential["echo_redacted"] = True
        if self.reveal:
            fc.reveal["pans_revealed"] = self.ms.total
        else:
            fc.add_pans_masked(self.ms.total)

    def _fail(self, exc: Exception, code: str | None) -> None:
        self.failed = True
        fc = FlowContext.of(self.flow)
        if code is not None:
            reason = f"the response body could not be masked ({code}); the stream was cut"
            log.warning("pangate masking stream cut (request_id=%s): %s", fc.request_id, code)
            fc.failed_hook = "ResponseMasking.stream"
            cut(self.flow, 502, code, reason)
            return
        reason = "the response body could not be masked; the stream was cut"
        log.error("pangate masking stream failed (request_id=%s):\n%s", fc.request_id, safe_traceback(exc))
        fc.error = reason
        fc.failed_hook = "ResponseMasking.stream"
        abort_connections(self.flow, self.flow.client_conn, self.flow.server_conn)


# ---- websocket control frames --------------------------------------------------------------
# mitmproxy relays ping, pong and close frames itself, with no addon hook. Each
# function here sees (websocket connection it is sent on, wsproto event) and
# returns the event to send instead; ResponseMasking masks frames to the client,
# Dlp judges frames to a server.
control_filters: list = []


def _install_control_filter() -> None:
    from mitmproxy.proxy.layers import websocket as wsl

    if getattr(wsl.WebsocketConnection.send2, "pangate", False):
        return
    original = wsl.WebsocketConnection.send2

    def send2(self, event):
        for fn in list(control_filters):
            try:
                event = fn(self, event)
            except Exception as e:  # fail closed: the frame goes out empty
                log.error("pangate websocket control filter failed:\n%s", safe_traceback(e))
                event = _emptied(event)
        return original(self, event)

    send2.pangate = True
    wsl.WebsocketConnection.send2 = send2


def control_payload(event) -> bytes | None:
    """The payload of a ping, pong or close frame (the close reason as UTF-8), else None."""
    from wsproto.events import CloseConnection, Ping, Pong
    if isinstance(event, (Ping, Pong)):
        return bytes(event.payload)
    if isinstance(event, CloseConnection):
        return (event.reason or "").encode("utf-8", "surrogatepass")
    return None


def with_payload(event, payload: bytes):
    from wsproto.events import CloseConnection
    if isinstance(event, CloseConnection):
        return CloseConnection(code=event.code, reason=payload.decode("utf-8", "replace"))
    return type(event)(payload=payload)


def _emptied(event):
    return event if control_payload(event) is None else with_payload(event, b"")


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
        self.limits = Limits()
        store.subscribe(self._policy_changed)

    def load(self, loader):
        loader.add_option("pangate_max_decoded_mb", int, 256,
                          "Largest decoded (inflated) body pangate reads to mask or check it, in MiB; "
                          "a bigger one is refused (decoded_body_too_large).")
        loader.add_option("pangate_max_decode_ratio", int, 200,
                          "Largest ratio of decoded to encoded body size past 8 MiB decoded; "
                          "a body that inflates more is refused (decoded_body_too_large).")

    def configure(self, updated):
        from mitmproxy import ctx
        from mitmproxy.exceptions import OptionsError
        if {"pangate_max_decoded_mb", "pangate_max_decode_ratio"} & set(updated):
            if ctx.options.pangate_max_decoded_mb < 1 or ctx.options.pangate_max_decode_ratio < 1:
                raise OptionsError("pangate_max_decoded_mb and pangate_max_decode_ratio must be at least 1")
            self.limits = limits_from(ctx.options)

    def running(self):
        _install_control_filter()
        if self._control not in control_filters:
            control_filters.append(self._control)

    def done(self):
        if self._control in control_filters:
            control_filters.remove(self._control)

    def _policy_changed(self, policy: Policy) -> None:
        self.masker = masker_for(policy)

    # -- requests refused before they left: keep (and let mitmdump print) only the masked form
    def requestheaders(self, flow):
        if is_refused(flow):
            self._refused(flow)
            return
        self._ranges(flow)

    def request(self, flow):
        if is_refused(flow):
            self._refused(flow)

    def _refused(self, flow) -> None:
        scrub_request(self.masker, flow)
        del FlowContext.of(flow).reveal  # nothing was revealed: the record must not say so

    def _card_data(self, flow) -> bool:
        policy, dest = self.store.policy, FlowContext.of(flow).destination
        d = policy.destinations.get(dest) if policy is not None and dest else None
        return bool(d and d.card_data)

    def _ranges(self, flow) -> None:
        """Toward a card-data destination a body is fetched whole, so it is masked whole: fragments
        (each under a detectable run) would otherwise be reassembled by the client."""
        if flow.request.method == "CONNECT" or not self._card_data(flow):
            return
        hdrs = flow.request.headers
        if "range" not in hdrs and "if-range" not in hdrs:
            return
        if getattr(self.store.policy, "range", "strip") == "refuse":
            refuse(flow, 403, "forbidden", "byte ranges are not allowed toward a card-data destination "
                   "(settings.range: refuse)", "range_refused")
            return
        hdrs.pop("range", None)
        hdrs.pop("if-range", None)

    # -- responses
    def responseheaders(self, flow):
        try:
            self._responseheaders(flow)
        except UndecodableBody as e:
            refuse(flow, 502, "gateway_error", f"the response head cannot be read with confidence ({e.code}); "
                   "the response was not forwarded", e.code)
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
        if resp.status_code == 206 and self._card_data(flow):
            # Range headers were stripped: a fragment is one the upstream chose to send. A
            # fragment is masked alone, so a card number cut across two would pass: refused.
            refuse(flow, 502, "gateway_error", "a card-data destination answered with partial content; "
                   "the response was not forwarded", "partial_content")
            del fc.reveal
            return
        fc.add_pans_masked(mask_head(self.masker, resp))
        reveal = fc.reveal is not None
        events = resp.headers.get("content-type", "").lower().startswith("text/event-stream")
        if not (resp.stream or events or reveal or may_stream(flow, response=True)):
            return  # buffered: masked whole in `response`
        enc = resp.headers.get("content-encoding", "")
        try:
            decoder = Decoder(enc, self.limits)
        except DecodeError as e:
            refuse(flow, 502, "gateway_error", f"the response body cannot be decoded ({e.code})", e.code)
            del fc.reveal
            return
        resp.headers.pop("content-encoding", None)  # what goes out is decoded
        if decoder.stages and "content-length" in resp.headers:
            resp.headers.pop("content-length")
            if not (flow.request.is_http2 or flow.request.is_http3):
                resp.headers["transfer-encoding"] = "chunked"
        # An identity body keeps its Content-Length: masking must then keep its length (bodies.py).
        resp.stream = BodyStream(flow, self.masker, decoder, events=events, reveal=reveal,
                                 content_type=resp.headers.get("content-type", ""), redactor=self._redactor(flow),
                                 keep_length="content-length" in resp.headers)
        fc.streamed = True

    def _redactor(self, flow) -> Redactor | None:
        secret = self.credentials.secret_sent(flow) if self.credentials is not None else None
        return secret.redactor if secret is not None else None

    def response(self, flow):
        resp = flow.response
        if resp is None:
            return None
        fc = FlowContext.of(flow)
        try:
            count = mask_head(self.masker, resp)  # again: another addon may have changed it
            if resp.trailers is not None:
                count += mask_fields(self.masker, resp.trailers)
        except UndecodableBody as e:
            return self._unreadable(flow, e)
        if fc.streamed:
            if resp.raw_content:  # store_streamed_bodies: keep the stored copy masked at rest
                _mask_kept(self.masker, resp)
            fc.add_pans_masked(count)
            return None
        raw = resp.raw_content
        redactor = self._redactor(flow)
        if raw and (len(raw) > OFFLOAD_BYTES or (len(raw) > OFFLOAD_ENCODED and parse_encodings_safe(resp))):
            return self._mask_off_loop(flow, count, redactor)
        try:
            n, echoed = mask_buffered(self.masker, resp, self.limits, redactor)
        except (DecodeError, UndecodableBody) as e:
            return self._unreadable(flow, e)
        self._masked(fc, count + n, echoed)
        return None

    async def _mask_off_loop(self, flow, count: int, redactor) -> None:
        # A big (or compressed) body is decoded, scanned and re-encoded on a worker
        # thread, so the event loop keeps serving other flows meanwhile. It is taken
        # out of the flow meanwhile: mitmweb must not read it unmasked.
        resp = flow.response
        work = resp.copy()
        resp.raw_content = b""
        try:
            n, echoed = await asyncio.to_thread(mask_buffered, self.masker, work, self.limits, redactor)
        except (DecodeError, UndecodableBody) as e:
            self._unreadable(flow, e)
            return
        flow.response = work
        self._masked(FlowContext.of(flow), count + n, echoed)

    @staticmethod
    def _unreadable(flow, e) -> None:
        # The code, not the detail: a detail may quote what the upstream declared.
        refuse(flow, 502, "gateway_error", f"the response body could not be masked ({e.code}); "
               "the response was not forwarded", e.code)
        fc = FlowContext.of(flow)
        fc.failed_hook = "ResponseMasking.response"
        del fc.reveal

    @staticmethod
    def _masked(fc: FlowContext, count: int, echoed: bool) -> None:
        if echoed and isinstance(fc.credential, dict):
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
            redactor = self._redactor(flow)
            try:
                out, n, echoed = mask_decoded(self.masker, msg.content, "", redactor)
            except UndecodableBody as e:
                msg.drop()
                cut(flow, 502, e.code, "a websocket message could not be read with confidence; the connection "
                    "was cut")
                return
            if n or out != msg.content:
                msg.content = out
                fc.add_pans_masked(n)
            if echoed and isinstance(fc.credential, dict):
                fc.credential["echo_redacted"] = True
        # Messages already forwarded are kept masked at rest (flow files, mitmweb).
        for old in messages[-2:-1]:
            _mask_message_at_rest(self.masker, old)

    def websocket_end(self, flow):
        for msg in flow.websocket.messages:
            _mask_message_at_rest(self.masker, msg)
        reason = flow.websocket.close_reason
        if reason:
            flow.websocket.close_reason = _mask_or_empty(self.masker, reason.encode("utf-8", "surrogatepass")
                                                         ).decode("utf-8", "replace")

    def _control(self, ws, event):
        """A ping, pong or close frame on its way to the client: masked (and any echoed secret starred)."""
        from mitmproxy.connection import Client
        payload = control_payload(event)
        if payload is None or not payload or not isinstance(ws.conn, Client):
            return event
        out = _mask_or_empty(self.masker, payload)
        return event if out == payload else with_payload(event, out)


def _mask_or_empty(masker: Masker, data: bytes) -> bytes:
    try:
        return mask_views(data, "", masker)[0]
    except UndecodableBody:
        return b""


def _mask_message_at_rest(masker: Masker, msg) -> None:
    out = _mask_or_empty(masker, msg.content)
    if out != msg.content:
        msg.content = out


def _mask_kept(masker: Masker, msg) -> None:
    """The stored copy of a streamed body (store_streamed_bodies), masked; dropped if unreadable."""
    try:
        msg.content = mask_views(msg.get_content(strict=True), msg.headers.get("content-type", ""), masker)[0]
    except ValueError:
        msg.content = b""


def parse_encodings_safe(msg) -> bool:
    """Whether a message declares any Content-Encoding (unknown ones included)."""
    enc = msg.headers.get("content-encoding", "")
    return bool(enc.strip()) and enc.strip().lower() != "identity"


def mask_buffered(masker: Masker, msg, limits: Limits, redactor: Redactor | None = None) -> tuple[int, bool]:
    """Mask a buffered message body in place, in every view of every declared Content-Type, and star any
    echoed secret: decoded within `limits` (stacked codings too), written back in its coding (a stack is
    sent decoded). Returns (values masked, whether a secret was starred); raises DecodeError (code
    decoded_body_too_large past a limit) or UndecodableBody."""
    raw = msg.raw_content
    if not raw:
        return 0, False
    enc = msg.headers.get("content-encoding", "")
    body = decode(raw, enc, limits)
    out, n, echoed = body, 0, False
    for ctype in content_types(msg.headers):
        out, k, e = mask_decoded(masker, out, ctype, redactor)
        n, echoed = n + k, echoed or e
    if out == body:
        return n, echoed
    codings = parse_encodings(enc)
    if codings and not (len(codings) == 1 and codings[0] in _REENCODE):
        msg.headers.pop("content-encoding", None)
    msg.content = out  # re-encoded per the Content-Encoding left; Content-Length follows
    return n, echoed


def _mask_bytes(masker: Masker, data: bytes) -> tuple[bytes, int]:
    """A header name, value or reason phrase, in every view; raises UndecodableBody."""
    return mask_views(data, "", masker)


_DASH_AS_SPACE = bytes.maketrans(b"-", b" ")


def mask_name(masker: Masker, name: bytes, mask=_mask_bytes) -> tuple[bytes, int]:
    """A header name: `-` joins its words (X-Card-4111...), so it is read as a space, not as the
    dash of an id that glues a number to a hex letter."""
    if not name.isascii():
        return mask(masker, name)
    out, n = mask(masker, name.translate(_DASH_AS_SPACE))
    if not n:
        return name, 0
    return bytes(b if b != 32 or a != 45 else 45 for a, b in zip(name, out, strict=True)), n


def _mask_raw(masker: Masker, data: bytes) -> tuple[bytes, int]:
    return masker.mask(data)


def mask_fields(masker: Masker, headers) -> int:
    """Mask card numbers in every header name and value (a name may carry one too); returns how many."""
    count, fields, before = 0, [], tuple(headers.fields)
    # Most heads are plain ASCII: one test for all of them spares each field the views.
    mask = _mask_raw if raw_view_suffices([b for f in before for b in f]) else _mask_bytes
    for name, value in before:
        n2, a = mask_name(masker, name, mask)
        v2, b = mask(masker, value)
        count += a + b
        fields.append((n2, v2))
    fields = tuple(fields)
    if fields != before:
        headers.fields = fields
    return count


def mask_headers(masker: Masker, headers) -> int:
    """Mask card numbers in every header; returns how many (UndecodableBody: a value that cannot be read)."""
    return mask_fields(masker, headers)


def mask_head(masker: Masker, resp) -> int:
    """The status line's reason phrase and the headers of a response, masked; returns how many."""
    n = 0
    if resp.data.reason:
        out, n = _mask_bytes(masker, resp.data.reason)
        if out != resp.data.reason:
            resp.data.reason = out
    return n + mask_fields(masker, resp.headers)


def _scrub_fields(masker: Masker, headers) -> None:
    try:
        mask_fields(masker, headers)
    except UndecodableBody:  # what cannot be read is not kept
        headers.fields = tuple((_mask_or_empty(masker, k), _mask_or_empty(masker, v)) for k, v in headers.fields)


def scrub_request(masker: Masker, flow) -> None:
    """Mask the request kept in the flow, once it has been sent (or refused): nothing raw at rest."""
    req = flow.request
    try:
        path = mask_views(req.data.path, "", masker)[0]
    except UndecodableBody:
        path = masker.mask_url(req.path)[0].encode("utf-8", "surrogateescape")
    if path != req.data.path:
        req.data.path = path
    _scrub_fields(masker, req.headers)
    if req.trailers is not None:
        _scrub_fields(masker, req.trailers)
    if not req.raw_content:
        return
    try:
        # On the event loop: a kept body past KEPT_LIMITS is dropped rather than read here.
        body = decode(req.raw_content, req.headers.get("content-encoding", ""), KEPT_LIMITS)
        out = body
        for ctype in content_types(req.headers):
            out = mask_views(out, ctype, masker)[0]
    except (DecodeError, UndecodableBody):
        req.content = b""  # cannot read it, so cannot vouch for it: drop the kept copy
        FlowContext.of(flow).request_body_dropped = True
        return
    if out != body:
        req.headers.pop("content-encoding", None)
        req.content = out
