"""Approval notifications: a Slack-compatible JSON webhook for every new pending approval.

Sent from a worker thread so a slow or broken receiver never delays a hold or
the event loop; failures are logged, never retried in the data path.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

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
        self._tls = ssl.create_default_context()  # verified against the system roots, always

    def send(self, payload: dict) -> None:
        if self.url:
            self._pool.submit(self._post, self.url, payload)

    def _post(self, url: str, payload: dict) -> None:
        req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pangate"})
        try:
            # No proxy from the environment: the notification goes straight to its receiver.
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                 urllib.request.HTTPSHandler(context=self._tls))
            with opener.open(req, timeout=TIMEOUT) as resp:
                resp.read(1024)
        except (urllib.error.URLError, OSError, ValueError) as e:
            log.error("pangate approval webhook to %s failed: %s", urlsplit(url).netloc, e)
        else:
            log.info("pangate approval webhook sent for %s", payload.get("approval_id"))
