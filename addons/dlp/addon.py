"""Outbound DLP and need-to-know reveals: where a card number may go, and who may read one.

Outbound: a PAN in the URL, a request header name or value, a trailer or the
request body, in any normalized view a server could read (pan.views:
charsets and a charset that lies, UTF-16/32 sniffed from BOM or NULs, JSON,
HTML and percent escapes, Unicode digits and separators), sent to a
destination the policy does not mark `card_data`, is refused with 403
`pan_to_non_card_destination` and never reaches the upstream. A body is
judged with every Content-Type it declares (and none), decoded within the
gateway's limits (413 `decoded_body_too_large` past them, on a worker thread
when big or compressed); a body that cannot be read with confidence is
refused (415 with the views' code). The refusal says where the card number
was, never the number.

Streamed request bodies (`stream_large_bodies`) to a non-card destination are
decoded (and forwarded decoded) and checked as they pass by
masking.bodies.MaskStream: only checked bytes are forwarded and, on the first
PAN, both connections are aborted so the upstream sees a truncated, reset
request and the client an error. While `stream_large_bodies` is set, a body
of unknown length (chunked) to a non-card destination goes through the
scanner from the start: mitmproxy would otherwise switch it to raw streaming
mid-body, unseen. To card-data destinations streamed request bodies pass
unchanged.

Websockets to a non-card destination: a client message with a PAN is dropped
and the connection cut; so is a ping, pong or close frame (its payload is
emptied before it is written).

Reveal: a `reveal:` entry lets one identity read full PANs from one
destination, with a written justification. The reveal is noted in the flow's
metadata (and so in its audit record) with the justification and how many
PANs were shown; the PANs themselves are never noted. What is kept (flow
body, records) stays masked: see masking/addon.py.

The decisions (`reveal_for`, `outbound_pan`, `body_contains_pan`,
`is_card_destination`) are pure.
"""

from __future__ import annotations

import asyncio
import logging

from pangate.chain.context import FlowContext, cut, refuse
from pangate.chain.failsafe import Component, safe_traceback
from pangate.chain.wire import may_stream
from pangate.masking.addon import (OFFLOAD_BYTES, OFFLOAD_ENCODED, content_types, control_filters,
                                   control_payload, limits_from, masker_for, scrub_request, with_payload)
from pangate.masking.bodies import MaskStream
from pangate.masking.decoders import DecodeError, DecodeLimit, Decoder, Limits, decode
from pangate.pan.engine import Masker, url_contains_pan
from pangate.pan.views import UndecodableBody, contains_pan_views
from pangate.policy.model import Policy, Reveal

log = logging.getLogger("pangate")
CODE = "pan_to_non_card_destination"
# Headers the gateway itself handles: the proxy token is stripped before the request leaves.
_SKIP_HEADERS = {"proxy-authorization"}


# ---- pure decisions -----------------------------------------------------------
def reveal_for(policy: Policy | None, identity: str | None, destination: str | None) -> Reveal | None:
    """The `reveal:` entry that lets `identity` read full PANs from `destination`, if any."""
    if policy is None or not identity or not destination:
        return None
    for r in policy.reveals:
        if r.identity == identity and r.destination == destination:
            return r
    return None


def is_card_destination(policy: Policy | None, destination: str | None) -> bool:
    d = policy.destinations.get(destination) if policy is not None and destination else None
    return bool(d and d.card_data)


def body_contains_pan(body: bytes, content_type: str | list[str] | tuple = "") -> bool:
    """PAN check of a decoded body, read the way the receiving server may read it: in every normalized
    view (pan.views) of every declared Content-Type (a server may pick any of them) and of none
    (sniffed). Raises UndecodableBody when none holds a card number but the body cannot be read with
    confidence."""
    if not body:
        return False
    ctypes = [content_type] if isinstance(content_type, str) else list(content_type)
    undecidable = None
    for ctype in dict.fromkeys([*ctypes, ""]):
        try:
            if contains_pan_views(body, ctype):
                return True
        except UndecodableBody as e:
            undecidable = undecidable or e
    if undecidable is not None:
        raise undecidable
    return False


def _text_has_pan(value: str) -> bool:
    """A URL, header name or header value: as a server decodes it (percent-escapes, `+`) and in every view."""
    if url_contains_pan(value):
        return True
    try:
        return contains_pan_views(value.encode("utf-8", "surrogateescape"), "")
    except UndecodableBody:
        return True  # unreadable to us: not sent to a non-card destination


