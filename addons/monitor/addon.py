"""The monitor stage: live detectors, alerts and metrics on every finished flow.

It reads what the other stages noted on the flow (request id, identity,
decision, refusal, PANs masked) and the security events of the bus, and
raises alerts: an `alert` record in the audit trail (through the bus, which
the Audit stage records), the webhook, syslog. It never refuses a flow: a
monitor that fails must not take the gateway down with it (its own failures
are logged; the controls it watches fail closed themselves).

Also here, because the gateway owns the audit writer: signed access-review
sign-offs that `pangate review --sign-off` leaves under the audit directory
are verified and recorded (`access_review_signed`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import weakref

from mitmproxy import ctx, exceptions

from pangate.chain.context import FlowContext
from pangate.chain.failsafe import Component
from pangate.common import events
from pangate.common.periodic import Periodic
from pangate.monitor.config import DEFAULT as MONITOR_DEFAULT
from pangate.monitor.detectors import Alert, Detectors, FlowFacts
from pangate.monitor.metrics import Metrics
from pangate.monitor.sinks import AlertSinks, scrubbed
from pangate.review import signoff

log = logging.getLogger("pangate")
OUTCOMES = {407: "token_refused", 403: "denied", 503: "unavailable"}


def flow_facts(flow) -> tuple[FlowFacts, float | None]:
    """The detectors' view of a finished flow, and its duration in seconds."""
    fc = FlowContext.of(flow)
    refused, decision = fc.refused, fc.decision or {}
    if fc.error or flow.error:
        outcome = "error"
    elif refused:
        outcome = OUTCOMES.get(refused.get("status"), "refused")
    else:
        outcome = decision.get("outcome", "allowed")
    ident = fc.identity
    peer = flow.client_conn.peername
    pans = int(fc.pans_masked or 0) + int((fc.reveal or {}).get("pans_revealed") or 0)
    req, resp = flow.request, flow.response
    end = resp.timestamp_end if resp is not None and resp.timestamp_end else time.time()
    seconds = end - req.timestamp_start if req.timestamp_start else None
    return FlowFacts(identity=ident.get("name") if isinstance(ident, dict) else None, outcome=outcome,
                     source=peer[0] if peer else None, claimed=fc.claimed,
                     code=(refused or {}).get("code") or decision.get("reason"), rule=decision.get("rule"),
                     destination=decision.get("destination"), pans=pans,
                     request_id=fc.request_id), seconds


