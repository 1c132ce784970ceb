"""The head of the data path: tags every flow and refuses traffic while any control is down."""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions

from pangate.chain import failsafe
from pangate.chain.context import FlowContext, is_refused, refuse, request_id
from pangate.chain.failsafe import FLOW_HOOKS, Component
from pangate.chain.wire import stop_messages
from pangate.pan import engine as pan_engine
from pangate.sinks import output

log = logging.getLogger("pangate")

# mitmproxy options that would let traffic past pangate's checks, and why. Any
# option named *_insecure (upstream TLS verification off) is refused as well.
INSECURE = "upstream TLS is always verified: give the upstream's CA in ssl_verify_upstream_trusted_ca"
BYPASS_OPTIONS = {
    "ignore_hosts": "ignored hosts are tunnelled without being decided, masked or recorded",
    "allow_hosts": "hosts outside allow_hosts are tunnelled without being decided, masked or recorded",
    "tcp_hosts": "raw TCP is relayed without being decided, masked or recorded",
    "udp_hosts": "raw UDP is relayed without being decided, masked or recorded",
    "intercept": "an intercept pauses flows after the credential is injected and lets them be edited "
                 "unchecked: use approval rules in the policy instead",
    "map_remote": "requests would be sent elsewhere than where they were decided",
    "map_local": "responses would be made up by the proxy instead of the destination",
    "modify_headers": "requests and responses would be rewritten outside the checks",
    "modify_body": "requests and responses would be rewritten outside the checks",
}
# ...and options that must stay on.
REQUIRED_OPTIONS = {
    "validate_inbound_headers": "requests with both Content-Length and Transfer-Encoding are how requests "
                                "are smuggled past a check",
}


class Guard(Component):
    """Runs first. Marks the chain live once loaded, and not live once unloaded."""

    sees_refused = FLOW_HOOKS  # every flow gets its request id, refused or not

    def __init__(self, components: list):
        self.components = components

    def load(self, loader):
        install_output_scrubber()

    def configure(self, updated):
        for name in set(updated):
            why = BYPASS_OPTIONS.get(name) or (INSECURE if name.endswith("_insecure") else None)
            if why and getattr(ctx.options, name, None):
                raise exceptions.OptionsError(f"pangate refuses {name}: {why}")
            if name in REQUIRED_OPTIONS and not getattr(ctx.options, name, True):
                raise exceptions.OptionsError(f"pangate needs {name} on: {REQUIRED_OPTIONS[name]}")
        if "rawtcp" in updated and ctx.options.rawtcp:
            # On by default: non-HTTP bytes in a tunnel would be relayed raw. Off, they fail HTTP parsing.
            ctx.options.update(rawtcp=False)

    def running(self):
        failsafe.STATE.live = True
        log.info("pangate gateway live: %s", ", ".join(type(c).__name__ for c in self.components))
        # Which PAN engine masks (native C or the Python reference), and why: one line.
        log.info("pangate PAN engine: %s", pan_engine.ENGINE_DETAIL)

    def done(self):
        failsafe.STATE.live = False
        failsafe.STATE.problem = "the pangate gateway is reloading or failed to load"

    def _admit(self, flow) -> None:
        if flow.is_replay:
            # A replay (each attempt) is a new request by whoever started it: none of the
            # original's identity, decision, refusal or approval carries over.
            old = FlowContext.of(flow)
            origin = old.replayed_from or old.request_id
            flow.metadata["pangate"] = {"replayed_from": origin}
        request_id(flow)
        if is_refused(flow):
            return
        for c in self.components:
            if not c.healthy:
                refuse(flow, 503, "unavailable", c.problem or f"{type(c).__name__} is not ready",
                       getattr(c, "problem_code", "control_unavailable"))
                return

    def http_connect(self, flow):
        self._admit(flow)

    def requestheaders(self, flow):
        self._admit(flow)

    def responseheaders(self, flow):
        # The workload can quote this id; it finds the flow's audit record.
        flow.response.headers["X-Pangate-Request-Id"] = request_id(flow)

    def tcp_start(self, flow):
        # pangate speaks HTTP only; anything else in a tunnel would go unchecked.
        FlowContext.of(flow).mark_refused(403, "not_http", "only HTTP traffic may pass")
        stop_messages(flow)

    def tcp_message(self, flow):
        stop_messages(flow)

    def udp_start(self, flow):
        stop_messages(flow)


def install_output_scrubber() -> None:
    """Everything the process prints or logs passes the sink scrubber from here on.

    mitmproxy itself prints request input pangate never sees as a field: flow and status
    lines, CONNECT targets, websocket ping payloads and close reasons, "Unexpected data from
    server", tracebacks. Its flow dumper and terminal log handler took sys.stdout before the
    gateway script loaded, so they are pointed at the scrubbed streams too. Idempotent: a
    script reload finds it in place."""
    master = getattr(ctx, "master", None)
    addons = getattr(master, "addons", None)
    also = []
    if addons is not None:
        dumper = addons.get("dumper")
        termlog = addons.get("termlog")
        also += [a for a in (dumper, getattr(termlog, "logger", None)) if a is not None]
    output.install(also=also)
