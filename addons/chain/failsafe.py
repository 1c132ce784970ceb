"""Fail closed: nothing is forwarded because a pangate control broke.

mitmproxy logs an exception raised in a hook and lets the flow go on; a
script that fails to reload is unregistered and traffic flows unchecked.
Three layers stop that:

1. The data path (datapath.py) runs every flow hook of every pangate stage:
   an exception refuses that flow with a JSON error (`fail_flow`) instead of
   letting it continue.
2. `Sentinel` is added to mitmproxy's own addon chain, outside the script, the
   first time the gateway script loads. It outlives reloads and refuses every
   flow while the pangate chain is not loaded and healthy.
3. Before the script has ever loaded (or if it never loads), the launcher arms
   mitmproxy's built-in block_list with ARM_BLOCK; the Sentinel disarms it once
   it is in place.
"""

from __future__ import annotations

import logging
import traceback

from mitmproxy import ctx, http

from pangate.chain.context import FlowContext, is_refused, refuse
from pangate.chain.wire import stop_messages

log = logging.getLogger("pangate")

# Given to mitmdump as `--set block_list=...` by scripts/run and the tests:
# every request is refused with 503 until the Sentinel takes over.
ARM_BLOCK = "|~all|503"

REQUEST_HOOKS = {"http_connect", "requestheaders", "request"}
RESPONSE_HOOKS = {"responseheaders", "response"}
MESSAGE_HOOKS = {"websocket_start", "websocket_message", "tcp_start", "tcp_message", "udp_start",
                 "udp_message", "dns_request"}
FLOW_HOOKS = REQUEST_HOOKS | RESPONSE_HOOKS | MESSAGE_HOOKS | {"error", "websocket_end", "http_connect_error"}


class _State:
    live = False  # the gateway chain is loaded and configured
    problem = "the pangate gateway is not loaded"
    sentinel = None


STATE = _State()


def safe_traceback(exc: BaseException) -> str:
    """A traceback with card numbers masked: exception messages can quote data (int('4111...'))."""
    text = "".join(traceback.format_exception(exc))
    try:
        from pangate.pan.engine import Masker

        return Masker().mask_text(text)[0]
    except Exception:
        return f"{type(exc).__name__} (traceback withheld: it could not be masked)"


def fail_flow(flow, hook: str, exc: BaseException, addon: str) -> None:
    """Refuse a flow after a pangate hook failed on it."""
    log.error("pangate %s.%s failed; flow refused:\n%s", addon, hook, safe_traceback(exc))
    reason = f"an internal check failed ({addon}.{hook}); the request was not forwarded"
    fc = FlowContext.of(flow)
    if hook in MESSAGE_HOOKS or not isinstance(flow, http.HTTPFlow):
        fc.error = reason
        stop_messages(flow)
        return
    if hook != "error":
        refuse(flow, 502, "gateway_error", reason, "internal_error")
    fc.failed_hook = f"{addon}.{hook}"


class Component:
    """Base of every pangate stage: reports health, and says which refused flows it still handles.

    `healthy` is False while the component cannot do its job (no policy, no
    audit sink); the Guard refuses traffic then. The data path runs a stage's
    flow hooks only for flows not refused yet, except the hooks named in
    `sees_refused` (a stage that records or masks what was refused).
    """

    healthy = True
    problem = ""
    sees_refused: frozenset[str] = frozenset()


class Sentinel:
    """Refuses every flow while the pangate chain is not live. Survives script reloads."""

    name = "pangate-sentinel"

    def _check(self, flow) -> None:
        if STATE.live or flow.response is not None and is_refused(flow):
            return
        refuse(flow, 503, "unavailable", STATE.problem, "gateway_not_ready")

    def http_connect(self, flow):
        self._check(flow)

    def requestheaders(self, flow):
        self._check(flow)

    def request(self, flow):
        self._check(flow)

    def response(self, flow):
        if not STATE.live and not is_refused(flow):
            self._check(flow)

    def websocket_message(self, flow):
        if not STATE.live:
            stop_messages(flow)

    def tcp_start(self, flow):
        stop_messages(flow)

    def tcp_message(self, flow):
        stop_messages(flow)

    def udp_start(self, flow):
        stop_messages(flow)


def install_sentinel() -> None:
    """Put the Sentinel in mitmproxy's own chain once, and disarm the startup block."""
    if STATE.sentinel is None or STATE.sentinel not in ctx.master.addons.chain:
        STATE.sentinel = Sentinel()
        if ctx.master.addons.get(Sentinel.name) is None:
            ctx.master.addons.add(STATE.sentinel)
    if ARM_BLOCK in ctx.options.block_list:
        ctx.options.update(block_list=[b for b in ctx.options.block_list if b != ARM_BLOCK])
