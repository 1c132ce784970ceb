"""Approval notifications: a Slack-compatible JSON webhook for every new pending approval.

Sent from a worker thread so a slow or broken receiver never delays a hold or
the event loop; failures are logged, never retried in the data path.
"""

from __future__ import annotations

import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from pangate.common import http
from pangate.sinks.scrubber import default as sink_scrubber

log = logging.getLogger("pangate")
TIMEOUT = 5.0


def check_url(url: str) -> str | None:
    """Why this webhook URL is refused, or None: https (verified), or http to loopback only."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"{url!r} is not an http(s) URL"
    if parts.username or parts.password:
        return "credentials in the webhook URL would be logged with it: put a token in its path instead"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return "a webhook over plain http may only go to loopback: use https"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def message(p, approve_hint: str) -> dict:
    """The notification body: a `text` line for Slack plus the structured fields."""
    req = p.summary
    text = (f":hourglass: pangate approval {p.id}: {p.requester} wants {req['method']} "
            f"{req['host']}{req['path']} (rule {p.rule.name}, {p.rule.required} approver(s) needed, "
            f"mode {p.rule.mode}). Approve: `{approve_hint} approve {p.id}` / "
            f"deny: `{approve_hint} deny {p.id} --reason ...`")
    return {"text": text, "approval_id": p.id, "requester": p.requester, "rule": p.rule.name,
            "mode": p.rule.mode, "required": p.rule.required, "request": req, "request_id": p.request_id,
            "expires_at": p.expires, "approve": f"{approve_hint} approve {p.id}",
            "deny": f"{approve_hint} deny {p.id} --reason REASON"}


class Notifier:
    """Posts notifications to one URL off the event loop."""

    def __init__(self):
        self.url = ""
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pangate-webhook")

    def send(self, payload: dict) -> None:
        if self.url:
            self._pool.submit(self._post, self.url, payload)

    def _post(self, url: str, payload: dict) -> None:
        # Verified against the system roots, no proxy from the environment: the
        # notification goes straight to its receiver (see common/http.py).
        # The one send point: the notification quotes the held request (host, path), so it
        # leaves only through the sink scrubber, every string of it.
        payload = sink_scrubber().value(payload)
        try:
            with http.session(timeout=TIMEOUT) as client, client.post(url, json=payload, stream=True) as resp:
                status = resp.status_code
        except http.RequestException as e:
            log.error("pangate approval webhook to %s failed: %s", urlsplit(url).netloc, type(e).__name__)
            return
        if status // 100 != 2:
            log.error("pangate approval webhook to %s failed: HTTP %d", urlsplit(url).netloc, status)
        else:
            log.info("pangate approval webhook sent for %s", payload.get("approval_id"))
