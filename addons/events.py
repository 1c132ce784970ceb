"""Security events that are not flows: policy reloads, token refusals, revocations, alerts.

Producers call `emit`; the audit addon records every event and the alerting
sinks see the ones marked as alerts. Kept as a tiny in-process bus so no
component needs to know which sinks exist.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("pangate")
_subscribers: list[Callable[[dict], None]] = []


def subscribe(fn: Callable[[dict], None]) -> None:
    if fn not in _subscribers:
        _subscribers.append(fn)


def unsubscribe(fn: Callable[[dict], None]) -> None:
    if fn in _subscribers:
        _subscribers.remove(fn)


def emit(event: str, alert: bool = False, **fields) -> dict:
    """Publish one event. Fields must already be free of secrets and raw card data."""
    record = {"event": event, "alert": alert, "at": time.time(), **fields}
    if alert:
        log.warning("pangate ALERT %s: %s", event, {k: v for k, v in fields.items()})
    for fn in list(_subscribers):
        try:
            fn(record)
        except Exception:  # one broken sink must not silence the others
            log.exception("pangate event subscriber failed")
    return record
