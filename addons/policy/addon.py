"""Holds the current policy: loaded at start, reloaded when the file changes.

A broken new file never replaces a good one: the last good policy stays in
force, the error is logged with file and line, and an alert is raised.

Reading and validating a policy is pure Python and can be slow (a large
file) or hostile (a file built to be slow): it runs in a worker thread with
a time budget (`pangate_policy_load_timeout`), never on the event loop that
carries traffic. A load over budget is stopped and refused. A file is read
only once it has settled (the same size and mtime on two polls in a row):
one written in place is not read half-written.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading

from mitmproxy import ctx, exceptions

from pangate.common import events
from pangate.chain.failsafe import Component
from pangate.common.filewatch import WatchedFile
from pangate.common.periodic import file_stamp
from pangate.common.loopfirst import LOOP_FIRST, LoopFirst
from pangate.policy.model import Policy, load_policy
from pangate.policy.errors import PolicyError
from pangate.policy.schema import parse_duration

log = logging.getLogger("pangate")
DEFAULT_LOAD_TIMEOUT = 10.0


class _OverBudget(BaseException):
    """Raised inside the loader thread to stop a load that ran out of time."""


def _loop_first() -> LoopFirst:
    return LOOP_FIRST


class PolicyLoad:
    """One policy file read and validated in its own thread, within a time budget.

    A Python thread cannot be killed, but it can be handed an exception that
    it raises at its next bytecode (PyThreadState_SetAsyncExc): parsing is
    pure Python, so a load over budget stops within moments instead of
    holding the interpreter for as long as the file makes it work.
    """

    def __init__(self, path: str, loader=load_policy):
        self.path = path
        self.loader = loader
        self.policy: Policy | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._finished = False
        self._callbacks: list = []
        self.thread = threading.Thread(target=self._run, name="pangate-policy-load", daemon=True)

    def start(self) -> "PolicyLoad":
        self.thread.start()
        return self

    def _run(self) -> None:
        with _loop_first():
            self._load()

    def _load(self) -> None:
        try:
            try:
                self.policy = self.loader(self.path)
            except _OverBudget:
                raise
            except BaseException as e:  # reported by whoever waits for the load
                self.error = e
            with self._lock:
                self._finished = True
        except _OverBudget:
            self.error = PolicyError("stopped: loading it took longer than its time budget", self.path)
        finally:
            self.done.set()
            for fn in self._callbacks:
                fn()

    def stop(self) -> None:
        """Stop a load still under way (it raises _OverBudget at its next bytecode)."""
        with self._lock:
            if self._finished or self.thread.ident is None:
                return
            self._finished = True  # inject once
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread.ident),
                                                       ctypes.py_object(_OverBudget))

    def _over_budget(self, budget: float) -> PolicyError:
        self.stop()
        return PolicyError(f"refused: loading it took longer than {budget:g} s "
                           "(pangate_policy_load_timeout)", self.path)

    def _outcome(self) -> Policy:
        if self.error is not None:
            raise self.error
        return self.policy

    def wait(self, budget: float) -> Policy:
        """Block until loaded (at start, before any traffic); PolicyError when over budget."""
        if not self.done.wait(budget):
            raise self._over_budget(budget)
        return self._outcome()

    async def await_(self, budget: float) -> Policy:
        """Wait without blocking the event loop; PolicyError when over budget."""
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def wake():
            loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

        self._callbacks.append(wake)
        if self.done.is_set():
            wake()
        try:
            await asyncio.wait_for(finished, budget)
        except asyncio.TimeoutError:
            raise self._over_budget(budget) from None
        return self._outcome()


class PolicyStore(WatchedFile, Component):
    """Loads `pangate_policy` and tells the other addons when it changes."""

    settle = True  # read a file written in place only once it has stopped changing

    def __init__(self):
        self.policy: Policy | None = None
        self.healthy = False
        self.problem = "no policy is loaded"
        self.problem_code = "policy_unavailable"
        self._listeners = []
        self.budget = DEFAULT_LOAD_TIMEOUT
        self._running = False
        self._unannounced: dict | None = None  # the policy_loaded event of the start, sent at running
        self._straggler: PolicyLoad | None = None  # a load stopped over budget that has not ended yet

    def load(self, loader):
        loader.add_option("pangate_policy", str, "policies.yaml", "pangate policy file (YAML).")
        loader.add_option("pangate_policy_load_timeout", str, "10s",
                          "How long (e.g. 10s, 500ms) a policy file may take to read and validate; "
                          "a slower one is refused and the policy in force stays.")

    def subscribe(self, fn) -> None:
        """fn(policy) is called with every newly loaded policy, before it takes effect."""
        self._listeners.append(fn)
        if self.policy is not None:
            fn(self.policy)

    def _budget(self) -> float:
        return self.budget

    def configure(self, updated):
        if "pangate_policy_load_timeout" in updated:
            try:
                budget = parse_duration(ctx.options.pangate_policy_load_timeout)
            except ValueError as e:
                raise exceptions.OptionsError(f"pangate_policy_load_timeout: {e}") from None
            if not 0 < budget <= 600:
                raise exceptions.OptionsError("pangate_policy_load_timeout must be between 0 and 600 seconds")
            self.budget = budget
        if "pangate_policy" in updated:
            try:
                # At start (or when an operator points the option elsewhere): waited for here, but
                # still in the worker, so the budget holds.
                self._load(ctx.options.pangate_policy)
            except PolicyError as e:
                if self.policy is None:
                    self.problem = f"no policy is loaded: {e}"
                raise exceptions.OptionsError(str(e)) from None

    def _load(self, path: str, budget: float | None = None) -> None:
        """Load `path` now (blocking, within the budget) and put it in force."""
        stamp = file_stamp(path)
        policy = PolicyLoad(path).start().wait(self._budget() if budget is None else budget)
        self._apply(path, policy, stamp)

    def _apply(self, path: str, policy: Policy, stamp) -> None:
        old = self.policy
        try:
            for fn in self._listeners:
                fn(policy)  # a listener may refuse it (e.g. a credential file it cannot read)
        except Exception:
            # Listeners before the one that refused already switched: put them back on
            # the policy still in force, so a rejected file changes nothing at all.
            if old is not None:
                for fn in self._listeners:
                    fn(old)
            raise
        self.policy, self.stamp = policy, stamp
        self.healthy, self.problem = True, ""
        event = dict(path=path, digest=policy.digest, previous=old.digest if old else None)
        if self._running:
            events.emit("policy_loaded", **event)
        else:
            # Before `running` not every subscriber is in place (the audit trail opens in its own
            # configure, after this one): the policy the gateway starts with is announced then.
            self._unannounced = event
        log.info("pangate policy loaded from %s (sha256 %s)", path, policy.digest[:16])

    def running(self):
        self._running = True
        if self._unannounced is not None:
            event, self._unannounced = self._unannounced, None
            events.emit("policy_loaded", at_start=True, **event)
        super().running()

    def watched_path(self) -> str:
        return ctx.options.pangate_policy

    def unsettled(self, path: str, stamp) -> None:
        log.info("pangate policy file %s changed; it is read once it stops changing", path)

    async def tick(self):
        if self._straggler is not None:  # a stopped load still winding down: start no second one
            if not self._straggler.done.is_set():
                return
            self._straggler = None
        due = self.due()
        if due is not None:
            await self.reload(*due)

    async def reload(self, path: str, stamp) -> None:
        """Read the settled file in the worker, off the event loop, and put it in force if it is good."""
        load = PolicyLoad(path).start()
        try:
            policy = await load.await_(self._budget())
        except (PolicyError, ValueError) as e:
            if not load.done.is_set():
                self._straggler = load
            if file_stamp(path) != stamp:
                return  # written again while it was read: judged once it settles again
            self.stamp = stamp  # report a broken file once, not every poll
            log.error("pangate policy NOT reloaded, the last good one stays in force: %s", e)
            events.emit("policy_rejected", alert=True, path=path, error=str(e))
            return
        except Exception as e:
            self._rejected(path, stamp, e)
            return
        if file_stamp(path) != stamp:
            return  # what was read is not what is there now: read it again once it settles
        try:
            self._apply(path, policy, stamp)
        except Exception as e:  # a listener failed: keep the last good policy
            self._rejected(path, stamp, e)

    def _rejected(self, path: str, stamp, e: BaseException) -> None:
        self.stamp = stamp
        log.error("pangate policy NOT reloaded: %s: %s", type(e).__name__, e)
        events.emit("policy_rejected", alert=True, path=path, error=f"{type(e).__name__}: {e}")

    def changed(self, path: str, stamp) -> None:
        """Synchronous form (tests, tools): load now, report as a reload does."""
        try:
            self._load(path)
        except (PolicyError, ValueError) as e:
            self.stamp = stamp
            log.error("pangate policy NOT reloaded, the last good one stays in force: %s", e)
            events.emit("policy_rejected", alert=True, path=path, error=str(e))
        except Exception as e:
            self._rejected(path, stamp, e)
