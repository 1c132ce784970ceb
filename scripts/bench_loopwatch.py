"""mitmdump -s scripts/bench_loopwatch.py: count event-loop callbacks slower than 10 ms.

Loaded next to the gateway (or alone, for bare mitmdump) by scripts/bench,
with PYTHONASYNCIODEBUG=1. asyncio's debug mode logs "Executing <handle> took
N seconds" for every callback or task step longer than
loop.slow_callback_duration; we set that to 10 ms (the issue's budget) and
collect those warnings. mitmproxy runs addon hooks inside the connection
task's step, so a synchronous hook that takes 30 ms shows up as one 30 ms step.

A daemon thread (not the loop: writing a file from the loop would itself be
a blocking call) snapshots the events to `bench_loopwatch_out` twice a second,
so scripts/bench can cut them by scenario by timestamp. Debug mode itself adds
overhead, so the durations are an upper bound: never use this for throughput.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading

from mitmproxy import ctx

THRESHOLD = 0.010  # seconds: the "no blocking call longer than 10 ms"
MAX_EVENTS = 20000
_SLOW = re.compile(r"Executing (.*) took ([0-9.]+) seconds$", re.DOTALL)


class _SlowCallbacks(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.mu = threading.Lock()  # not `lock`: logging.Handler already uses that name
        self.events: list[tuple[float, float, str]] = []  # (wall time, seconds, handle)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        # asyncio: logger.warning('Executing %s took %.3f seconds', _format_handle(handle), dt).
        # Read from the formatted message: in the gateway every record reaches handlers already
        # scrubbed (sinks.output), its message formatted and its args gone.
        m = _SLOW.match(record.getMessage())
        if m is None:
            return
        with self.mu:
            self.count += 1
            if len(self.events) < MAX_EVENTS:
                self.events.append((record.created, float(m.group(2)), m.group(1)[:300]))


class LoopWatch:
    def __init__(self):
        self.handler = _SlowCallbacks()
        self._stop = threading.Event()

    def load(self, loader):
        loader.add_option("bench_loopwatch_out", str, "", "JSON file for slow-callback snapshots.")

    def running(self):
        loop = asyncio.get_running_loop()
        loop.set_debug(True)  # in case PYTHONASYNCIODEBUG was not in the environment
        loop.slow_callback_duration = THRESHOLD
        lg = logging.getLogger("asyncio")
        if lg.getEffectiveLevel() > logging.WARNING:
            lg.setLevel(logging.WARNING)
        lg.addHandler(self.handler)
        threading.Thread(target=self._snapshots, name="bench-loopwatch", daemon=True).start()
        logging.getLogger("bench").info("loopwatch armed: slow_callback_duration=%.3f", THRESHOLD)

    def _write(self) -> None:
        out = ctx.options.bench_loopwatch_out
        if not out:
            return
        with self.handler.mu:
            doc = {"threshold_s": THRESHOLD, "count": self.handler.count, "events": list(self.handler.events)}
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, out)

    def _snapshots(self) -> None:
        while not self._stop.wait(0.5):
            self._write()

    def done(self):
        self._stop.set()
        self._write()
        h = self.handler
        worst = max((e[1] for e in h.events), default=0.0)
        logging.getLogger("bench").info("loopwatch: %d slow callbacks, max %.1f ms", h.count, worst * 1000)
        logging.getLogger("asyncio").removeHandler(h)


addons = [LoopWatch()]
