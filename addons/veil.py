"""What mitmweb must never see: proxy credentials and injected secrets.

mitmproxy's own addons, mitmweb's flow view among them, run before script
addons in every hook, so a secret that a pangate addon removes in a hook has
already been serialized to the UI by then. The Veil is put at the very front
of mitmproxy's chain: it takes Proxy-Authorization off a request before the
view first sees it, and lets addons scrub what they injected once the request
has gone upstream, before the view sees the flow again.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

from mitmproxy import ctx

log = logging.getLogger("pangate")
PROXY_AUTH = "Proxy-Authorization"

_proxy_auth: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_scrubbers: list[Callable] = []


def take_proxy_authorization(flow) -> str | None:
    """The Proxy-Authorization the client sent with this flow, handed over once."""
    value = _proxy_auth.pop(flow, None)
    return value if value is not None else flow.request.headers.get(PROXY_AUTH)


def on_sent(fn: Callable) -> None:
    """fn(flow) runs once the request has left, before mitmweb's view updates."""
    if fn not in _scrubbers:
        _scrubbers.append(fn)


def off_sent(fn: Callable) -> None:
    if fn in _scrubbers:
        _scrubbers.remove(fn)


class Veil:
    """Front of mitmproxy's chain; added once, outlives script reloads."""

    name = "pangate-veil"

    def _take(self, flow) -> None:
        value = flow.request.headers.get(PROXY_AUTH)
        if value is not None:
            _proxy_auth[flow] = value
            del flow.request.headers[PROXY_AUTH]

    def http_connect(self, flow):
        self._take(flow)

    def requestheaders(self, flow):
        self._take(flow)

    def _scrub(self, flow) -> None:
        for fn in list(_scrubbers):
            try:
                fn(flow)
            except Exception:  # the secret stays in memory only; the flow already went out
                log.exception("pangate: scrubbing a sent request failed")

    def responseheaders(self, flow):
        self._scrub(flow)

    def response(self, flow):
        self._scrub(flow)

    def error(self, flow):
        self._scrub(flow)


def install_veil() -> None:
    if ctx.master.addons.get(Veil.name) is None:
        veil = ctx.master.addons.register(Veil())
        ctx.master.addons.chain.insert(0, veil)
