"""Security events that are not flows: policy reloads, token refusals, revocations, alerts.

Producers call `emit`; the audit addon records every event and the alerting
sinks see the ones marked as alerts. Kept as a tiny in-process bus so no
component needs to know which sinks exist.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("pangate")
_subscribers: list[Callable[[dict], None]] = []
# Subscribers that keep the record (the audit trail): events raised while none
# of them listens (at start, during a reload, before the trail is open) wait
# here for the first of them instead of vanishing, whoever else heard them.
_recorders: list[Callable[[dict], None]] = []
_unheard: deque = deque(maxlen=1000)


def subscribe(fn: Callable[[dict], None], records: bool = False) -> None:
    """Hear every event from now on; `records=True` also hears those raised while no recorder listened."""
    if fn not in _subscribers:
        _subscribers.append(fn)
    if records and fn not in _recorders:
        _recorders.append(fn)
        while _unheard:
            _deliver(fn, _unheard.popleft())


def unsubscribe(fn: Callable[[dict], None]) -> None:
    if fn in _subscribers:
        _subscribers.remove(fn)
    if fn in _recorders:
        _recorders.remove(fn)


def emit(event: str, alert: bool = False, **fields) -> dict:
    """Publish one event. Fields must already be free of secrets and raw card data."""
    record = {"event": event, "alert": alert, "at": time.time(), **fields}
    if alert:
        log.warning("pangate ALERT %s: %s", event, {k: v for k, v in fields.items()})
    if not _recorders:
        _unheard.append(record)
    for fn in list(_subscribers):
        _deliver(fn, record)
    return record


def _deliver(fn: Callable[[dict], None], record: dict) -> None:
    try:
        fn(record)
    except Exception:  # one broken sink must not silence the others
        log.exception("pangate event subscriber failed")
