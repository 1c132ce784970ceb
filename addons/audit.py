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
import time
from datetime import datetime, timezone

from mitmproxy import ctx, exceptions

from . import events
from .auditlog import AuditWriter, load_or_create_signing_key
from .failsafe import Component, meta
from .pan import Masker

log = logging.getLogger("pangate")
_masker = Masker()


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def flow_record(flow) -> dict:
    """The audit record of one flow, built only from masked or non-secret fields."""
    m = flow.metadata.get("pangate", {})
    req, resp = flow.request, flow.response
    path, query = (req.path.split("?", 1) + [""])[:2]
    refused = m.get("refused")
    decision = m.get("decision") or {}
    if m.get("error") or flow.error:
        outcome = "error"
    elif refused:
        outcome = {407: "token_refused", 403: "denied", 503: "unavailable"}.get(refused["status"], "refused")
    else:
        outcome = decision.get("outcome", "allowed")
    client = flow.client_conn.peername
    record = {
        "event": "connect" if req.method == "CONNECT" else "request",
        "outcome": outcome,
        "request_id": m.get("request_id"),
        "identity": m.get("identity"),
        "origin": {"client": f"{client[0]}:{client[1]}" if client else None, "connection": flow.client_conn.id},
        "destination": {"scheme": req.scheme, "host": req.host, "port": req.port, "method": req.method,
                        "path": _masker.mask_url(path)[0], "query": _masker.mask_url(query)[0] or None},
        "rule": decision.get("rule"),
        "reason": (refused or {}).get("reason") or decision.get("detail"),
        "code": (refused or {}).get("code") or decision.get("reason"),
        "status": resp.status_code if resp else None,
        "bytes_in": len(req.raw_content or b""),
        "bytes_out": len(resp.raw_content or b"") if resp and resp.raw_content is not None else None,
        "started": _iso(req.timestamp_start),
        "duration_ms": round(((resp.timestamp_end if resp and resp.timestamp_end else time.time())
                              - req.timestamp_start) * 1000, 1) if req.timestamp_start else None,
        "pans_masked": m.get("pans_masked", 0),
    }
    for key in ("credential", "reveal", "approval", "replayed_from", "failed_hook", "error"):
        if m.get(key) is not None:
            record[key] = m[key]
    if flow.error:
        record["error"] = _masker.mask_text(str(flow.error.msg))[0]
    return record


class Audit(Component):
    """Writes the audit trail and ends every flow with one canonical decision log line."""

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

    def configure(self, updated):
        if {"pangate_audit_dir", "pangate_audit_key"} & set(updated):
            try:
                os.makedirs(ctx.options.pangate_audit_dir, exist_ok=True)
                key = load_or_create_signing_key(ctx.options.pangate_audit_key)
                writer = AuditWriter(ctx.options.pangate_audit_dir, key, on_state_change=self._state_changed)
            except (OSError, ValueError) as e:
                raise exceptions.OptionsError(f"pangate audit: {e}") from None
            if self.writer:
                self.writer.close()
            self.writer = writer
            self.healthy, self.problem = True, ""
            events.subscribe(self._event)

    def _state_changed(self, healthy: bool, reason: str) -> None:
        """Called on the writer's thread: flip health now, report from the event loop."""
        self.healthy = healthy
        self.problem = "" if healthy else f"audit records cannot be written ({reason}); requests are refused until they can"
        emit = functools.partial(events.emit, "audit_write_recovered" if healthy else "audit_write_failed",
                                 alert=not healthy, reason=reason)
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

    def _finish(self, flow) -> None:
        m = meta(flow)
        if m.get("recorded") or self.writer is None:
            return
        m["recorded"] = True
        record = flow_record(flow)
        self.writer.append(record)
        log.info("pangate decision id=%s identity=%s outcome=%s code=%s status=%s %s %s://%s:%s%s rule=%s",
                 record["request_id"], (record["identity"] or {}).get("name"), record["outcome"],
                 record["code"], record["status"], record["destination"]["method"],
                 record["destination"]["scheme"], record["destination"]["host"], record["destination"]["port"],
                 record["destination"]["path"], record["rule"])

    def http_connect(self, flow):
        if flow.response is not None and flow.response.status_code >= 300:
            self._finish(flow)

    def response(self, flow):
        self._finish(flow)

    def error(self, flow):
        self._finish(flow)
