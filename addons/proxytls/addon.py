"""TLS between the workload and the gateway (PCI DSS 8.3.2: no credential in clear on the network).

With HTTPS_PROXY=http://NAME:TOKEN@gateway the token crosses the network in
clear before any tunnel exists. mitmproxy's regular mode also accepts a
client that starts TLS on the proxy port (a "secure web proxy": it sees the
ClientHello and terminates TLS before reading the proxy request), so
HTTPS_PROXY=https://gateway:8080 works. The gateway then presents
`pangate_proxy_cert` (its own certificate and key, one PEM file), or by
default a certificate made from its CA for the name the client asked for (or
the address it connected to): clients trust the CA with --proxy-cacert.

`pangate_require_proxy_tls` refuses, with 407 `proxy_tls_required`, any
proxy request that reached the gateway over plain HTTP: the token it carried
is dropped unread and must be treated as exposed.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions
from mitmproxy.proxy.layers import modes, tls

from pangate.chain import veil
from pangate.chain.context import refuse
from pangate.chain.failsafe import Component
from pangate.common import events
from pangate.proxytls.certfile import load_pem

log = logging.getLogger("pangate")
PROXY_AUTH = "Proxy-Authorization"
HOW = ("send proxy requests over TLS: HTTPS_PROXY=https://NAME:TOKEN@{host} (curl --proxy https://... "
       "--proxy-cacert CA.pem; trust the gateway's CA, `pangate ca export`)")


class ProxyTls(Component):
    """Presents the gateway's own certificate on the proxy port, and refuses plain proxy hops when told."""

    def __init__(self):
        self.require = False
        self.cert = None  # (certificate, key) or None: made from the CA

    def load(self, loader):
        loader.add_option("pangate_require_proxy_tls", bool, False,
                          "Refuse (407 proxy_tls_required) proxy requests sent over plain HTTP: the token "
                          "would cross the network in clear. Clients use HTTPS_PROXY=https://...")
        loader.add_option("pangate_proxy_cert", str, "",
                          "PEM file with the certificate and key the gateway presents to clients that speak "
                          "TLS to the proxy port; empty: one made from the gateway's CA.")

    def configure(self, updated):
        if "pangate_require_proxy_tls" in updated:
            self.require = ctx.options.pangate_require_proxy_tls
        if "pangate_proxy_cert" in updated:
            path = ctx.options.pangate_proxy_cert
            try:
                self.cert = load_pem(path) if path else None
            except ValueError as e:
                raise exceptions.OptionsError(f"pangate_proxy_cert: {e}") from None

    # -- the proxy hop's TLS ---------------------------------------------------------

    def tls_start_client(self, tls_start) -> None:
        """The handshake on the proxy port itself (not one inside a tunnel): our certificate, if given."""
        if self.cert is None or tls_start.ssl_conn is not None or not _proxy_hop(tls_start.context.layers):
            return
        # mitmproxy's own TLS setup (versions, ciphers, ALPN http/1.1 for a secure web proxy), then our
        # certificate in place of the one made from the CA. Script addons run before it, so call it here.
        tlsconfig = ctx.master.addons.get("tlsconfig")
        tlsconfig.tls_start_client(tls_start)
        cert, key = self.cert
        tls_start.ssl_conn.use_certificate(cert)
        tls_start.ssl_conn.use_privatekey(key)

    # -- the data path --------------------------------------------------------------

    def _check(self, flow) -> None:
        if not self.require or flow.client_conn.tls_established:
            return
        carried = veil.take_proxy_authorization(flow) is not None
        flow.request.headers.pop(PROXY_AUTH, None)  # dropped unread
        host = f"{flow.client_conn.sockname[0]}:{flow.client_conn.sockname[1]}" if flow.client_conn.sockname \
            else "gateway:8080"
        reason = ("this proxy request came over plain HTTP" + (", so its token crossed the network in clear "
                  "(treat it as exposed)" if carried else "") + ": " + HOW.format(host=host))
        # No Proxy-Authenticate challenge: a client must not be invited to send a token in clear.
        refuse(flow, 407, "proxy_auth_required", reason, "proxy_tls_required")
        if carried:
            events.emit("token_in_clear", alert=True, client=_peer(flow))

    def http_connect(self, flow):
        self._check(flow)

    def requestheaders(self, flow):
        # Inside a tunnel the client connection speaks TLS already; a plain one is a plain proxy request.
        self._check(flow)


def _proxy_hop(layers) -> bool:
    """TLS started by the client on the proxy port: the first layer under the proxy mode, the only TLS one."""
    return (len(layers) >= 2 and isinstance(layers[0], modes.HttpProxy) and isinstance(layers[1], tls.ClientTLSLayer)
            and sum(isinstance(x, tls.ClientTLSLayer) for x in layers) == 1)


def _peer(flow) -> str | None:
    addr = flow.client_conn.peername
    return f"{addr[0]}:{addr[1]}" if addr else None
