"""Least privilege: every request is decided against the policy, default deny."""

from __future__ import annotations

import logging
from collections import OrderedDict
from urllib.parse import parse_qsl

from mitmproxy import connection

from pangate.authorize.address import Refused, checked_address, is_ip_literal, resolve
from pangate.common import events
from pangate.masking.decoders import DecodeError, Limits, decode
from pangate.policy.decide import Decision, Request, decide, decide_connect, destinations_for
from pangate.chain.context import FlowContext, is_refused, refuse
from pangate.chain.failsafe import Component

log = logging.getLogger("pangate")


# Bodies decide() reads for `_method` and body fields; bigger or unreadable ones are judged without.
BODY_FACTS_LIMIT = Limits(max_bytes=8 << 20, max_ratio=1000.0)


def _body_facts(req) -> bytes | None:
    """The request body as the backend will read it, decoded within bounds; None if not (yet) known."""
    raw = req.raw_content
    if raw is None:
        return None
    enc = req.headers.get("content-encoding", "")
    if not enc.strip() or enc.strip().lower() == "identity":
        return raw
    try:
        return decode(raw, enc, BODY_FACTS_LIMIT)
    except DecodeError:
        return None  # DLP refuses what cannot be decoded; the decision goes on without body fields


def request_facts(flow, identity: str) -> Request:
    """The decision's input, from where the request really goes (not what it claims)."""
    req = flow.request
    path, _, query = req.path.partition("?")  # not urlsplit: "//admin/x" is a path here, not a netloc
    if "#" in query:  # a raw fragment after the query: judged with the path (refused there)
        path += "#"
    return Request(
        identity=identity,
        scheme=req.scheme,
        host=req.host,  # inside a tunnel: the CONNECT target, whatever the Host header says
        port=req.port,
        method=req.method.upper(),
        path=path,  # raw: decide() refuses ambiguous forms, then matches the decoded path
        query=tuple(parse_qsl(query, keep_blank_values=True)),
        host_header=req.host_header,
        sni=flow.client_conn.sni,
        raw_query=query,  # `;` as a separator and every spelling of a name are judged from the raw form
        headers=tuple(req.headers.items(multi=True)),  # method-override headers are refused or judged
        content_type=req.headers.get("content-type"),
        body=_body_facts(req),  # `_method` and form/JSON fields count as parameters
    )


def note(flow, decision: Decision) -> None:
    FlowContext.of(flow).decision = {"outcome": decision.outcome, "reason": decision.reason,
                              "detail": decision.detail, "rule": decision.rule,
                              "destination": decision.destination}


class Authorize(Component):
    """Decides each CONNECT and each request; refuses with 403 and the reason."""

    def __init__(self, store):
        self.store = store

    def _apply(self, flow, decision: Decision) -> None:
        note(flow, decision)
        if not decision.allowed:
            refuse(flow, 403, "forbidden", decision.detail, decision.reason)
        elif not decision.enforced:
            log.warning("pangate report-only: %s", decision.detail)

    def http_connect(self, flow):
        who = FlowContext.of(flow).caller
        if who is None:  # no identity and not refused: never let that pass
            refuse(flow, 407, "proxy_auth_required", "no identity was established", "missing_token")
            return
        self._apply(flow, decide_connect(self.store.policy, who, flow.request.host, flow.request.port))

    def requestheaders(self, flow):
        fc = FlowContext.of(flow)
        who = fc.caller
        if who is None:
            refuse(flow, 407, "proxy_auth_required", "no identity was established", "missing_token")
            return
        if flow.request.authority and flow.request.http_version.startswith("HTTP/1"):
            # Absolute-form inside a tunnel: servers and CDNs route on that authority, not on
            # the tunnel's host, so the credential would go where the policy never looked.
            refuse(flow, 403, "forbidden", "an absolute-form request target inside a tunnel is refused: "
                   "send origin-form (a path)", "absolute_form")
            return
        facts = request_facts(flow, who)
        decision = decide(self.store.policy, facts)
        fc.target = {"scheme": facts.scheme, "host": facts.host, "port": facts.port}
        self._apply(flow, decision)

    def request(self, flow):
        # Decided again on the request as it will be sent: another addon or a
        # reviewer's edit must not carry a request past the policy.
        fc = FlowContext.of(flow)
        d = fc.target
        if d is None:
            return
        req = flow.request
        if (req.is_http2 or req.is_http3) and req.raw_content and "content-length" not in req.headers:
            # Relayed to an HTTP/1 upstream, a body without its length would be read as
            # the start of another request, one nobody decided.
            req.headers["content-length"] = str(len(req.raw_content))
        facts = request_facts(flow, fc.caller)
        if (facts.scheme, facts.host, facts.port) != (d["scheme"], d["host"], d["port"]):
            refuse(flow, 403, "forbidden", "the request's destination changed after it was authorized",
                   "destination_changed")
            return
        decision = decide(self.store.policy, facts)
        if not decision.allowed:
            self._apply(flow, decision)


