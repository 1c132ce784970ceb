"""The `monitor:` section of policies.yaml: what the live detectors look for.

Every detector has a default, so a policy without the section is watched with
sensible thresholds; a detector set to `false` is off. Read with the policy's
own located reads, so a mistake is reported as `policies.yaml:LINE: monitor...`.

    monitor:
      cooldown: 10m                  # one incident, one alert: the same alert is not repeated within this
      refusals: {count: 20, window: 1m}                     # denials per identity
      pan_volume: {count: 1000, window: 5m, factor: 10, floor: 100}   # PANs returned to one identity
      request_rate: {count: 1200, window: 1m, factor: 5, floor: 100}  # requests per identity
      bad_tokens: {count: 10, window: 1m, sources: 3}       # per source; distinct sources per identity name
      approval_timeouts: {count: 1, window: 1h}             # per requester
      new_access: {warmup: 1d, warmup_requests: 100}        # a destination or rule never used before
      hours:                                                # declared working hours, per identity
        timezone: UTC
        identities: {batch-export: "Mon-Fri 01:00-05:00"}
      backlog: {audit: 1000, export: 10000}                 # records not yet durable / not yet exported

`factor`: also alert when a window holds more than `factor` times the
identity's usual volume (learned per window, once three windows are known),
if it is at least `floor`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pangate.policy.schema import Section, parse_duration

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^\s*(?:(\w{3})(?:\s*-\s*(\w{3}))?\s+)?(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Threshold:
    count: float
    window: float  # seconds
    factor: float = 0.0  # > 0: also alert above factor x the usual volume per window
    floor: float = 0.0  # ... when the window holds at least this much


@dataclass(frozen=True)
class Hours:
    """When an identity is expected to work: (weekdays, start minute, end minute) spans."""

    spans: tuple[tuple[frozenset[int], int, int], ...]
    text: str

    def allows(self, weekday: int, minute: int) -> bool:
        for days, start, end in self.spans:
            if start <= end:
                if weekday in days and start <= minute < end:
                    return True
            else:  # past midnight: 22:00-02:00 belongs to the day it starts on
                if (weekday in days and minute >= start) or ((weekday - 1) % 7 in days and minute < end):
                    return True
        return False


@dataclass(frozen=True)
class MonitorConfig:
    enabled: bool = True
    cooldown: float = 600.0
    refusals: Threshold | None = Threshold(20, 60)
    pan_volume: Threshold | None = Threshold(1000, 300, factor=10, floor=100)
    request_rate: Threshold | None = Threshold(1200, 60, factor=5, floor=100)
    bad_tokens: Threshold | None = Threshold(10, 60)
    bad_token_sources: int = 3  # distinct sources presenting bad tokens for one identity name, same window
    approval_timeouts: Threshold | None = Threshold(1, 3600)
    new_access: bool = True
    warmup: float = 86400.0  # an identity's baseline is learned this long before it alerts...
    warmup_requests: int = 100  # ...and from at least this many requests
    timezone: str = "UTC"
    hours: dict[str, Hours] = field(default_factory=dict)
    audit_backlog: int = 1000
    export_backlog: int = 10000


DEFAULT = MonitorConfig()


def parse_hours(text: str) -> Hours:
    """`Mon-Fri 08:00-18:00`, several joined by commas; a span without days is every day."""
    spans = []
    for part in str(text).split(","):
        m = _SPAN.match(part)
        if not m:
            raise ValueError(f"{part.strip()!r} is not like 'Mon-Fri 08:00-18:00'")
        first, last, h1, m1, h2, m2 = m.groups()
        if first:
            a = DAYS.index(first.lower()) if first.lower() in DAYS else -1
            b = DAYS.index(last.lower()) if last and last.lower() in DAYS else (a if not last else -1)
            if a < 0 or b < 0:
                raise ValueError(f"unknown day in {part.strip()!r} (use Mon, Tue, ... Sun)")
            days = frozenset((a + i) % 7 for i in range((b - a) % 7 + 1))
        else:
            days = frozenset(range(7))
        start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
        if not (0 <= start <= 1440 and 0 <= end <= 1440 and int(m1) < 60 and int(m2) < 60) or start == end:
            raise ValueError(f"{part.strip()!r}: times run from 00:00 to 24:00 and a span is not empty")
        spans.append((days, start, end))
    return Hours(tuple(spans), str(text))


def _seconds(s: Section, key: str, default: float) -> float:
    if key not in s.node:
        return default
    try:
        value = parse_duration(s.get(key))
    except ValueError as e:
        raise s.error(key, str(e)) from None
    if value < 0:
        raise s.error(key, "must not be negative")
    return value


def _number(s: Section, key: str, default: float, lo: float = 0) -> float:
    value = s.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo:
        raise s.error(key, f"expected a number of at least {lo}, got {value!r}")
    return float(value)


def _threshold(doc: Section, key: str, default: Threshold, extra: set[str] = frozenset()):
    """A detector's threshold; `false` turns the detector off. Returns (threshold or None, section)."""
    if key not in doc.node:
        return default, None
    raw = doc.get(key)
    if raw is False:
        return None, None
    if raw is True:
        return default, None
    s = doc.section(key)
    s.keys({"count", "window", "factor", "floor"} | set(extra))
    t = Threshold(_number(s, "count", default.count, 1), _seconds(s, "window", default.window),
                  _number(s, "factor", default.factor), _number(s, "floor", default.floor))
    if t.window <= 0:
        raise s.error("window", "must be longer than zero")
    return t, s


