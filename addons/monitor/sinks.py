"""Where alerts go besides the audit trail: a webhook (Slack-compatible JSON) and syslog.

Everything an alert says passes the sink scrubber first (no raw PAN, token or
injected secret reaches a receiver). Deliveries run on worker threads: a slow
or dead receiver never holds up the data path; failures are logged.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from pangate.common.webhook import Notifier, check_url
from pangate.export.transport import ExportError, from_url
from pangate.monitor.detectors import Alert
from pangate.sinks import scrubber

log = logging.getLogger("pangate")
SYSLOG_SCHEMES = ("syslog+udp", "syslog+tcp", "syslog+tls")


def check_syslog(url: str) -> str | None:
    """Why this syslog URL is refused, or None."""
    if not url:
        return None
    if url.split("://", 1)[0] not in SYSLOG_SCHEMES:
        return f"expected {', '.join(s + '://HOST:PORT' for s in SYSLOG_SCHEMES)}"
    try:
        from_url(url)
    except ExportError as e:
        return str(e)
    return None


def scrubbed(alert: Alert) -> Alert:
    """The alert as any sink may see it."""
    s = scrubber.default()
    return Alert(alert.detector, alert.severity, s.text(alert.summary),
                 s.text(alert.identity) if alert.identity else None, s.value(alert.evidence),
                 alert.key, alert.at, alert.id)


def payload(alert: Alert) -> dict:
    return {"text": alert.text(), "pangate": "alert", **alert.fields(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(alert.at))}


class AlertSinks:
    def __init__(self):
        self.webhook = Notifier()
        self.syslog_url = ""
        self._syslog = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pangate-alert-syslog")

    def configure(self, webhook: str, syslog: str) -> None:
        """Raises ValueError naming the problem."""
        for what, why in (("webhook", check_url(webhook)), ("syslog", check_syslog(syslog))):
            if why:
                raise ValueError(f"alert {what}: {why}")
        self.webhook.url = webhook
        if syslog != self.syslog_url:
            old, self._syslog = self._syslog, (from_url(syslog) if syslog else None)
            self.syslog_url = syslog
            if old is not None:
                self._pool.submit(old.close)

    def send(self, alert: Alert) -> None:
        """alert must already be scrubbed."""
        body = payload(alert)
        self.webhook.send(body)
        if self._syslog is not None:
            line = json.dumps({"event": "alert", "alert": True, **{k: v for k, v in body.items() if k != "pangate"}},
                              sort_keys=True).encode()
            self._pool.submit(self._send_syslog, self._syslog, line)

    @staticmethod
    def _send_syslog(transport, line: bytes) -> None:
        try:
            transport.send([line])
        except (OSError, ExportError) as e:
            log.error("pangate alert to syslog failed: %s", e)
            transport.close()

    def close(self) -> None:
        if self._syslog is not None:
            self._pool.submit(self._syslog.close)
