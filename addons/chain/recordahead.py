"""Strict audit: an allowed request is on disk before it is forwarded.

The Audit stage writes a flow's record when the flow ends (group-committed
within pangate_audit_flush_ms; in strict mode the response also waits for
its record). A gateway killed while a request is on its way upstream would
then leave an effect upstream (a charge, a refund) with no record at all.

In strict mode (`pangate_audit_strict`) `RecordAhead` closes that gap: in the
`request` hook, after every other request-side stage has let the request
through, it appends an `intent` record (who, where, which rule; built like
the flow record, masked the same way) through the Audit stage's writer and
waits until the writer reports it durable (fsynced). Only then is the
request forwarded. A record that cannot be written in time refuses the
request with 503 `audit_unavailable`: nothing leaves unrecorded.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import ctx

from pangate.audit.addon import credential_params, flow_record
from pangate.chain.context import refuse, request_id
from pangate.chain.failsafe import Component
from pangate.common import events

log = logging.getLogger("pangate")
REASON = "the audit record of this request could not be written; it was not forwarded"


class RecordAhead(Component):
    """Strict mode: a durable `intent` record before any allowed request goes upstream."""

    name = "pangate-record-ahead"

    def __init__(self, audit):
        self.audit = audit  # the Audit stage: its writer, its policy store

    def request(self, flow):
        if not ctx.options.pangate_audit_strict:
            return None
        writer = self.audit.writer
        if writer is None:
            self._refuse(flow, "the audit trail is not open")
            return None
        rid = request_id(flow)
        record = flow_record(flow, credential_params(self.audit.store.policy))
        intent = {"event": "intent", "request_id": rid, "identity": record["identity"],
                  "origin": record["origin"], "destination": record["destination"], "rule": record["rule"],
                  "started": record["started"]}
        try:
            seq = writer.append(intent)
        except Exception as e:  # closed, backlog full, refused record: nothing leaves unrecorded
            self._refuse(flow, f"{type(e).__name__}")
            return None
        return self._wait(flow, writer, seq)

    async def _wait(self, flow, writer, seq: int) -> None:
        deadline = time.monotonic() + ctx.options.pangate_audit_strict_timeout
        while (left := deadline - time.monotonic()) > 0:
            if await writer.adurable(seq, min(left, 0.25)):
                return
            if not writer.healthy:
                break
        self._refuse(flow, "not durable in time" if writer.healthy else "the writer failed")

    def _refuse(self, flow, why: str) -> None:
        refuse(flow, 503, "unavailable", REASON, "audit_unavailable")
        log.error("pangate: request %s not forwarded: its intent record could not be written (%s)",
                  request_id(flow), why)
        events.emit("audit_intent_failed", alert=True, request_id=request_id(flow))