def parse_monitor(s: Section | None, identities) -> MonitorConfig:
    """The monitor section (None: the defaults). `identities`: the policy's identity names."""
    if s is None:
        return DEFAULT
    s.keys({"enabled", "cooldown", "refusals", "pan_volume", "request_rate", "bad_tokens", "approval_timeouts",
            "new_access", "hours", "backlog"})
    d = DEFAULT
    refusals, _ = _threshold(s, "refusals", d.refusals)
    pans, _ = _threshold(s, "pan_volume", d.pan_volume)
    rate, _ = _threshold(s, "request_rate", d.request_rate)
    bad, bad_s = _threshold(s, "bad_tokens", d.bad_tokens, {"sources"})
    sources = d.bad_token_sources if bad_s is None else bad_s.int("sources", d.bad_token_sources, 1, 10000)
    timeouts, _ = _threshold(s, "approval_timeouts", d.approval_timeouts)
    new_access, warmup, warmup_requests = d.new_access, d.warmup, d.warmup_requests
    if "new_access" in s.node:
        raw = s.get("new_access")
        if isinstance(raw, bool):
            new_access = raw
        else:
            na = s.section("new_access").keys({"warmup", "warmup_requests"})
            warmup = _seconds(na, "warmup", d.warmup)
            warmup_requests = na.int("warmup_requests", d.warmup_requests, 0, 10**9)
    tz, hours = d.timezone, {}
    h = s.section("hours")
    if h is not None:
        h.keys({"timezone", "identities"})
        tz = h.str("timezone", d.timezone)
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(tz)
        except Exception:  # ZoneInfoNotFoundError, ValueError for odd names
            raise h.error("timezone", f"unknown time zone {tz!r}") from None
        ids = h.section("identities")
        for name, text in (ids.node.items() if ids is not None else ()):
            if name not in identities:
                raise ids.error(str(name), f"unknown identity {name!r}")
            try:
                hours[name] = parse_hours(text)
            except ValueError as e:
                raise ids.error(str(name), str(e)) from None
    audit_backlog, export_backlog = d.audit_backlog, d.export_backlog
    b = s.section("backlog")
    if b is not None:
        b.keys({"audit", "export"})
        audit_backlog = b.int("audit", d.audit_backlog, 1)
        export_backlog = b.int("export", d.export_backlog, 1)
    return MonitorConfig(s.bool("enabled", True), _seconds(s, "cooldown", d.cooldown), refusals, pans, rate, bad,
                         sources, timeouts, new_access, warmup, warmup_requests, tz, hours, audit_backlog,
                         export_backlog)
