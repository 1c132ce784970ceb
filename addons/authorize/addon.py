"""Least privilege: every request is decided against the policy, default deny."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from pangate.policy.decide import Decision, Request, decide, decide_connect
from pangate.chain.failsafe import Component, meta, refuse, refused
from pangate.identity.addon import caller_name

log = logging.getLogger("pangate")


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
    )


def note(flow, decision: Decision) -> None:
    meta(flow)["decision"] = {"outcome": decision.outcome, "reason": decision.reason,
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
        if refused(flow):
            return
        who = caller_name(flow)
        if who is None:  # no identity and not refused: never let that pass
            refuse(flow, 407, "proxy_auth_required", "no identity was established", "missing_token")
            return
        self._apply(flow, decide_connect(self.store.policy, who, flow.request.host, flow.request.port))

    def requestheaders(self, flow):
        if refused(flow):
            return
        who = caller_name(flow)
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
        meta(flow)["destination"] = {"scheme": facts.scheme, "host": facts.host, "port": facts.port}
        self._apply(flow, decision)

    def request(self, flow):
        # Decided again on the request as it will be sent: another addon or a
        # reviewer's edit must not carry a request past the policy.
        m = meta(flow)
        if refused(flow) or "destination" not in m:
            return
        req = flow.request
        if (req.is_http2 or req.is_http3) and req.raw_content and "content-length" not in req.headers:
            # Relayed to an HTTP/1 upstream, a body without its length would be read as
            # the start of another request, one nobody decided.
            req.headers["content-length"] = str(len(req.raw_content))
        facts = request_facts(flow, caller_name(flow))
        d = m["destination"]
        if (facts.scheme, facts.host, facts.port) != (d["scheme"], d["host"], d["port"]):
            refuse(flow, 403, "forbidden", "the request's destination changed after it was authorized",
                   "destination_changed")
            return
        decision = decide(self.store.policy, facts)
        if not decision.allowed:
            self._apply(flow, decision)
