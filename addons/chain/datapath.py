"""The data path: the one pangate addon mitmproxy calls for each flow hook.

Each stage (Identify, Authorize, Dlp, ...) is a mitmproxy-style addon. Its
flow hooks are not registered with mitmproxy: the `DataPath` runs them, in
the chain's order, and so decides in one place

- that a flow refused by one stage goes no further: later stages are skipped
  for it, except the hooks a stage names in `sees_refused` (Audit, Recorder,
  masking at rest);
- that an exception in a stage refuses the flow (failsafe.fail_flow) instead
  of letting it go on unchecked;
- that a stage may wait: a hook returning an awaitable (an approval hold, a
  token check) is awaited before the next stage runs. Hooks that return None
  keep the whole hook synchronous, which is the cheap path for most requests.

Everything else a stage does with mitmproxy (load, configure, running, done,
connection hooks such as server_connect or tls_start_server) stays as it is:
each stage is registered through a `Lifecycle` view that shows mitmproxy
those hooks and no flow hook.
"""

from __future__ import annotations

import asyncio
import inspect

import mitmproxy.addonmanager  # noqa: F401  (defines the load hook)
import mitmproxy.proxy.layers  # noqa: F401  (defines the connection and flow hooks)
from mitmproxy import hooks

from pangate.chain import failsafe, veil
from pangate.chain.context import KEY
from pangate.chain.failsafe import FLOW_HOOKS, fail_flow
from pangate.chain.guard import Guard

# Hooks a stage keeps registered with mitmproxy itself.
OTHER_HOOKS = frozenset(hooks.all_hooks) - FLOW_HOOKS


def _name(addon) -> str:
    return getattr(addon, "name", type(addon).__name__.lower())


class Lifecycle:
    """A stage as mitmproxy's addon chain sees it: its lifecycle and connection hooks, no flow hook."""

    def __init__(self, stage):
        self.stage = stage
        self.name = _name(stage)  # mitmproxy looks addons up by this name
        for hook in OTHER_HOOKS:
            fn = getattr(stage, hook, None)
            if callable(fn):
                setattr(self, hook, fn)

    def __repr__(self) -> str:
        return f"Lifecycle({type(self.stage).__name__})"


def _run_from(hook: str, plan: tuple, flow, start: int):
    """Run the stages of `plan` from `start` until one returns an awaitable: (its index, it), or None."""
    for i in range(start, len(plan)):
        label, fn, sees_refused = plan[i]
        if not sees_refused and "refused" in flow.metadata.get(KEY, ()):
            continue
        try:
            pending = fn(flow)
        except Exception as e:
            fail_flow(flow, hook, e, label)
            continue
        if pending is not None and inspect.isawaitable(pending):
            return i, pending
    return None


async def _resume(hook: str, plan: tuple, flow, i: int, pending) -> None:
    while True:
        try:
            await pending
        except asyncio.CancelledError:
            raise
        except Exception as e:
            fail_flow(flow, hook, e, plan[i][0])
        step = _run_from(hook, plan, flow, i + 1)
        if step is None:
            return
        i, pending = step


def _dispatcher(hook: str, plan: tuple):
    def dispatch(flow):
        step = _run_from(hook, plan, flow, 0)
        if step is not None:
            return _resume(hook, plan, flow, *step)
        return None
    dispatch.__name__ = hook
    return dispatch


class DataPath:
    """Runs the stages' flow hooks in order; one mitmproxy addon instead of one per stage."""

    name = "pangate-datapath"

    def __init__(self, stages: list):
        self.stages = stages
        self.plans: dict[str, tuple] = {}
        for hook in sorted(FLOW_HOOKS):
            plan = tuple((type(s).__name__, fn, hook in getattr(s, "sees_refused", ()))
                         for s in stages if callable(fn := getattr(s, hook, None)))
            if plan:
                self.plans[hook] = plan
                setattr(self, hook, _dispatcher(hook, plan))  # only hooks some stage has


def chain(*stages) -> list:
    """The addon list for the gateway script: the data path (Guard first, then the stages in
    order) and each of them registered for its lifecycle."""
    failsafe.install_sentinel()
    veil.install_veil()
    everything = [Guard(list(stages)), *stages]
    return [DataPath(everything), *(Lifecycle(s) for s in everything)]
