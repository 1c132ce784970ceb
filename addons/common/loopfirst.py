"""Keep the event loop first in line for the GIL while a worker thread runs Python."""

from __future__ import annotations

import sys
import threading


class LoopFirst:
    """While a thread does long pure-Python work, the interpreter switches threads more often.

    A policy load or a recording's second-wall scrub is pure Python and holds the
    GIL; the event loop, woken by a socket, waits for it up to the switch interval
    (5 ms) at every wake-up -- and sending one 1 MB response is some 60 TLS
    records, each a socket write that gives the GIL up. A shorter interval while
    such work runs keeps each wait near 1 ms; it is put back when the last one ends.
    """

    INTERVAL = 0.001

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._saved = None

    def __enter__(self):
        with self._lock:
            if self._active == 0:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, self.INTERVAL))
            self._active += 1

    def __exit__(self, *exc):
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._saved is not None:
                sys.setswitchinterval(self._saved)


LOOP_FIRST = LoopFirst()
