"""What the stages of the data path tell each other about one flow, typed.

Everything lives in `flow.metadata["pangate"]`, a plain dict of JSON values:
mitmproxy saves flow metadata with recorded flows and mitmweb shows it, so the
notes must serialize as they are and hold nothing secret. `FlowContext` is a
typed view of that dict; each attribute is one key (the key names are what
flow files and audit records already carry, so they do not change).

`refuse()` is the one way a stage refuses a flow: it records the refusal
(status, code, reason) and answers the client with pangate's JSON refusal.
`cut()` is its form for a flow that can no longer be answered (a stream under
way, a websocket).
"""

from __future__ import annotations

import json
import logging
from typing import Generic, TypedDict, TypeVar

from mitmproxy import http

from pangate.chain.wire import abort_connections, may_stream
from pangate.common.ids import hex_id
from pangate.sinks.scrubber import default as sink_scrubber

log = logging.getLogger("pangate")
KEY = "pangate"
T = TypeVar("T")


class Refusal(TypedDict):
    status: int
    code: str
    reason: str


class IdentityNote(TypedDict):
    """How the caller was proven (never with what)."""
    name: str
    issuer: str
    subject: str
    method: str
    token_id: str | None
    expires_at: float | None
    static_key: bool


class DecisionNote(TypedDict):
    outcome: str  # allowed | report_only | denied ...
    reason: str
    detail: str
    rule: str | None
    destination: str | None  # the policy destination's name


class Target(TypedDict):
    """Where the request was authorized to go; it may not change after that."""
    scheme: str
    host: str
    port: int


class CredentialNote(TypedDict, total=False):
    destination: str
    type: str
    echo_redacted: bool


class RevealNote(TypedDict, total=False):
    identity: str
    destination: str
    justification: str
    policy_line: int
    pans_revealed: int


class ApprovalNote(TypedDict):
    id: str
    rule: str
    mode: str
    status: str
    requester: str
    approvers: list
    decided_by: str | None
    reason: str | None


class Note(Generic[T]):
    """One key of the notes dict, read and written as an attribute; absent reads as `default`."""

    def __init__(self, key: str | None = None, default=None):
        self.key, self.default = key, default

    def __set_name__(self, owner, name):
        self.key = self.key or name

    def __get__(self, obj, owner=None) -> T | None:
        if obj is None:
            return self
        return obj.data.get(self.key, self.default)

    def __set__(self, obj, value: T) -> None:
        obj.data[self.key] = value

    def __delete__(self, obj) -> None:
        obj.data.pop(self.key, None)


class FlowContext:
    """pangate's notes on one flow. Saved with flows and shown in mitmweb: nothing secret here."""

    __slots__ = ("data",)

    request_id: Note[str] = Note()  # shown to the client and in every record of the flow
    replayed_from: Note[str] = Note()  # the request id of the flow a replay copies
    refused: Note[Refusal] = Note()  # set by refuse()/cut() only
    error: Note[str] = Note()  # why the flow ended in error (audit outcome "error")
    failed_hook: Note[str] = Note()  # Stage.hook that raised
    identity: Note[IdentityNote] = Note()
    claimed: Note[str] = Note()  # the name a refused token claimed, if a policy identity (bad-token alerts)
    target: Note[Target] = Note("destination")
    decision: Note[DecisionNote] = Note()
    address: Note[str] = Note()  # the checked IP the destination resolved to
    approval: Note[ApprovalNote] = Note()
    credential: Note[CredentialNote] = Note()
    reveal: Note[RevealNote] = Note()
    pans_masked: Note[int] = Note(default=0)  # card numbers masked in what was returned
    sad_masked: Note[int] = Note(default=0)  # sensitive authentication data (CVC, PIN, track) starred
    streamed: Note[bool] = Note()  # the response body went through a masking stream
    response_masked: Note[bool] = Note()  # the stored response body is masked: not scanned again
    request_body_dropped: Note[bool] = Note()  # the kept request body could not be masked
    recorded: Note[bool] = Note()  # its audit record is written
    recording_saved: Note[bool] = Note()

    def __init__(self, data: dict):
        self.data = data

    @classmethod
    def of(cls, flow) -> "FlowContext":
        return cls(flow.metadata.setdefault(KEY, {}))

    @property
    def caller(self) -> str | None:
        """The proven identity's name, or None."""
        ident = self.identity
        return ident["name"] if ident else None

    @property
    def destination(self) -> str | None:
        """The name of the policy destination the request was decided for."""
        return (self.decision or {}).get("destination")

    def add_pans_masked(self, n: int) -> None:
        """Count what a masking call masked: a pan.kinds.Masked knows its SAD part, which is
        counted apart (a plain int counts as card numbers)."""
        if n:
            sad = int(getattr(n, "sad", 0))
            self.pans_masked = int(self.pans_masked) + int(n) - sad
            if sad:
                self.sad_masked = int(self.sad_masked) + sad

    def mark_refused(self, status: int, code: str, reason: str) -> str:
        """The one writer of `refused`: refuse() and cut() record through here. Returns the
        reason as recorded: scrubbed, since reasons quote request input (a path, a Host, a
        query value) and go on to the client, the flow's notes, the audit trail and the log."""
        reason = sink_scrubber().text(reason)
        self.data["refused"] = {"status": status, "code": code, "reason": reason}
        return reason


