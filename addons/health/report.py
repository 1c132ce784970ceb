"""What /healthz and /readyz answer: pure, so the rules are tested without a listener.

Liveness only says the process and its event loop answer (the answer is
produced on that loop). Readiness says this instance would serve a request
now: the policy is loaded, every stage is healthy (token keys, the audit
sink, the revocation list, the shared state), and it lists what is not.
"""

from __future__ import annotations

import ipaddress
import time


def liveness(started: float, instance: str | None, now: float | None = None) -> tuple[int, dict]:
    now = time.time() if now is None else now
    return 200, {"status": "ok", "instance": instance, "uptime_seconds": round(now - started, 1)}


def readiness(checks: dict[str, tuple[bool, str]], instance: str | None) -> tuple[int, dict]:
    """checks: name -> (ok, problem). 200 when all are ok, else 503 naming the failing ones."""
    failing = {name: problem or "not ready" for name, (ok, problem) in checks.items() if not ok}
    doc = {"status": "ready" if not failing else "not_ready", "instance": instance,
           "checks": {name: "ok" if ok else "failing" for name, (ok, _) in checks.items()}}
    if failing:
        doc["problems"] = failing
    return (200 if not failing else 503), doc


def parse_listen(value: str) -> tuple[str, int] | None:
    """'0.0.0.0:8090' -> (host, port); '' -> None (off). Any address: it serves no secret."""
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not 0 <= int(port) < 65536:
            raise ValueError
        if host != "localhost":
            ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"pangate_health_listen: {value!r} is not HOST:PORT (or empty to disable)") from None
    return host, int(port)
