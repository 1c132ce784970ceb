"""Where shared state lives (`pangate_state`), and whether it can be reached right now.

While a shared store cannot be reached this component is not healthy: the
Guard answers every request 503 `state_unavailable` (a revocation made on
another instance could not be seen), an alert is raised once, and the
component checks again every half second, so service comes back by itself
when the store does.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, exceptions

from pangate.chain.failsafe import Component
from pangate.common import events
from pangate.state import instance
from pangate.state.store import MemoryStore, StateUnavailable, Store, check_url, open_store

log = logging.getLogger("pangate")
PING_SECONDS = 0.5
OPTIONS = {"pangate_state", "pangate_state_password_env", "pangate_state_password_file", "pangate_state_ca"}


class SharedState(Component):
    """Holds the Store every stage that shares state uses, and watches that it answers."""

    problem_code = StateUnavailable.code

    def __init__(self):
        self.store: Store = MemoryStore()
        self.instance = instance.resolve("", None)
        self._up = True
        self._answered = False
        self._task: asyncio.Task | None = None
        self._running = False
        self._listeners: list = []

    # -- options -------------------------------------------------------------

    def load(self, loader):
        loader.add_option("pangate_state", str, "",
                          "Shared state of several gateway instances: redis://HOST:PORT/DB or rediss:// (TLS). "
                          "Empty: everything in this process.")
        loader.add_option("pangate_state_password_env", str, "",
                          "Environment variable holding the Redis password (never put it in the URL).")
        loader.add_option("pangate_state_password_file", str, "", "File holding the Redis password (first line).")
        loader.add_option("pangate_state_ca", str, "", "CA bundle to verify a rediss:// server with.")
        loader.add_option("pangate_instance", str, "",
                          "Name of this gateway instance in audit records and held flows; default a stable "
                          "id kept in the audit directory.")

    def configure(self, updated):
        if "pangate_instance" in updated or "pangate_audit_dir" in updated:
            try:
                self.instance = instance.resolve(ctx.options.pangate_instance,
                                                 getattr(ctx.options, "pangate_audit_dir", None))
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
        if OPTIONS & set(updated):
            o = ctx.options
            problem = check_url(o.pangate_state) if o.pangate_state else None
            if problem:
                raise exceptions.OptionsError(f"pangate_state: {problem}")
            try:
                store = open_store(o.pangate_state, o.pangate_state_password_env, o.pangate_state_password_file,
                                   o.pangate_state_ca, on_failure=self._failed)
            except ValueError as e:
                raise exceptions.OptionsError(f"pangate_state: {e}") from None
            old, self.store = self.store, store
            for fn in self._listeners:
                old.unlisten(fn)
                store.listen(fn)
            # A shared store is trusted only once it answered.
            self._up = not store.shared
            self._answered = False
            self.problem = "" if self._up else f"the shared state at {store.description} has not answered yet"
            log.info("pangate state: %s (instance %s)", store.description, self.instance)
            if self._running:
                asyncio.get_running_loop().create_task(old.close())
                self._start()

    # -- health --------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._up

    def listen(self, fn) -> None:
        """fn(message) for every change any instance announces (and {"kind": "resync"} after an outage)."""
        self._listeners.append(fn)
        self.store.listen(fn)

    def _failed(self, reason: str) -> None:
        if not self._up:
            return
        self._up = False
        self.problem = (f"the shared state at {self.store.description} cannot be reached ({reason}); "
                        "requests are refused until it can")
        log.error("pangate %s", self.problem)
        events.emit("state_unavailable", alert=True, store=self.store.description, reason=reason)

    def _recovered(self) -> None:
        was_down = not self._up
        self._up, self.problem = True, ""
        if was_down:
            first = not self._answered
            self._answered = True
            log.info("pangate shared state at %s answers%s", self.store.description, "" if first else " again")
            if not first:
                events.emit("state_recovered", store=self.store.description)
            self.store._deliver({"kind": "resync"})

    async def _watch(self, store: Store) -> None:
        await store.start()
        while True:
            try:
                await store.ping()
                if store is self.store:
                    self._recovered()
            except StateUnavailable as e:
                if store is self.store:
                    self._failed(str(e))
            await asyncio.sleep(PING_SECONDS)

    def _start(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._watch(self.store))

    def running(self):
        self._running = True
        self._start()

    def done(self):
        # Synchronous: mitmproxy calls done synchronously when a script is reloaded.
        self._running = False
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            asyncio.get_running_loop().create_task(self.store.close())
        except RuntimeError:
            pass
