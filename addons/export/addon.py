"""SIEM export: copies of the audit records to stdout, syslog and HTTP collectors.

The local audit log stays the source of truth. Each exporter is a background
thread that tails the durable audit files by seq, sends batches, and persists
the last acknowledged seq in `<audit dir>/.export-<name>.state`; after an
outage or a restart it resumes from there, so a collector that is down loses
nothing, and the data path never waits for it.

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
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence

from mitmproxy import ctx, exceptions

from pangate.common import events
from pangate.common.files import write_atomic
from pangate.audit.log import list_audit_files, scrub_line
from pangate.export.transport import ExportError, from_url
from pangate.chain.failsafe import Component

log = logging.getLogger("pangate")


class Exporter:
    """Tails the audit files from the last acknowledged seq and ships batches."""

    BATCH = 500

    def __init__(self, url: str, directory: str, transport, durable=lambda: None, on_outage=None):
        self.url, self.directory, self.transport = url, directory, transport
        self.durable = durable  # highest seq known to be on disk; None: whatever is in the files
        self.on_outage = on_outage
        self.name = re.sub(r"[^A-Za-z0-9]+", "-", url.split("?")[0]).strip("-")
        self.state_path = os.path.join(directory, f".export-{self.name}.state")
        self.acked = self._load_state()
        self.sent = 0
        self._stop = threading.Event()
        self._pos: tuple[str, int] | None = None  # (file, byte offset) just after `acked`
        self.thread = threading.Thread(target=self._run, name=f"pangate-export-{self.name}", daemon=True)

    def start(self) -> "Exporter":
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.thread.join(timeout)
        self.transport.close()

    def _load_state(self) -> int:
        try:
            with open(self.state_path, encoding="utf-8") as f:
                return int(json.load(f)["acked_seq"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as e:
            raise ExportError(f"export state {self.state_path} is unreadable ({e}); "
                              "remove it to resend the whole log") from None

    def _save_state(self) -> None:
        write_atomic(self.state_path, json.dumps({"acked_seq": self.acked, "url": self.url.split("?")[0],
                                                   "time": time.time()}).encode(), 0o640)

    def _run(self) -> None:
        backoff, down_since = 0.2, None
        while not self._stop.is_set():
            try:
                batch = self._next_batch()
                if not batch:
                    self._stop.wait(0.2)
                    continue
                self.transport.send([scrub_line(line) for _, line, _ in batch])  # the export's own wall
            except (OSError, ExportError) as e:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("pangate export to %s failing (%s); retrying from seq %d",
                                self.name, e, self.acked + 1)
                    if self.on_outage:
                        self.on_outage(self, str(e))
                self.transport.close()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self.acked, self._pos = batch[-1][0], batch[-1][2]
            self.sent += len(batch)
            self._save_state()
            if down_since is not None:
                log.info("pangate export to %s resumed after %.1fs", self.name, time.monotonic() - down_since)
            backoff, down_since = 0.2, None

    def _next_batch(self) -> list[tuple[int, bytes, tuple[str, int]]]:
        """Up to BATCH complete, durable records after `acked`: (seq, line, position after it)."""
        limit = self.durable()
        files = list_audit_files(self.directory)
        if self._pos is None or self._pos[0] not in files:
            self._pos = self._find_start(files)
        if self._pos is None:
            return []
        path, off = self._pos
        out = []
        for p in files[files.index(path):]:
            with open(p, "rb") as f:
                f.seek(off if p == path else 0)
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # being written
                    pos = (p, f.tell())
                    rec = json.loads(raw)
                    seq = rec["seq"]
                    if seq <= self.acked:
                        self._pos = pos
                        continue
                    if limit is not None and seq > limit:
                        return out
                    out.append((seq, raw.rstrip(b"\n"), pos))
                    if len(out) >= self.BATCH:
                        return out
        return out

    def _find_start(self, files: list[str]):
        """The newest file whose first record is not after acked+1 (older ones are done)."""
        start = None
        for p in files:
            with open(p, "rb") as f:
                first = f.readline()
            if not first.endswith(b"\n"):
                break
            if json.loads(first)["seq"] > self.acked + 1 and start is not None:
                break
            start = (p, 0)
        return start


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
