"""Holds the current policy: loaded at start, reloaded when the file changes.

A broken new file never replaces a good one: the last good policy stays in
force, the error is logged with file and line, and an alert is raised.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions

from pangate.common import events
from pangate.chain.failsafe import Component
from pangate.common.filewatch import WatchedFile
from pangate.common.periodic import file_stamp
from pangate.policy.model import Policy, load_policy
from pangate.policy.errors import PolicyError

log = logging.getLogger("pangate")


class PolicyStore(WatchedFile, Component):
    """Loads `pangate_policy` and tells the other addons when it changes."""

    def __init__(self):
        self.policy: Policy | None = None
        self.healthy = False
        self.problem = "no policy is loaded"
        self.problem_code = "policy_unavailable"
        self._listeners = []

    def load(self, loader):
        loader.add_option("pangate_policy", str, "policies.yaml", "pangate policy file (YAML).")

    def subscribe(self, fn) -> None:
        """fn(policy) is called with every newly loaded policy, before it takes effect."""
        self._listeners.append(fn)
        if self.policy is not None:
            fn(self.policy)

    def configure(self, updated):
        if "pangate_policy" in updated:
            try:
                self._load(ctx.options.pangate_policy)
            except PolicyError as e:
                if self.policy is None:
                    self.problem = f"no policy is loaded: {e}"
                raise exceptions.OptionsError(str(e)) from None

    def _load(self, path: str) -> None:
        stamp = file_stamp(path)
        policy = load_policy(path)
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
        events.emit("policy_loaded", path=path, digest=policy.digest,
                    previous=old.digest if old else None)
        log.info("pangate policy loaded from %s (sha256 %s)", path, policy.digest[:16])

    def watched_path(self) -> str:
        return ctx.options.pangate_policy

    def changed(self, path: str, stamp) -> None:
        try:
            self._load(path)
        except (PolicyError, ValueError) as e:
            self.stamp = stamp  # report a broken file once, not every poll
            log.error("pangate policy NOT reloaded, the last good one stays in force: %s", e)
            events.emit("policy_rejected", alert=True, path=path, error=str(e))
        except Exception as e:  # a listener failed: keep the last good policy
            self.stamp = stamp
            log.error("pangate policy NOT reloaded: %s: %s", type(e).__name__, e)
            events.emit("policy_rejected", alert=True, path=path, error=f"{type(e).__name__}: {e}")