def outbound_pan(url: str, headers: list[tuple[str, str]], body: bytes | None = None,
                 content_type: str | list[str] = "") -> str | None:
    """Where a request carries a PAN ("url", "header NAME", "header name", "body"), or None.
    Raises UndecodableBody for a body that cannot be read with confidence."""
    if _text_has_pan(url):
        return "url"
    for name, value in headers:
        if name.lower() in _SKIP_HEADERS:
            continue
        if _text_has_pan(name) or _text_has_pan(name.replace("-", " ")):  # "-" joins the words of a name
            return "header name"  # never the name itself: it holds the number
        if _text_has_pan(value):
            return f"header {name}"
    if body and body_contains_pan(body, content_type):
        return "body"
    return None


class RequestScanner:
    """stream callable for a request body to a non-card destination: decoded within limits (a coded
    body is forwarded decoded), checked in every view as it passes (masking.bodies.MaskStream), cut
    at the first card number."""

    def __init__(self, flow, destination: str, decoder: Decoder | None = None, content_type: str = ""):
        self.flow = flow
        self.destination = destination
        self.decoder = decoder or Decoder()
        self.ms = MaskStream(Masker(sad=False), content_type)
        self.stopped = False

    def __call__(self, chunk: bytes) -> bytes:
        if self.stopped:
            return b""
        try:
            if chunk:
                out = self.ms.feed(self.decoder.feed(chunk))
            else:
                out = self.ms.feed(self.decoder.end()) + self.ms.flush()
            if self.ms.total:
                self._stop("a streamed request body carries a card number; "
                           f"destination {self.destination} is not marked card_data", CODE, 403)
                return b""
            return out
        except DecodeLimit as e:
            self._stop(f"the streamed request body {e}", e.code, 413)
        except (DecodeError, UndecodableBody) as e:
            self._stop(f"the streamed request body cannot be read with confidence ({e.code})", e.code, 415)
        except Exception as e:  # fail closed: nothing more goes out
            log.error("pangate dlp stream scanner failed:\n%s", safe_traceback(e))
            self._stop("the request body scanner failed; the request was not completed", "internal_error", 502)
        return b""

    def _stop(self, reason: str, code: str, status: int) -> None:
        self.stopped = True
        log.warning("pangate dlp: %s (request_id=%s)", reason, FlowContext.of(self.flow).request_id)
        cut(self.flow, status, code, reason)


def check_request_body(raw: bytes, content_encoding: str, ctypes: list[str], limits: Limits) -> bool:
    """Whether a buffered request body holds a card number; raises DecodeError/DecodeLimit/UndecodableBody."""
    return body_contains_pan(decode(raw, content_encoding, limits), ctypes)


