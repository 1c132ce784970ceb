"""SIEM export: copies of the audit records to stdout, syslog and HTTP collectors.

The local audit log stays the source of truth. Each exporter (export/delivery.py)
is a background thread that tails the durable audit files by seq, sends batches,
and persists the last seq the collector acknowledged in
`<audit dir>/.export-<name>.state`; after an outage or a restart it resumes from
there and resends what was in flight, so a collector that is down loses nothing,
and the data path never waits for it.

Destinations (option `pangate_export`, one URL each):

  stdout:                                   JSON lines on standard output
  syslog+udp://HOST:PORT                    RFC 5424 over UDP (no acknowledgement: best effort)
  syslog+tcp://HOST:PORT                    RFC 5424, octet-counted frames (RFC 6587)
  syslog+tls://HOST:PORT?ca=PATH            the same over TLS, verified against PATH (or the system roots)
  hec://HOST:PORT/services/collector?token_env=VAR[&ca=PATH]   Splunk HTTP Event Collector (HTTPS)
  es://HOST:PORT/INDEX[?ca=PATH&token_env=VAR]                 Elasticsearch _bulk (HTTPS)

`hec+http://` and `es+http://` talk plain HTTP (for a collector on loopback).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from mitmproxy import ctx, exceptions

from pangate.common import events
from pangate.export.delivery import Exporter
from pangate.export.transport import ExportError, from_url
from pangate.chain.failsafe import Component

log = logging.getLogger("pangate")


class Export(Component):
    """Starts one Exporter per `pangate_export` URL on the audit directory."""

    name = "pangate-siem-export"  # mitmproxy has its own addon called "export"

    def __init__(self, audit):
        self.audit = audit
        self.exporters: list[Exporter] = []
        self._loop = None

    def load(self, loader):
        loader.add_option("pangate_export", Sequence[str], [],
                          "Send audit records to SIEM collectors: stdout:, syslog+udp|tcp|tls://HOST:PORT[?ca=PATH], "
                          "hec://HOST:PORT/services/collector?token_env=VAR, es://HOST:PORT/INDEX.")

    def configure(self, updated):
        if not {"pangate_export", "pangate_audit_dir"} & set(updated):
            return
        try:
            transports = [(url, from_url(url)) for url in ctx.options.pangate_export]
        except ExportError as e:
            raise exceptions.OptionsError(f"pangate_export: {e}") from None
        self._stop_all()
        for url, transport in transports:
            try:
                exp = Exporter(url, ctx.options.pangate_audit_dir, transport,
                               durable=self._durable, on_outage=self._outage)
            except ExportError as e:
                raise exceptions.OptionsError(f"pangate_export {url.split('?')[0]}: {e}") from None
            self.exporters.append(exp.start())

    def _durable(self):
        writer = self.audit.writer
        return writer.durable_seq if writer is not None else None

    def _outage(self, exporter: Exporter, reason: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: events.emit(
                "export_failing", alert=True, exporter=exporter.name, reason=reason, resume_seq=exporter.acked + 1))

    def running(self):
        self._loop = asyncio.get_running_loop()

    def _stop_all(self) -> None:
        for exp in self.exporters:
            exp.stop()
        self.exporters = []

    def done(self):
        self._stop_all()
