"""The head of the chain: tags every flow and refuses traffic while any control is down."""

from __future__ import annotations

import logging

from . import failsafe, veil
from .failsafe import Component, meta, refuse, refused, request_id

log = logging.getLogger("pangate")


class Guard(Component):
    """Runs first. Marks the chain live once loaded, and not live once unloaded."""

    def __init__(self, components: list):
        self.components = components

    def running(self):
        failsafe.STATE.live = True
        log.info("pangate gateway live: %s", ", ".join(type(c).__name__ for c in self.components))

    def done(self):
        failsafe.STATE.live = False
        failsafe.STATE.problem = "the pangate gateway is reloading or failed to load"

    def _admit(self, flow) -> None:
        if flow.is_replay and "replayed_from" not in meta(flow):
            # A replay is a new request by whoever started it: none of the original's
            # identity, decision or approval carries over.
            flow.metadata["pangate"] = {"replayed_from": meta(flow).get("request_id")}
        request_id(flow)
        if refused(flow):
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
        meta(flow)["refused"] = {"code": "not_http", "reason": "only HTTP traffic may pass"}
        flow.kill()

    def udp_start(self, flow):
        flow.kill()


def chain(*components) -> list:
    """The addon list for the gateway script: Guard first, then the controls in order."""
    failsafe.install_sentinel()
    veil.install_veil()
    return [Guard(list(components)), *components]
