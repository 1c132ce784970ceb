"""What mitmweb must never see: proxy credentials and injected secrets.

Where mitmweb's flow view sits in mitmproxy's chain relative to the script is
mitmproxy's business, and the view can serialize a flow whenever it changes.
The Veil does not depend on that order: it is put at the very front of the
chain, takes Proxy-Authorization off a request before anything else sees it
(also while the script is reloading), and lets addons scrub what they
injected once the request has gone upstream.
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
