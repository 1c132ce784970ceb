"""Live detectors on what the gateway sees (PCI DSS 10.4.1.1, 10.7.2): pure, with an injectable clock.

The glue (monitor/addon.py) turns each finished flow into `FlowFacts` and
passes every security event through; the detectors answer with `Alert`s.
Each alert names its detector, severity, identity and evidence (the counts,
the window, the rule), and holds a cooldown key, so one incident is one
alert however long it lasts.

Detectors:
  refusal_burst     denials of one identity within a window
  pan_volume        PANs returned to one identity above a threshold or its usual volume (bulk leak)
  new_access        an identity reaching a destination or rule it never used, once its baseline is warm
  request_rate      requests of one identity above a threshold or its usual rate
  bad_tokens        bad tokens from one source; one identity name tried from several sources
  approval_timeouts approvals of one requester left to time out
  outside_hours     activity of an identity outside the hours the policy declares for it
  control_failure   a control failing: audit sink down, policy or revocations rejected, export or
                    recording failing, audit or export backlog growing
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pangate.monitor.config import MonitorConfig
from pangate.monitor.store import CounterStore, MemoryStore

SEVERITIES = ("info", "warning", "high", "critical")
# Security events that mean a control failed, with the severity of the alert and its recovery event.
CONTROL_EVENTS = {
    "audit_write_failed": ("critical", "audit_write_recovered"),
    "audit_response_withheld": ("critical", "audit_write_recovered"),
    "policy_rejected": ("high", "policy_loaded"),
    "revocations_rejected": ("high", "revocations_loaded"),
    "export_failing": ("high", None),
    "recording_write_failed": ("critical", "recording_write_recovered"),
}
RECOVERY: dict[str, list[str]] = {}
for _name, (_, _recovered) in CONTROL_EVENTS.items():
    if _recovered:
        RECOVERY.setdefault(_recovered, []).append(_name)
# A client with no token yet is waiting for the challenge, not guessing.
NOT_BAD_TOKEN = {"missing_token"}
BASELINE_WINDOWS = 3  # windows seen before an identity's "usual" volume is trusted
EWMA = 0.3


@dataclass(frozen=True)
class FlowFacts:
    """What the detectors need of one finished flow; names only, no raw request data."""

    identity: str | None  # the proven identity
    outcome: str  # allowed, report_only, denied, token_refused, unavailable, error
    source: str | None = None  # client IP
    claimed: str | None = None  # the identity name a refused token claimed, when it is one of the policy's
    code: str | None = None
    rule: str | None = None
    destination: str | None = None  # destination name in the policy
    pans: int = 0
    request_id: str | None = None


@dataclass
class Alert:
    detector: str
    severity: str
    summary: str
    identity: str | None
    evidence: dict
    key: str = ""
    at: float = 0.0
    id: str = field(default="")

    def fields(self) -> dict:
        """The `alert` record's fields (the audit trail adds time and chain)."""
        return {"alert_id": self.id, "detector": self.detector, "severity": self.severity,
                "identity": self.identity, "summary": self.summary, "evidence": self.evidence}

    def text(self) -> str:
        """One line for chat (Slack `text`)."""
        icon = {"critical": ":rotating_light:", "high": ":warning:"}.get(self.severity, ":information_source:")
        bits = ", ".join(f"{k}={v}" for k, v in self.evidence.items() if not isinstance(v, (dict, list)))
        return f"{icon} pangate {self.severity} alert {self.detector}: {self.summary} ({bits})"


