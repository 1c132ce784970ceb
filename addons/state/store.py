"""State several gateway instances share: a small async key-value interface, in process or on Redis.

What goes here must be the same on every instance for a decision to be right
wherever it is taken: revocations, approvals and grants, who holds which
flow, the bad-token counters. With no `pangate_state` it all lives in this
process (`MemoryStore`), as a single gateway needs. With `redis://` or
`rediss://` it lives in Redis (`RedisStore`, redis-py's asyncio client, so no
call blocks the event loop), and changes are announced on one pub/sub
channel so every instance learns of them at once.

Every operation of a shared store either succeeds or raises StateUnavailable:
callers refuse what they cannot decide (fail closed), never guess.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("pangate")
PREFIX = "pangate:"
CHANNEL = PREFIX + "changes"
TIMEOUT = 1.0  # seconds any one Redis call may take before the state counts as unavailable


class StateUnavailable(Exception):
    """The shared state cannot be reached: the decision that needed it is refused (503)."""

    code = "state_unavailable"


Listener = Callable[[dict], None]
Update = Callable[[str | None], tuple[str | None, object]]


class Store:
    """The interface. Keys are strings under PREFIX; values are strings (JSON by convention)."""

    shared = False
    description = "in process"

    async def get(self, key: str) -> str | None:
        raise NotImplementedError

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def update(self, key: str, fn: Update, ttl: float | None = None):
        """Atomic read-modify-write: fn(old) -> (new or None to delete, result); returns result.

        fn may run more than once (a concurrent writer makes it retry) and must
        not have side effects; it may raise to abort without writing."""
        raise NotImplementedError

    async def scan(self, prefix: str) -> dict[str, str]:
        """Every key starting with prefix, with its value."""
        raise NotImplementedError

    async def hit(self, key: str, window: float) -> int:
        """Count one event under key; returns the events within the last `window` seconds."""
        raise NotImplementedError

    async def publish(self, message: dict) -> None:
        """Tell every instance (this one too) about a change."""
        raise NotImplementedError

    def listen(self, fn: Listener) -> None:
        """fn(message) is called on the event loop for every published message."""
        self._listeners.append(fn)

    def unlisten(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    async def ping(self) -> None:
        """Raises StateUnavailable unless the store answers."""

    async def start(self) -> None:
        """Begin receiving published messages (a background task for a shared store)."""

    async def close(self) -> None:
        pass

    def _deliver(self, message: dict) -> None:
        for fn in list(self._listeners):
            try:
                fn(message)
            except Exception:  # one broken listener must not silence the others
                log.exception("pangate state listener failed")

    def __init__(self):
        self._listeners: list[Listener] = []


class MemoryStore(Store):
    """All state in this process: what a single gateway needs, and what tests use."""

    MAX_COUNTERS = 10000

    def __init__(self, clock=time.monotonic):
        super().__init__()
        self.clock = clock
        self._data: dict[str, tuple[str, float | None]] = {}
        self._hits: dict[str, deque] = {}

    def _live(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] is not None and self.clock() >= item[1]:
            del self._data[key]
            return None
        return item[0]

    async def get(self, key):
        return self._live(key)

    async def set(self, key, value, ttl=None):
        self._data[key] = (value, None if ttl is None else self.clock() + ttl)

    async def delete(self, key):
        self._data.pop(key, None)

    async def update(self, key, fn, ttl=None):
        new, result = fn(self._live(key))
        if new is None:
            self._data.pop(key, None)
        else:
            self._data[key] = (new, None if ttl is None else self.clock() + ttl)
        return result

    async def scan(self, prefix):
        return {k: v for k in list(self._data) if k.startswith(prefix) and (v := self._live(k)) is not None}

    async def hit(self, key, window):
        now = self.clock()
        times = self._hits.pop(key, None) or deque()
        while times and now - times[0] > window:
            times.popleft()
        times.append(now)
        self._hits[key] = times  # most recent last: the oldest sources are forgotten first
        while len(self._hits) > self.MAX_COUNTERS:
            self._hits.pop(next(iter(self._hits)))
        return len(times)

    async def publish(self, message):
        self._deliver(message)


# ---------------------------------------------------------------------------- Redis


def redacted(url: str) -> str:
    """The URL as it may be logged: no user information."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_url(url: str) -> str | None:
    """Why a pangate_state URL is refused, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        return f"{redacted(url)!r} is not a redis:// URL ({e})"
    if parts.scheme not in ("redis", "rediss"):
        return "use redis://HOST:PORT/DB or rediss://HOST:PORT/DB (TLS), or empty for in-process state"
    if parts.password is not None:
        return ("the URL holds a password: give it in an environment variable (pangate_state_password_env) "
                "or a file (pangate_state_password_file), never inline")
    if not parts.hostname:
        return "the URL names no host"
    return None


def read_password(env: str = "", path: str = "") -> str | None:
    """The Redis password from an environment variable or a file (first line); ValueError if named but absent."""
    if env and path:
        raise ValueError("give the Redis password in an environment variable or a file, not both")
    if env:
        value = os.environ.get(env)
        if not value:
            raise ValueError(f"environment variable {env} (the Redis password) is not set")
        return value
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.readline().strip()
        except OSError as e:
            raise ValueError(f"cannot read the Redis password file {path}: {e.strerror}") from None
        if not value:
            raise ValueError(f"the Redis password file {path} is empty")
        return value
    return None


def _unavailable(e: Exception) -> StateUnavailable:
    return StateUnavailable(f"the shared state ({type(e).__name__}: {e}) cannot be reached")


class RedisStore(Store):
    """State in Redis: every call bounded by TIMEOUT, every failure a StateUnavailable."""

    shared = True

    def __init__(self, url: str, password: str | None = None, ca_file: str | None = None,
                 on_failure: Callable[[str], None] | None = None):
        super().__init__()
        import redis.asyncio as aioredis  # only a shared store needs the client

        problem = check_url(url)
        if problem:
            raise ValueError(problem)
        self.description = redacted(url)
        kw = {}
        if url.startswith("rediss:") and ca_file:
            kw["ssl_ca_certs"] = ca_file
        self._redis = aioredis.Redis.from_url(url, password=password, socket_timeout=TIMEOUT,
                                              socket_connect_timeout=TIMEOUT, decode_responses=True,
                                              health_check_interval=5, **kw)
        self._errors = _redis_errors()
        self._on_failure = on_failure
        self._task: asyncio.Task | None = None
        self._listening = asyncio.Event()

    async def _call(self, coro_fn: Callable[[], Awaitable]):
        try:
            try:
                return await asyncio.wait_for(coro_fn(), TIMEOUT * 2)
            except self._errors:
                # A pooled connection that a restarted server closed fails on its first use and
                # is dropped; the next one is fresh. One more try keeps a recovery from
                # refusing the first requests after the ping that declared it.
                return await asyncio.wait_for(coro_fn(), TIMEOUT * 2)
        except (TimeoutError, *self._errors) as e:
            err = _unavailable(e)
            if self._on_failure:
                self._on_failure(str(err))
            raise err from None

    async def get(self, key):
        return await self._call(lambda: self._redis.get(key))

    async def set(self, key, value, ttl=None):
        px = None if ttl is None else max(1, int(ttl * 1000))
        await self._call(lambda: self._redis.set(key, value, px=px))

    async def delete(self, key):
        await self._call(lambda: self._redis.delete(key))

    async def update(self, key, fn, ttl=None):
        from redis.exceptions import WatchError

        async def attempt():
            async with self._redis.pipeline(transaction=True) as pipe:
                for _ in range(50):
                    try:
                        await pipe.watch(key)
                        new, result = fn(await pipe.get(key))
                        pipe.multi()
                        if new is None:
                            pipe.delete(key)
                        else:
                            pipe.set(key, new, px=None if ttl is None else max(1, int(ttl * 1000)))
                        await pipe.execute()
                        return result
                    except WatchError:
                        continue  # another instance changed it first: decide again on its value
                raise StateUnavailable(f"{key} is changing too fast to update")

        return await self._call(attempt)

    async def scan(self, prefix):
        async def run():
            keys = [k async for k in self._redis.scan_iter(match=_glob_escape(prefix) + "*", count=500)]
            if not keys:
                return {}
            values = await self._redis.mget(keys)
            return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

        return await self._call(run)

    async def hit(self, key, window):
        async def run():
            now = time.time()
            member = f"{now:.6f}:{os.getpid()}:{id(object())}"
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, 0, now - window)
                pipe.zadd(key, {member: now})
                pipe.zcard(key)
                pipe.expire(key, int(window) + 1)
                return (await pipe.execute())[2]

        return await self._call(run)

    async def publish(self, message):
        await self._call(lambda: self._redis.publish(CHANNEL, json.dumps(message)))

    async def ping(self):
        await self._call(self._redis.ping)

    async def start(self):
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._subscribe())

    async def wait_listening(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _subscribe(self) -> None:
        """Receive published changes; reconnect after any failure, for as long as the gateway runs."""
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self._listening.set()
                self._deliver({"kind": "resync"})  # whatever was missed while not listening
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg and msg.get("type") == "message":
                        try:
                            doc = json.loads(msg["data"])
                        except ValueError:
                            continue
                        if isinstance(doc, dict):
                            self._deliver(doc)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the connection went: report, wait a little, subscribe again
                self._listening.clear()
                if self._on_failure:
                    self._on_failure(str(_unavailable(e)))
                await asyncio.sleep(0.2)
            finally:
                self._listening.clear()
                try:
                    await asyncio.wait_for(pubsub.aclose(), TIMEOUT)
                except Exception:
                    pass

    async def close(self):
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        try:
            await asyncio.wait_for(self._redis.aclose(), TIMEOUT)
        except Exception:
            pass


def _redis_errors() -> tuple:
    from redis.exceptions import ConnectionError as RConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RTimeoutError

    return (RConnectionError, RTimeoutError, RedisError, OSError)


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def open_store(url: str, password_env: str = "", password_file: str = "", ca_file: str = "",
               on_failure: Callable[[str], None] | None = None) -> Store:
    """The store a pangate_state value names; ValueError says what is wrong with it."""
    if not url:
        return MemoryStore()
    return RedisStore(url, read_password(password_env, password_file), ca_file or None, on_failure)
