"""Outbound DLP and need-to-know reveals: where a card number may go, and who may read one.

Outbound: a raw PAN in the URL (percent-encoded digits and `+`/`%20`
separators included), a request header or the request body, sent to a
destination the policy does not mark `card_data`, is refused with 403
`pan_to_non_card_destination` and never reaches the upstream. The refusal
says where the card number was, never the number.

Streamed request bodies (`stream_large_bodies`) to a non-card destination are
scanned as they pass: the scanner forwards only bytes it has cleared (a PAN
is masked in what it forwards) and, on the first PAN, aborts both connections
so the upstream sees a truncated, reset request and the client an error.
While `stream_large_bodies` is set, a body of unknown length (chunked) to a
non-card destination goes through the scanner from the start: mitmproxy would
otherwise switch it to raw streaming mid-body, unseen. To card-data
destinations streamed request bodies pass unchanged.

Reveal: a `reveal:` entry lets one identity read full PANs from one
destination, with a written justification. The reveal is noted in the flow's
metadata (and so in its audit record) with the justification and how many
PANs were shown; the PANs themselves are never noted. What is kept (flow
body, records) stays masked: see masking.py.

The decisions (`reveal_for`, `outbound_pan`, `is_card_destination`) are pure.
"""

from __future__ import annotations

import json
import logging
import re


from pangate.chain.context import FlowContext, cut, refuse
from pangate.chain.failsafe import Component, safe_traceback
from pangate.chain.wire import may_stream
from pangate.masking.addon import masker_for, scrub_request
from pangate.pan.engine import Masker, contains_pan, url_contains_pan
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


# JSON may spell digits, spaces and dashes as \u0030..\u0039, \u0020, \u002d: every JSON
# server decodes them back into a card number, so the check reads them the same way.
_JSON_ESCAPE = re.compile(rb"\\u00(3[0-9]|2[0dD])")


def _wide(body: bytes) -> bool:
    return body[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in body[:4]


def body_contains_pan(body: bytes, content_type: str = "") -> bool:
    """PAN check of a decoded body, read the way the receiving server will read it."""
    if not body:
        return False
    ctype = content_type.lower()
    if "x-www-form-urlencoded" in ctype:
        return url_contains_pan(body.decode("latin-1"))
    charset = ctype.split("charset=", 1)[1].split(";")[0].strip() if "charset=" in ctype else ""
    if charset.startswith(("utf-16", "utf-32")) or (not charset and _wide(body)):
        try:
            # As JSON readers do: a BOM or NUL bytes in the first four say UTF-16/32.
            body = body.decode(charset or json.detect_encoding(body)).encode()
        except (LookupError, UnicodeDecodeError):
            return True  # unreadable to us: not sent to a non-card destination
    if b"\\u00" in body:
        body = _JSON_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), body)
    return contains_pan(body)


def outbound_pan(url: str, headers: list[tuple[str, str]], body: bytes | None = None,
                 content_type: str = "") -> str | None:
    """Where a request carries a PAN ("url", "header NAME", "body"), or None."""
    if url_contains_pan(url):
        return "url"
    for name, value in headers:
        if name.lower() not in _SKIP_HEADERS and contains_pan(value):
            return f"header {name}"
    if body and body_contains_pan(body, content_type):
        return "body"
    return None


class RequestScanner:
    """stream callable for a request body to a non-card destination."""

    def __init__(self, flow, destination: str):
        self.flow = flow
        self.destination = destination
        self.sm = Masker(sad=False).stream()
        self.stopped = False

    def __call__(self, chunk: bytes) -> bytes:
        if self.stopped:
            return b""
        try:
            out = self.sm.feed(chunk) if chunk else self.sm.flush()
            if self.sm.count:
                self._stop("a streamed request body carries a card number; "
                           f"destination {self.destination} is not marked card_data", CODE)
                return b""
            return out
        except Exception as e:  # fail closed: nothing more goes out
            log.error("pangate dlp stream scanner failed:\n%s", safe_traceback(e))
            self._stop("the request body scanner failed; the request was not completed", "internal_error")
            return b""

    def _stop(self, reason: str, code: str) -> None:
        self.stopped = True
        log.warning("pangate dlp: %s (request_id=%s)", reason, FlowContext.of(self.flow).request_id)
        cut(self.flow, 403 if code == CODE else 502, code, reason)


# ---- the addon -----------------------------------------------------------------------
class Dlp(Component):
    """After Authorize, before Credentials: keeps PANs away from non-card destinations."""

    sees_refused = frozenset({"websocket_message"})  # every client message is checked

    def __init__(self, store):
        self.store = store
        self.masker = Masker()  # for what is kept of a refused request
        store.subscribe(self._policy_changed)

    def _policy_changed(self, policy: Policy) -> None:
        self.masker = masker_for(policy)

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
            flow.request.stream = RequestScanner(flow, dest or "?")

    def request(self, flow):
        if flow.request.method == "CONNECT":
            return
        policy, dest = self.store.policy, FlowContext.of(flow).destination
        if is_card_destination(policy, dest):
            return  # sent as written; masked at rest by masking.scrub_request
        body = None
        if flow.request.raw_content:  # None when streamed (scanned by RequestScanner)
            body = flow.request.get_content(strict=True)  # undecodable: raises, so refused
        # URL and headers again: another addon may have changed them since requestheaders.
        where = outbound_pan(flow.request.url, flow.request.headers.items(multi=True), body,
                             flow.request.headers.get("content-type", ""))
        if where:
            self._refuse(flow, dest, where)

    def websocket_message(self, flow):
        msg = flow.websocket.messages[-1]
        fc = FlowContext.of(flow)
        if not msg.from_client or is_card_destination(self.store.policy, fc.destination):
            return
        if contains_pan(msg.content):
            msg.drop()
            reason = (f"a websocket message carries a card number; destination {fc.destination} "
                      "is not marked card_data")
            msg.content = self.masker.mask(msg.content)[0]  # the dropped copy is kept: masked
            log.warning("pangate dlp: %s (request_id=%s)", reason, fc.request_id)
            cut(flow, 403, CODE, reason)

    def _refuse(self, flow, dest, where: str) -> None:
        refuse(flow, 403, "forbidden",
               f"the request {where} carries a card number; destination {dest or 'unknown'} "
               "is not marked card_data", CODE)
        scrub_request(self.masker, flow)  # never sent: mask it before anything logs or keeps it

