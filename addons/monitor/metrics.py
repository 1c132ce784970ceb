"""Prometheus metrics of the gateway: counts per identity, destination, rule and decision.

Label values are bounded: identity, destination and rule names are taken only
from the policy in force (anything else, and anything past LABEL_CAP distinct
values per label, is "other"), codes only from a short known list, and every
value goes through the sink scrubber. Never a path, a host or raw input.

One registry per gateway (not prometheus_client's global one), so reloading
the gateway script builds fresh metrics instead of registering them twice.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

from pangate.sinks import scrubber

log = logging.getLogger("pangate")
LABEL_CAP = 200
OTHER = "other"
DECISIONS = ("allowed", "report_only", "denied", "token_refused", "unavailable", "error", "refused")
TOKEN_CODES = ("missing_token", "malformed", "expired", "not_yet_valid", "bad_signature", "bad_audience",
               "unknown_issuer", "unknown_key", "alg_not_allowed", "unknown_identity", "identity_mismatch",
               "revoked", "unknown_static_key", "keys_unavailable", "bad_issuer", "auth_throttled")
APPROVAL_OUTCOMES = ("pending", "granted", "denied", "timed_out", "vote")


class Labels:
    """Turns names into label values: known names pass (up to the cap), the rest are "other"."""

    def __init__(self, cap: int = LABEL_CAP):
        self.cap = cap
        self.known: dict[str, set[str]] = {"identity": set(), "destination": set(), "rule": set()}
        self.used: dict[str, dict[str, str]] = {k: {} for k in self.known}  # name -> scrubbed label value

    def set_policy(self, policy) -> None:
        if policy is None:
            return
        self.known = {"identity": set(policy.identities), "destination": set(policy.destinations),
                      "rule": {r.id for role in policy.roles.values() for r in role.rules}}

    def value(self, kind: str, name: str | None) -> str:
        if not name:
            return "none"
        if name not in self.known.get(kind, ()):
            return OTHER
        used = self.used.setdefault(kind, {})
        value = used.get(name)
        if value is None:
            if len(used) >= self.cap:
                return OTHER
            value = used[name] = scrubber.default().text(name)
        return value


def one_of(value: str | None, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else (OTHER if value else "none")


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = Labels()
        r = self.registry
        self.requests = Counter("pangate_requests", "Finished flows by identity, destination, rule and decision.",
                                ["identity", "destination", "rule", "decision"], registry=r)
        self.pans = Counter("pangate_pans_masked", "Card numbers masked in what was returned, by identity "
                            "and destination.", ["identity", "destination"], registry=r)
        self.latency = Histogram("pangate_request_duration_seconds", "Time from request to the end of the "
                                 "response, by decision.", ["decision"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.held = Gauge("pangate_held_flows", "Requests held now, waiting for an approval.", registry=r)
        self.approvals = Counter("pangate_approvals", "Approval steps by outcome.", ["outcome"], registry=r)
        self.token_failures = Counter("pangate_token_failures", "Refused tokens by code.", ["code"], registry=r)
        self.alerts = Counter("pangate_alerts", "Alerts raised by detector and severity.",
                              ["detector", "severity"], registry=r)
        self.audit_latency = Histogram("pangate_audit_write_seconds", "Time until an audit record is on disk.",
                                       registry=r, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                            2.5, 5))
        self.audit_backlog = Gauge("pangate_audit_backlog_records", "Audit records appended, not yet durable.",
                                   registry=r)
        self.export_backlog = Gauge("pangate_export_backlog_records", "Durable audit records not yet "
                                    "acknowledged by a SIEM exporter.", ["exporter"], registry=r)
        self.control_up = Gauge("pangate_control_up", "1 while a control is healthy, 0 while it is failing.",
                                ["control"], registry=r)
        self._server = None
        self._held_ids: set[str] = set()

    # ------------------------------------------------------------------ observations

    def flow(self, identity, destination, rule, decision, pans: int, seconds: float | None) -> None:
        L = self.labels
        decision = one_of(decision, DECISIONS)
        self.requests.labels(L.value("identity", identity), L.value("destination", destination),
                             L.value("rule", rule), decision).inc()
        if pans:
            self.pans.labels(L.value("identity", identity), L.value("destination", destination)).inc(pans)
        if seconds is not None and seconds >= 0:
            self.latency.labels(decision).observe(seconds)

    def event(self, record: dict) -> None:
        name = record.get("event") or ""
        if name == "token_refused":
            self.token_failures.labels(one_of(record.get("code"), TOKEN_CODES)).inc()
        elif name == "auth_throttled":
            self.token_failures.labels("auth_throttled").inc()
        elif name.startswith("approval_") and name != "approval_ui_resume_refused":
            outcome = name.removeprefix("approval_")
            self.approvals.labels(one_of(outcome, APPROVAL_OUTCOMES)).inc()
            aid = str(record.get("approval_id") or "")
            if outcome == "pending" and record.get("mode") == "hold" and len(self._held_ids) < 100000:
                self._held_ids.add(aid)
            elif outcome in ("granted", "denied", "timed_out"):
                self._held_ids.discard(aid)
            self.held.set(len(self._held_ids))
        elif name == "alert":
            self.alerts.labels(one_of(record.get("detector"), DETECTORS),
                               one_of(record.get("severity"), ("info", "warning", "high", "critical"))).inc()

    def exporters(self, backlogs: dict[str, int]) -> None:
        for name, n in list(backlogs.items())[:20]:  # exporter names come from the operator's options
            self.export_backlog.labels(scrubber.default().text(name)[:80]).set(n)

    # ------------------------------------------------------------------ endpoint

    def serve(self, listen: str) -> tuple[str, int]:
        host, port = parse_listen(listen)
        self._server, _ = start_http_server(port, host, registry=self.registry)
        return host, self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


DETECTORS = ("refusal_burst", "pan_volume", "new_access", "request_rate", "bad_tokens", "approval_timeouts",
             "outside_hours", "control_failure")


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 in brackets); ValueError says what is wrong."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{listen!r} is not HOST:PORT")
    return host, int(port)
