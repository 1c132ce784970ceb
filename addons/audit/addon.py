"""The audit trail: one signed, hash-chained record per flow and per security event.

Records say who (identity and how it was proven), what (destination, method,
masked path), when, from where, the decision and its rule, and the outcome;
never a token, a secret or a readable card number. If records cannot be
written, the Guard refuses new traffic until they can.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlencode

from mitmproxy import ctx, exceptions

from pangate.common import events
from pangate.audit.keys import load_or_create_signing_key
from pangate.audit.log import AuditLocked, AuditWriter
from pangate.state import instance
from pangate.chain.context import KEY, FlowContext, refuse
from pangate.chain.failsafe import FLOW_HOOKS, Component
from pangate.export.delivery import direct_alerts
from pangate.pan.engine import Masker

log = logging.getLogger("pangate")
_masker = Masker()
# Query parameters whose values are credentials whatever the policy says: never recorded.
SECRET_PARAM = re.compile(r"token|secret|passw|api[-_]?key|apikey|signature|^sig$|^auth|credential|session",
                          re.IGNORECASE)


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redact_query(query: str, secret_names=()) -> str | None:
    """A query string fit for records: credential values replaced, card numbers masked."""
    if not query:
        return None
    names = {n.lower() for n in secret_names}
    pairs = [(k, "[redacted]" if k.lower() in names or SECRET_PARAM.search(k) else v)
             for k, v in parse_qsl(query, keep_blank_values=True)]
    return _masker.mask_url(urlencode(pairs, safe="*[]/:,"))[0] or None


def credential_params(policy) -> set[str]:
    """Names of query parameters that carry an injected credential under `policy`."""
    if policy is None:
        return set()
    return {d.credential.name for d in policy.destinations.values()
            if d.credential is not None and d.credential.type == "query" and d.credential.name}


def flow_record(flow, secret_params=()) -> dict:
    """The audit record of one flow, built only from masked or non-secret fields.

    `secret_params` names query parameters holding an injected credential."""
    fc = FlowContext(flow.metadata.get(KEY, {}))  # read only: the flow is not changed
    req, resp = flow.request, flow.response
    path, query = (req.path.split("?", 1) + [""])[:2]
    refused = fc.refused
    decision = fc.decision or {}
    if fc.error or flow.error:
        outcome = "error"
    elif refused:
        outcome = {407: "token_refused", 403: "denied", 503: "unavailable"}.get(refused["status"], "refused")
    else:
        outcome = decision.get("outcome", "allowed")
    client = flow.client_conn.peername
    record = {
        "event": "connect" if req.method == "CONNECT" else "request",
        "outcome": outcome,
        "request_id": fc.request_id,
        "identity": fc.identity,
        "origin": {"client": f"{client[0]}:{client[1]}" if client else None, "connection": flow.client_conn.id},
        "destination": {"scheme": req.scheme, "host": req.host, "port": req.port, "method": req.method,
                        "path": _masker.mask_url(path)[0], "query": redact_query(query, secret_params)},
        "rule": decision.get("rule"),
        "reason": (refused or {}).get("reason") or decision.get("detail"),
        "code": (refused or {}).get("code") or decision.get("reason"),
        "status": resp.status_code if resp else None,
        "bytes_sent": len(req.raw_content or b""),  # client -> destination
        "bytes_received": len(resp.raw_content or b"") if resp and resp.raw_content is not None else None,
        "started": _iso(req.timestamp_start),
        "duration_ms": round(((resp.timestamp_end if resp and resp.timestamp_end else time.time())
                              - req.timestamp_start) * 1000, 1) if req.timestamp_start else None,
        "pans_masked": fc.pans_masked,
        "sad_masked": fc.sad_masked,
    }
    for key, value in (("credential", fc.credential), ("reveal", fc.reveal), ("approval", fc.approval),
                       ("replayed_from", fc.replayed_from), ("failed_hook", fc.failed_hook), ("error", fc.error)):
        if value is not None:
            record[key] = value
    if flow.error:
        record["error"] = _masker.mask_text(str(flow.error.msg))[0]
    return record


class Audit(Component):
    """Writes the audit trail and ends every flow with one canonical decision log line."""

    sees_refused = FLOW_HOOKS  # a refusal is recorded like any other outcome

    def __init__(self, store):
        self.store = store
        self.writer: AuditWriter | None = None
        self._loop = None
        self.healthy = False
        self.problem = "the audit trail is not open"
        self.problem_code = "audit_unavailable"

    def load(self, loader):
        loader.add_option("pangate_audit_dir", str, "var/audit", "Directory of the audit trail.")
        loader.add_option("pangate_audit_key", str, "certs/audit-signing.key",
                          "Ed25519 key that signs audit checkpoints; keep it apart from the logs.")
        loader.add_option("pangate_audit_strict", bool, False,
                          "Hold each response until its audit record is on disk (fsynced); "
                          "otherwise records are written within pangate_audit_flush_ms.")
        loader.add_option("pangate_audit_flush_ms", int, 50, "Longest delay before a record is written (group commit).")
        loader.add_option("pangate_audit_strict_timeout", int, 5,
                          "Strict mode: seconds to wait for a record before refusing the response with 503.")
        loader.add_option("pangate_audit_retention_days", int, 365, "Delete whole audit files older than this.")
        loader.add_option("pangate_audit_rotate_mb", int, 64, "Start a new audit file at this size (and daily).")

    def configure(self, updated):
        opts = ctx.options
        for name in ("pangate_audit_flush_ms", "pangate_audit_strict_timeout",
                     "pangate_audit_retention_days", "pangate_audit_rotate_mb"):
            if getattr(opts, name) < (0 if name == "pangate_audit_flush_ms" else 1):
                raise exceptions.OptionsError(f"{name} must be a positive number, not {getattr(opts, name)}")
        if {"pangate_audit_dir", "pangate_audit_key", "pangate_audit_flush_ms", "pangate_audit_retention_days",
                "pangate_audit_rotate_mb"} & set(updated):
            try:
                os.makedirs(opts.pangate_audit_dir, exist_ok=True)
                key = load_or_create_signing_key(opts.pangate_audit_key, opts.pangate_audit_dir)
                if self.writer:  # one writer per directory at a time: the old one seals its file first
                    self.writer.close()
                    self.writer = None
                writer = AuditWriter(opts.pangate_audit_dir, key, on_state_change=self._state_changed,
                                     flush_delay=opts.pangate_audit_flush_ms / 1000,
                                     retention_days=opts.pangate_audit_retention_days,
                                     max_file_bytes=opts.pangate_audit_rotate_mb << 20,
                                     instance=instance.resolve(getattr(opts, "pangate_instance", ""),
                                                               opts.pangate_audit_dir))
            except AuditLocked as e:
                # A second writer would fork the chain: this gateway does not start at all.
                self.healthy, self.problem = False, str(e)
                log.error("pangate refuses to start: %s", e)
                ctx.master.shutdown()
                raise exceptions.OptionsError(f"pangate audit: {e}") from None
            except (OSError, ValueError) as e:
                self.healthy, self.problem = False, f"the audit trail cannot be opened: {e}"
                raise exceptions.OptionsError(f"pangate audit: {e}") from None
            self.writer = writer
            self.healthy, self.problem = True, ""
            events.subscribe(self._event, records=True)  # it also gets what was raised before it

    def _state_changed(self, healthy: bool, reason: str) -> None:
        """Called on the writer's thread: flip health now, report from the event loop."""
        self.healthy = healthy
        self.problem = "" if healthy else f"audit records cannot be written ({reason}); requests are refused until they can"
        emit = functools.partial(events.emit, "audit_write_recovered" if healthy else "audit_write_failed",
                                 alert=not healthy, reason=reason)
        direct_alerts.push("audit_write_recovered" if healthy else "audit_write_failed", alert=not healthy, reason=reason)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(emit)

    def _event(self, record: dict) -> None:
        if self.writer:
            self.writer.append({k: v for k, v in record.items() if k != "at"})

    def running(self):
        self._loop = asyncio.get_running_loop()
        events.emit("gateway_started", policy=self.store.policy.digest if self.store.policy else None)

    def done(self):
        events.unsubscribe(self._event)
        if self.writer:
            self.writer.append({"event": "gateway_stopped"})
            self.writer.close()
            self.writer = None

    def _finish(self, flow) -> int | None:
        """Append the flow's record once; returns its seq."""
        fc = FlowContext.of(flow)
        if fc.recorded or self.writer is None:
            return None
        fc.recorded = True
        # The writer scrubs every string of the record before hashing it; the decision line
        # quotes the record as written, never the raw request (a refused path, Host or CONNECT
        # target can carry a card number).
        seq, record = self.writer.add(flow_record(flow, credential_params(self.store.policy)))
        log.info("pangate decision id=%s identity=%s outcome=%s code=%s status=%s %s %s://%s:%s%s rule=%s",
                 record["request_id"], (record["identity"] or {}).get("name"), record["outcome"],
                 record["code"], record["status"], record["destination"]["method"],
                 record["destination"]["scheme"], record["destination"]["host"], record["destination"]["port"],
                 record["destination"]["path"], record["rule"])
        return seq

    async def _durable(self, seq: int) -> bool:
        """Wait for record `seq` on disk; give up early once the writer reports a failure."""
        deadline = time.monotonic() + ctx.options.pangate_audit_strict_timeout
        while (left := deadline - time.monotonic()) > 0:
            if await self.writer.adurable(seq, min(left, 0.25)):
                return True
            if not self.writer.healthy:
                return False
        return False

    def http_connect(self, flow):
        if flow.response is not None and flow.response.status_code >= 300:
            self._finish(flow)

    def http_connect_error(self, flow):
        # A tunnel refused after the CONNECT hook (e.g. at the resolved-address check).
        self._finish(flow)

    def response(self, flow):
        if flow.websocket is not None and flow.response.status_code == 101:
            return None  # recorded at websocket_end, with the whole conversation
        seq = self._finish(flow)
        if seq is None or not ctx.options.pangate_audit_strict or FlowContext.of(flow).refused is not None:
            return None
        return self._withhold_unless_durable(flow, seq)  # strict: the response waits for its record

    async def _withhold_unless_durable(self, flow, seq: int) -> None:
        if not await self._durable(seq):
            reason = "the audit record of this request could not be written; the response was withheld"
            refuse(flow, 503, "unavailable", reason, "audit_unavailable")
            events.emit("audit_response_withheld", alert=True, request_id=FlowContext.of(flow).request_id,
                        record_seq=seq)

    def websocket_end(self, flow):
        self._finish(flow)

    def error(self, flow):
        self._finish(flow)