class AddressGuard(Component):
    """Refuses destinations that resolve to forbidden addresses; pins connections to checked ones."""

    # Both forget the refusal server_connect left for the flow, refused or not.
    sees_refused = frozenset({"http_connect_error", "error"})

    def __init__(self, store, resolver=resolve):
        self.store = store
        self.resolver = resolver
        self._pinned: dict[str, tuple] = {}  # server connection id -> the (host, port) it was asked for
        self._refusals: OrderedDict[str, str] = OrderedDict()  # server id -> why server_connect refused

    async def _check(self, host: str, port: int, scheme: str | None = None) -> str:
        dests = destinations_for(self.store.policy, host, port, scheme)
        return checked_address(host, dests, await self.resolver(host, port))

    async def _check_flow(self, flow) -> None:
        req = flow.request
        try:
            addr = await self._check(req.host, req.port, None if req.method == "CONNECT" else req.scheme)
        except Refused as e:
            refuse(flow, 403, "forbidden", str(e), "address_not_allowed")
            events.emit("address_refused", request_id=FlowContext.of(flow).request_id, host=req.host,
                        port=req.port, reason=str(e))
            return
        FlowContext.of(flow).address = addr

    def http_connect(self, flow):
        return self._check_flow(flow)

    def requestheaders(self, flow):
        # Inside a tunnel the connection was checked and pinned at CONNECT.
        if not flow.server_conn.connected:
            return self._check_flow(flow)
        return None

    async def server_connect(self, data) -> None:
        """Every upstream connection: resolve, check, and connect to the checked address only."""
        server: connection.Server = data.server
        if server.error or not server.address:
            return
        if server.via is not None:  # an upstream proxy would resolve the name, unchecked
            self._refuse_connection(server, "pangate does not forward through upstream proxies")
            return
        host, port = server.address[0], server.address[1]
        try:
            addr = await self._check(host, port)
        except Refused as e:
            self._refuse_connection(server, str(e))
            return
        except Exception as e:  # not a flow hook: failsafe cannot catch this one, so fail closed here
            log.exception("pangate address check failed")
            self._refuse_connection(server, f"the address check failed ({type(e).__name__})")
            return
        if server.sni is None and not is_ip_literal(host):
            server.sni = host  # TLS still names and verifies the host, not the address
        self._pinned[server.id] = server.address
        server.address = (addr, port)

    def _refuse_connection(self, server, reason: str) -> None:
        server.error = f"pangate refused the connection: {reason}"
        self._refusals[server.id] = reason
        while len(self._refusals) > 1024:
            self._refusals.popitem(last=False)
        log.warning("pangate refused a connection to %s: %s", server.address, reason)

    def _unpin(self, server) -> None:
        """Give the connection its host name back: mitmproxy matches reuse and in-tunnel requests on it."""
        asked = self._pinned.pop(server.id, None)
        if asked is not None:
            # The connection is open and mitmproxy guards `address` against changes
            # then; the address it is connected to stays in `peername`.
            object.__setattr__(server, "address", asked)

    def server_connected(self, data):
        server = data.server
        asked = self._pinned.get(server.id)
        if asked is not None and server.peername and server.peername[0] != server.address[0]:
            log.error("pangate connected to %s, not the checked %s", server.peername, server.address)
        self._unpin(server)

    def server_connect_error(self, data):
        self._unpin(data.server)

    def http_connect_error(self, flow):
        """A CONNECT refused in server_connect answers with pangate's 403, not a bare 502."""
        reason = self._refusals.pop(flow.server_conn.id, None)
        if reason is not None and not is_refused(flow):
            refuse(flow, 403, "forbidden", reason, "address_not_allowed")
            events.emit("address_refused", request_id=FlowContext.of(flow).request_id, host=flow.request.host,
                        port=flow.request.port, reason=reason)

    def error(self, flow):
        self._refusals.pop(flow.server_conn.id, None)