def of(flow) -> FlowContext:
    return FlowContext.of(flow)


def is_refused(flow) -> bool:
    """True when pangate has already answered (or cut) this flow itself."""
    return "refused" in flow.metadata.get(KEY, ())


def request_id(flow) -> str:
    """Every flow gets one id, shown to the client and in every record of it."""
    fc = FlowContext.of(flow)
    rid = fc.request_id
    if rid is None:
        rid = fc.request_id = hex_id(20)  # never mistaken for a card number (common/ids.py)
    return rid


def refuse(flow, status: int, error: str, reason: str, code: str, headers: dict | None = None) -> None:
    """Answer the client with pangate's JSON refusal; the request goes no further."""
    rid = request_id(flow)
    fc = FlowContext.of(flow)
    if (flow.request.method != "CONNECT" and flow.response is None and flow.request.timestamp_end is None
            and (flow.request.stream or may_stream(flow))):
        # mitmproxy cannot answer a request whose body it is going to stream
        # (it raises and drops the connection unanswered): cut it off instead.
        fc.mark_refused(status, code, reason)
        log.warning("pangate refused request %s (%s) while its body was streaming in: connection reset", rid, code)
        if flow.killable:
            flow.kill()
        return
    reason = sink_scrubber().text(reason)  # reasons quote request input: never raw in the body
    body = json.dumps({"error": error, "reason": reason, "code": code, "request_id": rid}, indent=1)
    hdrs = {"Content-Type": "application/json", "Cache-Control": "no-store", "X-Pangate-Request-Id": rid}
    hdrs.update(headers or {})
    response = http.Response.make(status, body + "\n", hdrs)
    if flow.request.method == "CONNECT":
        # Clients often show only the status line of a refused CONNECT, so it says why.
        response.reason = f"{response.reason} ({code})"
    if flow.response is not None and flow.response.timestamp_end is None:
        # Refused between the upstream's headers and its body: mitmproxy would
        # still read that body into (or stream it under) our refusal, so it
        # is streamed through a sink that drops it and sends ours at the end.
        response.stream = DropUpstreamBody(response.raw_content)
    flow.response = response
    fc.mark_refused(status, code, reason)
    if status >= 500 and code != "policy_unavailable":
        fc.data.setdefault("error", reason)


def cut(flow, status: int, code: str, reason: str) -> None:
    """Refuse a flow that can no longer be answered: recorded, and both connections reset."""
    fc = FlowContext.of(flow)
    fc.error = fc.mark_refused(status, code, reason)
    abort_connections(flow, flow.server_conn, flow.client_conn)


class DropUpstreamBody:
    """A response stream that swallows the upstream body and emits `body` once, at its end."""

    def __init__(self, body: bytes):
        self.body = body

    def __call__(self, chunk: bytes) -> bytes:
        if chunk:
            return b""
        body, self.body = self.body, b""
        return body