# ---- the addon -----------------------------------------------------------------------
class Dlp(Component):
    """After Authorize, before Credentials: keeps PANs away from non-card destinations."""

    sees_refused = frozenset({"websocket_message", "websocket_end"})  # every client message is checked

    def __init__(self, store):
        self.store = store
        self.masker = Masker()  # for what is kept of a refused request
        self.limits = Limits()
        self.ws_flows: dict[str, object] = {}  # server connection id -> websocket flow to a non-card host
        store.subscribe(self._policy_changed)

    def _policy_changed(self, policy: Policy) -> None:
        self.masker = masker_for(policy)

    def configure(self, updated):
        from mitmproxy import ctx  # options are declared by ResponseMasking
        if {"pangate_max_decoded_mb", "pangate_max_decode_ratio"} & set(updated):
            self.limits = limits_from(ctx.options)

    def running(self):
        if self._control not in control_filters:
            control_filters.append(self._control)

    def done(self):
        if self._control in control_filters:
            control_filters.remove(self._control)

    def requestheaders(self, flow):
        if flow.request.method == "CONNECT":
            return
        fc = FlowContext.of(flow)
        policy, dest = self.store.policy, fc.destination
        r = reveal_for(policy, fc.caller, dest)
        if r is not None:
            fc.reveal = {"identity": r.identity, "destination": r.destination,
                         "justification": r.justification, "policy_line": r.line}
        if is_card_destination(policy, dest):
            return
        where = outbound_pan(flow.request.url, flow.request.headers.items(multi=True))
        if where:
            self._refuse(flow, dest, where)
            return
        if flow.request.stream or may_stream(flow):
            # Decided now, before mitmproxy may switch to raw streaming mid-body.
            hdrs = flow.request.headers
            try:
                decoder = Decoder(hdrs.get("content-encoding", ""), self.limits)
            except DecodeError as e:
                refuse(flow, 415, "unsupported", f"the request body cannot be decoded ({e.code})", e.code)
                scrub_request(self.masker, flow)
                return
            if decoder.stages:  # checked decoded, so it goes out decoded
                hdrs.pop("content-encoding", None)
                if "content-length" in hdrs:
                    hdrs.pop("content-length")
                    if not (flow.request.is_http2 or flow.request.is_http3):
                        hdrs["transfer-encoding"] = "chunked"
            ctypes = content_types(hdrs)
            flow.request.stream = RequestScanner(flow, dest or "?", decoder, ctypes[-1] if len(ctypes) == 1 else "")

    def request(self, flow):
        if flow.request.method == "CONNECT":
            return None
        policy, dest = self.store.policy, FlowContext.of(flow).destination
        if is_card_destination(policy, dest):
            return None  # sent as written; masked at rest by masking.scrub_request
        req = flow.request
        # URL and headers again: another addon may have changed them since requestheaders.
        fields = req.headers.items(multi=True)
        if req.trailers is not None:
            fields = [*fields, *req.trailers.items(multi=True)]
        where = outbound_pan(req.url, fields)
        if where:
            self._refuse(flow, dest, where)
            return None
        raw = req.raw_content  # None when streamed (scanned by RequestScanner)
        if not raw:
            return None
        enc = req.headers.get("content-encoding", "")
        args = (raw, enc, content_types(req.headers), self.limits)
        if len(raw) > OFFLOAD_BYTES or (len(raw) > OFFLOAD_ENCODED and enc.strip().lower() not in ("", "identity")):
            return self._check_off_loop(flow, dest, args)
        self._judge(flow, dest, lambda: check_request_body(*args))
        return None

    async def _check_off_loop(self, flow, dest, args) -> None:
        # Inflating and reading a big body takes a worker thread, not the event loop.
        try:
            found = await asyncio.to_thread(check_request_body, *args)
        except (DecodeError, UndecodableBody) as e:
            self._judge(flow, dest, e)
            return
        self._judge(flow, dest, lambda: found)

    def _judge(self, flow, dest, check) -> None:
        try:
            if isinstance(check, Exception):
                raise check
            found = check()
        except DecodeLimit as e:
            refuse(flow, 413, "too_large", f"the request body {e}; it was not forwarded", e.code)
            flow.request.content = b""  # never read whole: nothing of it is kept
            FlowContext.of(flow).request_body_dropped = True
            return
        except (DecodeError, UndecodableBody) as e:
            refuse(flow, 415, "unsupported", f"the request body cannot be read with confidence ({e.code}); "
                   f"destination {dest or 'unknown'} is not marked card_data", e.code)
            scrub_request(self.masker, flow)
            return
        if found:
            self._refuse(flow, dest, "body")

    def websocket_start(self, flow):
        if not is_card_destination(self.store.policy, FlowContext.of(flow).destination):
            self.ws_flows[flow.server_conn.id] = flow

    def websocket_end(self, flow):
        self.ws_flows.pop(flow.server_conn.id, None)

    def websocket_message(self, flow):
        msg = flow.websocket.messages[-1]
        fc = FlowContext.of(flow)
        if not msg.from_client or is_card_destination(self.store.policy, fc.destination):
            return
        try:
            found = contains_pan_views(msg.content, "")
        except UndecodableBody:
            found = True  # unreadable to us: not sent to a non-card destination
        if found:
            msg.drop()
            reason = (f"a websocket message carries a card number; destination {fc.destination} "
                      "is not marked card_data")
            msg.content = self.masker.mask(msg.content)[0]  # the dropped copy is kept: masked
            log.warning("pangate dlp: %s (request_id=%s)", reason, fc.request_id)
            cut(flow, 403, CODE, reason)

    def _control(self, ws, event):
        """A ping, pong or close frame from the client to a non-card host: a card number in its payload
        is masked out of the frame and the connection cut."""
        flow = self.ws_flows.get(getattr(ws.conn, "id", None))
        payload = control_payload(event)
        if flow is None or not payload:
            return event
        try:
            found = contains_pan_views(payload, "")
        except UndecodableBody:
            found = True
        if not found:
            return event
        fc = FlowContext.of(flow)
        reason = (f"a websocket control frame carries a card number; destination {fc.destination} "
                  "is not marked card_data")
        log.warning("pangate dlp: %s (request_id=%s)", reason, fc.request_id)
        cut(flow, 403, CODE, reason)
        return with_payload(event, b"")

    def _refuse(self, flow, dest, where: str) -> None:
        refuse(flow, 403, "forbidden",
               f"the request {where} carries a card number; destination {dest or 'unknown'} "
               "is not marked card_data", CODE)
        scrub_request(self.masker, flow)  # never sent: mask it before anything logs or keeps it