class Detectors:
    def __init__(self, config: MonitorConfig, store: CounterStore | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store if store is not None else MemoryStore()
        self.clock = clock
        self._tz = None
        self._backlog: dict[str, int] = {}

    def reconfigure(self, config: MonitorConfig) -> None:
        self.config, self._tz = config, None

    # ------------------------------------------------------------------ helpers

    def _alert(self, detector: str, severity: str, identity: str | None, summary: str, evidence: dict,
               key: str) -> Alert | None:
        now = self.clock()
        if not self.store.claim(f"cooldown:{detector}:{key}", now, self.config.cooldown):
            return None
        aid = "alr_" + hashlib.sha256(f"{detector}:{key}:{now}".encode()).hexdigest()[:16]
        return Alert(detector, severity, summary, identity, evidence, key, now, aid)

    def _window(self, key: str, amount: float, window: float) -> float:
        return self.store.add(key, amount, self.clock(), window)

    def _usual(self, key: str, amount: float, window: float) -> float | None:
        """Fold amount into tumbling windows of key; the usual amount per window once known."""
        now = self.clock()
        st = self.store.get(key) or {"start": now, "count": 0.0, "ewma": 0.0, "windows": 0}
        if now >= st["start"] + window:
            passed = int((now - st["start"]) // window)
            for i in range(min(passed, 10)):
                value = st["count"] if i == 0 else 0.0
                st["ewma"] = value if st["windows"] == 0 else EWMA * value + (1 - EWMA) * st["ewma"]
                st["windows"] += 1
            st["start"] += passed * window
            st["count"] = 0.0
        st["count"] += amount
        self.store.put(key, st)
        return st["ewma"] if st["windows"] >= BASELINE_WINDOWS else None

    def _volume(self, detector: str, who: str, amount: float, t, unit: str, severity: str) -> Alert | None:
        """A threshold or a jump over the usual volume per window."""
        total = self._window(f"{detector}:{who}", amount, t.window)
        usual = self._usual(f"{detector}:usual:{who}", amount, t.window) if t.factor else None
        if total >= t.count:
            why = f"{total:g} {unit} in {t.window:g}s (threshold {t.count:g})"
        elif usual is not None and total >= t.floor and total > t.factor * max(usual, 1.0):
            why = f"{total:g} {unit} in {t.window:g}s, {t.factor:g}x above the usual {usual:.1f}"
        else:
            return None
        evidence = {"count": total, "window_seconds": t.window, "threshold": t.count, "unit": unit}
        if usual is not None:
            evidence["usual"] = round(usual, 2)
        return self._alert(detector, severity, who, f"{who}: {why}", evidence, who)

    # ------------------------------------------------------------------ flows

    def observe_flow(self, f: FlowFacts) -> list[Alert]:
        if not self.config.enabled:
            return []
        out = []
        if f.outcome == "token_refused":
            out += self._bad_token(f)
        elif f.identity:
            out += self._identity_flow(f)
        return [a for a in out if a is not None]

    def _identity_flow(self, f: FlowFacts) -> list[Alert | None]:
        c, who, out = self.config, f.identity, []
        if c.refusals and f.outcome == "denied":
            total = self._window(f"refusals:{who}", 1, c.refusals.window)
            if total >= c.refusals.count:
                out.append(self._alert("refusal_burst", "high", who,
                                       f"{who} was refused {total:g} times in {c.refusals.window:g}s",
                                       {"count": total, "window_seconds": c.refusals.window,
                                        "threshold": c.refusals.count, "last_code": f.code,
                                        "last_rule": f.rule, "destination": f.destination}, who))
        if c.request_rate and f.outcome in ("allowed", "report_only", "denied"):
            out.append(self._volume("request_rate", who, 1, c.request_rate, "requests", "warning"))
        if c.pan_volume and f.pans:
            a = self._volume("pan_volume", who, f.pans, c.pan_volume, "PANs", "critical")
            if a is not None:
                a.evidence.update(destination=f.destination, rule=f.rule)
            out.append(a)
        if f.outcome in ("allowed", "report_only"):
            out.append(self._new_access(f))
        hours = c.hours.get(who)
        if hours is not None:
            local = datetime.fromtimestamp(self.clock(), self._zone())
            if not hours.allows(local.weekday(), local.hour * 60 + local.minute):
                out.append(self._alert("outside_hours", "warning", who,
                                       f"{who} active at {local.strftime('%a %H:%M')} {c.timezone}, "
                                       f"outside its declared hours {hours.text}",
                                       {"at": local.strftime("%Y-%m-%d %H:%M"), "timezone": c.timezone,
                                        "declared": hours.text, "outcome": f.outcome,
                                        "destination": f.destination, "rule": f.rule}, who))
        return out

    def _zone(self):
        if self._tz is None:
            import zoneinfo

            self._tz = zoneinfo.ZoneInfo(self.config.timezone)
        return self._tz

    def _new_access(self, f: FlowFacts) -> Alert | None:
        c, who, now = self.config, f.identity, self.clock()
        base = self.store.get(f"baseline:{who}") or {"first": now, "requests": 0}
        base["requests"] += 1
        self.store.put(f"baseline:{who}", base)
        warm = now - base["first"] >= c.warmup and base["requests"] > c.warmup_requests
        new = []
        if f.destination and self.store.remember(f"seen:{who}:destination", f.destination):
            new.append("destination")
        if f.rule and self.store.remember(f"seen:{who}:rule", f.rule):
            new.append("rule")
        if not (c.new_access and warm and new):
            return None
        what = " and ".join(f"{n} {getattr(f, n)}" for n in new)
        return self._alert("new_access", "high", who, f"{who} used {what} for the first time",
                           {"new": new, "destination": f.destination, "rule": f.rule, "outcome": f.outcome,
                            "baseline_requests": base["requests"] - 1,
                            "baseline_since": round(base["first"], 3)},
                           f"{who}:{f.destination}:{f.rule}")

    def _bad_token(self, f: FlowFacts) -> list[Alert | None]:
        t = self.config.bad_tokens
        if t is None or f.code in NOT_BAD_TOKEN:
            return []
        out = []
        source = f.source or "unknown"
        total = self._window(f"bad_tokens:{source}", 1, t.window)
        if total >= t.count:
            out.append(self._alert("bad_tokens", "high", f.claimed,
                                   f"{total:g} bad tokens from {source} in {t.window:g}s",
                                   {"source": source, "count": total, "window_seconds": t.window,
                                    "threshold": t.count, "last_code": f.code}, source))
        if f.claimed:
            n = self.store.distinct(f"bad_token_sources:{f.claimed}", source, self.clock(), t.window)
            if n >= self.config.bad_token_sources:
                out.append(self._alert("bad_tokens", "high", f.claimed,
                                       f"bad tokens for {f.claimed} from {n} sources in {t.window:g}s",
                                       {"sources": n, "window_seconds": t.window,
                                        "threshold": self.config.bad_token_sources, "last_code": f.code},
                                       f"identity:{f.claimed}"))
        return out

    # ------------------------------------------------------------------ events

    def observe_event(self, record: dict) -> list[Alert]:
        """Security events of the bus (`pangate.common.events`)."""
        if not self.config.enabled:
            return []
        name = record.get("event")
        if name in RECOVERY:  # the incident is over: the next failure is a new one
            for failed in RECOVERY[name]:
                self.store.release(f"cooldown:control_failure:{failed}")
            return []
        if name in CONTROL_EVENTS:
            severity = CONTROL_EVENTS[name][0]
            detail = record.get("reason") or record.get("error") or ""
            evidence = {"event": name, "detail": str(detail)[:300]}
            for k in ("path", "exporter", "resume_seq", "request_id", "record_seq"):
                if record.get(k) is not None:
                    evidence[k] = record[k]
            a = self._alert("control_failure", severity, None, f"control failed: {name}"
                            + (f": {str(detail)[:200]}" if detail else ""), evidence, name)
            return [a] if a else []
        t = self.config.approval_timeouts
        if name == "approval_timed_out" and t is not None:
            who = record.get("requester") or "unknown"
            total = self._window(f"approval_timeouts:{who}", 1, t.window)
            if total >= t.count:
                a = self._alert("approval_timeouts", "warning", who,
                                f"{total:g} approval(s) of {who} timed out in {t.window:g}s",
                                {"count": total, "window_seconds": t.window, "threshold": t.count,
                                 "rule": record.get("rule"), "approval_id": record.get("approval_id")}, who)
                return [a] if a else []
        return []

    def observe_backlog(self, audit_backlog: int | None, export_backlogs: dict[str, int]) -> list[Alert]:
        """Called periodically: records not yet durable, records not yet exported (per exporter)."""
        if not self.config.enabled:
            return []
        out = []
        checks = [("audit", audit_backlog, self.config.audit_backlog)]
        checks += [(f"export:{name}", n, self.config.export_backlog) for name, n in export_backlogs.items()]
        for name, n, limit in checks:
            if n is None:
                continue
            before = self._backlog.get(name)
            self._backlog[name] = n
            if n < limit:
                self.store.release(f"cooldown:control_failure:backlog:{name}")
                continue
            if before is None or n <= before:
                continue  # large but not growing (draining, or first seen): not (yet) an incident
            a = self._alert("control_failure", "high", None,
                            f"{name} backlog growing: {n} records (threshold {limit})",
                            {"event": "backlog", "backlog": name, "records": n, "threshold": limit,
                             "previous": before}, f"backlog:{name}")
            if a:
                out.append(a)
        return out
