"""Delivery of audit records to one SIEM collector: what counts as delivered, and what is resent.

Plain module, no mitmproxy dependency (the Export addon starts one Exporter per
`pangate_export` URL). The local audit log stays the source of truth: each
Exporter tails the durable audit files by seq and persists the last seq the
collector acknowledged in `<audit dir>/.export-<name>.state`. A record counts
as delivered only on the collector's acknowledgement (transport.py says what
that is per protocol); everything sent but not acknowledged is resent after a
failure or a restart. So delivery is at-least-once: a repeat is possible only
for records in flight when something failed, and each message carries the
record's seq and hash so that a collector can drop or detect it.

Alerts about the audit trail itself (it cannot be written) cannot wait for the
trail: `direct_alerts.push(...)` hands them to every running exporter, which
sends them before its disk backlog.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
import time

from pangate.audit.log import list_audit_files, scrub_line, utc_iso
from pangate.common.files import write_atomic
from pangate.export.transport import ExportError

log = logging.getLogger("pangate")


class DirectAlerts:
    """A small in-memory fan-out: each subscribed exporter gets its own bounded queue."""

    MAX = 100  # per exporter; beyond, the oldest are dropped (and counted)

    def __init__(self):
        self._lock = threading.Lock()
        self._queues: list[collections.deque] = []
        self.dropped = 0

    def subscribe(self) -> collections.deque:
        q: collections.deque = collections.deque()
        with self._lock:
            self._queues.append(q)
        return q

    def unsubscribe(self, q: collections.deque) -> None:
        with self._lock:
            if q in self._queues:
                self._queues.remove(q)

    def push(self, event: str, **fields) -> None:
        """Queue one alert record (no seq: it is not, or not yet, in the trail) for every exporter."""
        rec = {"event": event, **fields, "direct": True, "time": utc_iso(time.time())}
        line = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        with self._lock:
            for q in self._queues:
                if len(q) >= self.MAX:
                    q.popleft()
                    self.dropped += 1
                q.append(line)


direct_alerts = DirectAlerts()


class Exporter:
    """Tails the audit files from the last acknowledged seq and ships batches."""

    BATCH = 500
    MAX_IN_FLIGHT = 2000  # records sent but not yet confirmed (stream transports)
    CONFIRM_IDLE = 0.5  # seconds without new records before an unconfirmed tail is confirmed
    POLL = 0.1

    def __init__(self, url: str, directory: str, transport, durable=lambda: None, on_outage=None,
                 alerts: DirectAlerts | None = direct_alerts):
        self.url, self.directory, self.transport = url, directory, transport
        self.durable = durable  # highest seq known to be on disk; None: whatever is in the files
        self.on_outage = on_outage
        self.name = re.sub(r"[^A-Za-z0-9]+", "-", url.split("?")[0]).strip("-")
        self.state_path = os.path.join(directory, f".export-{self.name}.state")
        self.acked = self._load_state()
        self.sent = 0  # records delivered by this exporter (repeats included)
        self.resent = 0  # records sent again after a failure
        self._stop = threading.Event()
        self._pos: tuple[str, int] | None = None  # (file, byte offset) just after `acked`
        self._confirming = bool(getattr(transport, "confirms", False))
        self._in_flight: list[tuple[int, tuple[str, int]]] = []  # (seq, position after it), sent, unconfirmed
        self._alerts_in_flight: list[bytes] = []
        self._send_pos: tuple[str, int] | None = None  # position after the last record sent
        self._high = self.acked  # highest seq ever sent (to count repeats)
        self._alerts = alerts
        self._alert_q = alerts.subscribe() if alerts is not None else collections.deque()
        self.thread = threading.Thread(target=self._run, name=f"pangate-export-{self.name}", daemon=True)

    def start(self) -> "Exporter":
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.thread.join(timeout)
        if self._alerts is not None:
            self._alerts.unsubscribe(self._alert_q)
        if self.thread.is_alive():
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

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff, down_since, idle_since, trail_down = 0.2, None, None, False
        while not self._stop.is_set():
            try:
                self._send_alerts()
                try:
                    batch = self._next_batch()
                    trail_down = False
                except OSError as e:  # the trail itself is unreadable (an audit outage): alerts still go
                    if not trail_down:
                        log.warning("pangate export to %s: cannot read the audit trail (%s)", self.name, e)
                    trail_down, batch = True, []
                if batch:
                    idle_since = None
                    self._ship([line for _, line, _ in batch])
                    self._sent(batch)
                    if len(self._in_flight) >= self.MAX_IN_FLIGHT:
                        self._confirm()
                elif self._in_flight or self._alerts_in_flight:
                    now = time.monotonic()
                    idle_since = idle_since or now
                    if now - idle_since >= self.CONFIRM_IDLE:
                        self._confirm()
                        idle_since = None
                    else:
                        self.transport.check()
                        self._stop.wait(self.POLL)
                else:
                    self._stop.wait(self.POLL)
                    continue
            except (OSError, ExportError) as e:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("pangate export to %s failing (%s); retrying from seq %d",
                                self.name, e, self.acked + 1)
                    if self.on_outage:
                        self.on_outage(self, str(e))
                self._rewind()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if down_since is not None:
                log.info("pangate export to %s resumed after %.1fs", self.name, time.monotonic() - down_since)
            backoff, down_since = 0.2, None
        self._finish()

    def _finish(self) -> None:
        """At stop: confirm what is in flight (briefly), so a clean stop resends nothing."""
        if self._confirming and (self._in_flight or self._alerts_in_flight):
            try:
                if self.transport.confirm(min(2.0, getattr(self.transport, "confirm_timeout", 2.0))):
                    self._confirmed()
            except (OSError, ExportError):
                pass
        self.transport.close()

    def _ship(self, lines: list) -> None:
        """The export's one send point: every line passes the sink scrubber (the export's own wall)."""
        self.transport.send([scrub_line(line) for line in lines])

    def _send_alerts(self) -> None:
        while self._alert_q:
            line = self._alert_q[0]
            self._ship([line])
            self._alert_q.popleft()
            if self._confirming:
                self._alerts_in_flight.append(line)

    def _sent(self, batch) -> None:
        last_seq, _, pos = batch[-1]
        self._send_pos = pos
        n_repeat = sum(1 for seq, _, _ in batch if seq <= self._high)
        self.resent += n_repeat
        self._high = max(self._high, last_seq)
        if self._confirming:
            self._in_flight.extend((seq, p) for seq, _, p in batch)
            return
        self.acked, self._pos = last_seq, pos  # the transport returned: the collector acknowledged
        self.sent += len(batch)
        self._save_state()

    def _confirm(self) -> None:
        if not self.transport.confirm():
            raise ExportError(f"the collector did not confirm {len(self._in_flight)} records "
                              "(it is not reading, or it went away)")
        self._confirmed()

    def _confirmed(self) -> None:
        self._alerts_in_flight.clear()
        if self._in_flight:
            self.acked, self._pos = self._in_flight[-1]
            self.sent += len(self._in_flight)
            self._in_flight.clear()
            self._save_state()

    def _rewind(self) -> None:
        """After a failure: drop the connection; what was in flight goes again."""
        self.transport.close()
        self._in_flight.clear()
        self._send_pos = None
        for line in reversed(self._alerts_in_flight):
            self._alert_q.appendleft(line)
        self._alerts_in_flight.clear()

    # -- reading the trail -------------------------------------------------------------

    def _next_batch(self) -> list[tuple[int, bytes, tuple[str, int]]]:
        """Up to BATCH complete, durable records after what was sent: (seq, line, position after it)."""
        limit = self.durable()
        files = list_audit_files(self.directory)
        after = self._in_flight[-1][0] if self._in_flight else self.acked
        pos = self._send_pos if self._in_flight else self._pos
        if pos is None or pos[0] not in files:
            pos = self._find_start(files, after)
            if not self._in_flight:
                self._pos = pos
        if pos is None:
            return []
        path, off = pos
        out = []
        for p in files[files.index(path):]:
            with open(p, "rb") as f:
                f.seek(off if p == path else 0)
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # being written
                    here = (p, f.tell())
                    seq = json.loads(raw)["seq"]
                    if seq <= after:
                        if not self._in_flight:
                            self._pos = here
                        continue
                    if limit is not None and seq > limit:
                        return out
                    out.append((seq, raw.rstrip(b"\n"), here))
                    if len(out) >= self.BATCH:
                        return out
        return out

    @staticmethod
    def _find_start(files: list[str], after: int):
        """The newest file whose first record is not after `after`+1 (older ones are done)."""
        start = None
        for p in files:
            with open(p, "rb") as f:
                first = f.readline()
            if not first.endswith(b"\n"):
                break
            if json.loads(first)["seq"] > after + 1 and start is not None:
                break
            start = (p, 0)
        return start
