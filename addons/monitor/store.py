"""Where the detectors keep their counts: a small interface and a bounded in-memory store.

The detectors only ever ask these questions, so a shared store (Redis: one
sorted set or hash per key) can replace the in-memory one when several
gateways must see one identity's traffic together.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Protocol


class CounterStore(Protocol):
    def add(self, key: str, amount: float, now: float, window: float) -> float:
        """Add amount at now; the sum over the last `window` seconds, this amount included."""

    def distinct(self, key: str, member: str, now: float, window: float) -> int:
        """Note member at now; how many distinct members were noted in the last `window` seconds."""

    def remember(self, key: str, member: str) -> bool:
        """Add member to the set at key; True if it was not there before."""

    def get(self, key: str) -> dict | None:
        """A small state document (baselines), or None."""

    def put(self, key: str, value: dict) -> None: ...

    def claim(self, key: str, now: float, ttl: float) -> bool:
        """True, and hold key for ttl seconds, unless it is held: one incident, one alert."""

    def release(self, key: str) -> None:
        """Drop a hold early (the incident ended: the next one alerts again)."""


class MemoryStore:
    """The CounterStore of one gateway: every map bounded, the least recently used key dropped first.

    Sliding windows are kept as BUCKETS buckets per window, so a key costs
    O(BUCKETS) whatever the traffic; sets keep at most `max_members`.
    """

    BUCKETS = 12

    def __init__(self, max_keys: int = 20000, max_members: int = 1000):
        self.max_keys, self.max_members = max_keys, max_members
        self._windows: OrderedDict[str, deque] = OrderedDict()
        self._distinct: OrderedDict[str, OrderedDict] = OrderedDict()
        self._sets: OrderedDict[str, set] = OrderedDict()
        self._state: OrderedDict[str, dict] = OrderedDict()
        self._holds: OrderedDict[str, float] = OrderedDict()

    def _touch(self, table: OrderedDict, key: str, make):
        value = table.pop(key, None)
        if value is None:
            value = make()
        table[key] = value
        while len(table) > self.max_keys:
            table.popitem(last=False)
        return value

    def add(self, key, amount, now, window):
        buckets = self._touch(self._windows, key, deque)
        width = window / self.BUCKETS
        start = now - now % width
        while buckets and buckets[0][0] <= now - window:
            buckets.popleft()
        if buckets and buckets[-1][0] == start:
            buckets[-1][1] += amount
        else:
            buckets.append([start, amount])
        return sum(b[1] for b in buckets)

    def distinct(self, key, member, now, window):
        seen = self._touch(self._distinct, key, OrderedDict)
        seen.pop(member, None)
        seen[member] = now
        while seen and (next(iter(seen.values())) <= now - window or len(seen) > self.max_members):
            seen.popitem(last=False)
        return len(seen)

    def remember(self, key, member):
        members = self._touch(self._sets, key, set)
        if member in members:
            return False
        if len(members) >= self.max_members:
            return False  # a set this large is no baseline of "never used": stay quiet
        members.add(member)
        return True

    def get(self, key):
        value = self._state.get(key)
        if value is not None:
            self._state.move_to_end(key)
        return value

    def put(self, key, value):
        self._touch(self._state, key, dict)
        self._state[key] = value

    def claim(self, key, now, ttl):
        until = self._holds.get(key)
        if until is not None and until > now:
            return False
        self._touch(self._holds, key, float)
        self._holds[key] = now + ttl
        return True

    def release(self, key):
        self._holds.pop(key, None)
