"""Each assertion is accepted once: a cache of the ids already seen, each kept until it expires.

A SAML bearer assertion is a bearer credential: whoever holds it may present it.
Accepting each assertion id once within its validity window means a copy that
leaked (a log, a proxy, a shoulder) is worth nothing once its owner used it.

`ReplayCache` is the interface; `MemoryReplayCache` is bounded and in-process,
which is right for one gateway. Several gateways behind one name need a shared
store (e.g. Redis SET NX with an expiry) behind the same interface.
"""

from __future__ import annotations

import hashlib
import heapq
import threading
import time
from typing import Callable, Protocol


class ReplayCacheFull(Exception):
    """No room for another id until older ones expire: refuse rather than forget one too early."""


class ReplayCache(Protocol):
    def first_use(self, key: str, until: float) -> bool:
        """Record key as used until `until` (epoch); False if it already was (a replay)."""


class MemoryReplayCache:
    """Thread-safe, bounded: at most max_entries live ids; expired ones are dropped first.

    Full with only live ids, it raises ReplayCacheFull: evicting a live id would
    let that assertion be replayed, so the gateway fails closed instead.
    """

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.time):
        self.max_entries, self._clock = max_entries, clock
        self._until: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def first_use(self, key: str, until: float) -> bool:
        digest = hashlib.sha256(key.encode()).digest()  # fixed size per entry, whatever the id
        with self._lock:
            now = self._clock()
            self._expire(now)
            if digest in self._until:
                return False
            if len(self._until) >= self.max_entries:
                raise ReplayCacheFull("replay cache full")
            self._until[digest] = until
            heapq.heappush(self._heap, (until, digest))
            return True

    def _expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            until, digest = heapq.heappop(self._heap)
            if self._until.get(digest) == until:
                del self._until[digest]

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._until)


# One per gateway process: shared by every verifier the process builds (policy
# reloads rebuild verifiers) and by both ways in (proxy password, token exchange),
# so an assertion used on one is spent on the other too.
_SHARED = MemoryReplayCache()


def shared() -> MemoryReplayCache:
    return _SHARED