class Monitor(Periodic, Component):
    """Observes flows and events; raises alerts; serves metrics."""

    name = "pangate-monitor"
    period = 1.0
    # Refusals are what most detectors count: the data path must not skip them.
    sees_refused = frozenset({"http_connect", "http_connect_error", "response", "websocket_end", "error"})

    def __init__(self, store, audit=None):
        self.store, self.audit = store, audit
        self.detectors = Detectors(MONITOR_DEFAULT)
        self.sinks = AlertSinks()
        self.metrics = Metrics()
        self._listen: str | None = None
        self._seen: "weakref.WeakSet" = weakref.WeakSet()  # flows already counted
        self._latency_task = None
        self._latency_seq = 0
        store.subscribe(self._policy_changed)

    def load(self, loader):
        loader.add_option("pangate_alert_webhook", str, "",
                          "URL told of every alert (Slack-compatible JSON); https, or http to loopback only.")
        loader.add_option("pangate_alert_syslog", str, "",
                          "Send alerts to syslog: syslog+udp|tcp|tls://HOST:PORT[?ca=PATH].")
        loader.add_option("pangate_metrics_listen", str, "",
                          "Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464); "
                          "empty: off.")

    def configure(self, updated):
        opts = ctx.options
        if {"pangate_alert_webhook", "pangate_alert_syslog"} & set(updated):
            try:
                self.sinks.configure(opts.pangate_alert_webhook, opts.pangate_alert_syslog)
            except ValueError as e:
                raise exceptions.OptionsError(f"pangate: {e}") from None
        if "pangate_metrics_listen" in updated and opts.pangate_metrics_listen != self._listen:
            self.metrics.close()
            self._listen = opts.pangate_metrics_listen
            if self._listen:
                try:
                    host, port = self.metrics.serve(self._listen)
                except (OSError, ValueError) as e:
                    raise exceptions.OptionsError(f"pangate_metrics_listen: {e}") from None
                log.info("pangate metrics listening at http://%s:%d/metrics", host, port)
        events.subscribe(self._event)

    def _policy_changed(self, policy) -> None:
        self.detectors.reconfigure(getattr(policy, "monitor", MONITOR_DEFAULT))
        self.metrics.labels.set_policy(policy)

    # ------------------------------------------------------------------ flows

    def _finish(self, flow) -> None:
        if flow in self._seen:
            return
        self._seen.add(flow)
        try:
            facts, seconds = flow_facts(flow)
            self.metrics.flow(facts.identity, facts.destination, facts.rule, facts.outcome, facts.pans, seconds)
            for alert in self.detectors.observe_flow(facts):
                self._raise(alert, facts.request_id)
        except Exception:  # watching must never refuse traffic
            log.exception("pangate monitor failed on flow %s", FlowContext.of(flow).request_id)

    def http_connect(self, flow):
        if flow.response is not None and flow.response.status_code >= 300:
            self._finish(flow)

    def http_connect_error(self, flow):
        self._finish(flow)

    def response(self, flow):
        if flow.websocket is not None and flow.response.status_code == 101:
            return  # counted at websocket_end
        self._finish(flow)

    def websocket_end(self, flow):
        self._finish(flow)

    def error(self, flow):
        self._finish(flow)

    # ------------------------------------------------------------------ events and alerts

    def _event(self, record: dict) -> None:
        self.metrics.event(record)
        if record.get("event") == "alert":
            return
        for alert in self.detectors.observe_event(record):
            self._raise(alert, record.get("request_id"))

    def _raise(self, alert: Alert, request_id: str | None = None) -> None:
        alert = scrubbed(alert)
        fields = alert.fields()
        if request_id:
            fields["request_id"] = request_id
        log.warning("pangate alert %s %s [%s]: %s", alert.id, alert.detector, alert.severity, alert.summary)
        events.emit("alert", alert=True, **fields)  # the Audit stage records it
        self.sinks.send(alert)

    # ------------------------------------------------------------------ periodic: backlogs, sign-offs

    async def tick(self):
        writer = getattr(self.audit, "writer", None)
        audit_backlog = None
        exports: dict[str, int] = {}
        if writer is not None:
            audit_backlog = max(writer.last_seq - writer.durable_seq, 0)
            self.metrics.audit_backlog.set(audit_backlog)
            exports = export_backlogs(writer.directory, writer.durable_seq, exporter_names())
            self.metrics.exporters(exports)
            if writer.last_seq > self._latency_seq and (self._latency_task is None or self._latency_task.done()):
                self._latency_seq = writer.last_seq
                self._latency_task = asyncio.get_running_loop().create_task(self._measure(writer, writer.last_seq))
            self._signoffs(writer.directory)
        for name, comp in (("audit", self.audit), ("policy", self.store)):
            if comp is not None:
                self.metrics.control_up.labels(name).set(1 if comp.healthy else 0)
        for alert in self.detectors.observe_backlog(audit_backlog, exports):
            self._raise(alert)

    async def _measure(self, writer, seq: int) -> None:
        """How long the newest record takes to be durable: the audit write latency, sampled."""
        start = time.monotonic()
        if await writer.adurable(seq, 10.0):
            self.metrics.audit_latency.observe(time.monotonic() - start)

    def _signoffs(self, audit_dir: str) -> None:
        for path, status in signoff.unrecorded(audit_dir, self.store.policy):
            doc = status.get("doc") or {}
            if status["ok"]:
                events.emit("access_review_signed", reviewer=doc.get("reviewer"), signed_at=doc.get("signed_at"),
                            period=doc.get("period"), report_sha256=doc.get("report_sha256"),
                            policy=doc.get("policy_digest"), key_id=doc.get("key_id"),
                            file=os.path.basename(path))
            else:
                events.emit("access_review_signoff_invalid", alert=True, file=os.path.basename(path),
                            reason=status["reason"])
            signoff.mark_recorded(audit_dir, path)

    def done(self):
        super().done()
        events.unsubscribe(self._event)
        self.metrics.close()
        self.sinks.close()


def exporter_names() -> set[str]:
    """The state-file names of the exporters configured now (as export/addon.py names them)."""
    return {re.sub(r"[^A-Za-z0-9]+", "-", url.split("?")[0]).strip("-")
            for url in getattr(ctx.options, "pangate_export", None) or ()}


def export_backlogs(audit_dir: str, durable_seq: int, configured: set[str]) -> dict[str, int]:
    """Durable records each configured exporter has not had acknowledged, from its state file."""
    out = {}
    try:
        names = [n for n in os.listdir(audit_dir) if n.startswith(".export-") and n.endswith(".state")]
    except OSError:
        return out
    for n in sorted(names):
        if n[len(".export-"):-len(".state")] not in configured:
            continue  # left by an exporter no longer configured
        try:
            with open(os.path.join(audit_dir, n), encoding="utf-8") as f:
                acked = int(json.load(f)["acked_seq"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out[n[len(".export-"):-len(".state")]] = max(durable_seq - acked, 0)
    return out
