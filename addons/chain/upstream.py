"""Upstreams that stall or break: bounded waits, pangate's own answers, a record for every flow.

mitmproxy waits for an upstream as long as the socket lives: one that
accepts and never answers held a client for minutes, one that never
completed TLS left the client's handshake hanging with no flow (and so no
audit record) at all, and a reset mid-body was answered with mitmproxy's
HTML error page while the record said `status: 200`.

`Upstream` bounds each wait with a timer:

- connect (`pangate_upstream_connect_timeout`): from `server_connect` until
  `server_connected`;
- TLS (`pangate_upstream_tls_timeout`): from `tls_start_server` until
  `tls_established_server`;
- first byte (`pangate_upstream_response_timeout`): from the flow's
  `request` hook (restarted once its connection is up and its TLS done)
  until `responseheaders`.

On expiry it notes why and resets the server connection (wire.reset_connections),
so mitmproxy's own error path runs: the flow's `error` hook, where this stage
turns what happened into pangate's JSON refusal (`context.refuse`: 504
`upstream_timeout`, 502 `upstream_tls_failed`, `upstream_reset`,
`upstream_unreachable`, ...) with the request id, so the Audit stage records
the right status and code. A client whose tunnel lost its upstream TLS is
answered at its first request, without a second wait.

mitmproxy then sends the client its error page itself (`Http1Server.send` and
`Http2Connection._handle_event` on a `ResponseProtocolError`, which call
`make_error_response`/`format_error`). `install_error_pages` wraps those two
send paths once so that they send the flow's pangate refusal instead (found
by client connection and error message), or, for an error no flow explains,
a plain pangate JSON error. If mitmproxy's internals are not what it expects
the patch is not applied: the gateway runs on and logs that error pages are
mitmproxy's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from typing import NamedTuple

from mitmproxy import ctx, exceptions, http

from pangate.chain.context import FlowContext, is_refused, refuse, request_id
from pangate.chain.failsafe import Component
from pangate.chain.wire import reset_connections
from pangate.policy.schema import parse_duration

log = logging.getLogger("pangate")

OPTIONS = {
    "pangate_upstream_connect_timeout": ("10s", "How long to wait for an upstream to accept a connection."),
    "pangate_upstream_tls_timeout": ("10s", "How long to wait for an upstream to complete its TLS handshake."),
    "pangate_upstream_response_timeout": ("60s", "How long to wait for an upstream's response headers once "
                                                 "the request is on its way (504 upstream_timeout after)."),
}
_KEEP = 1024  # failures remembered per kind: enough for the flows still to hear of them


class Verdict(NamedTuple):
    status: int
    code: str
    reason: str


def _bounded(d: OrderedDict, key, value) -> None:
    d[key] = value
    d.move_to_end(key)
    while len(d) > _KEEP:
        d.popitem(last=False)


def _target(server) -> tuple:
    """What a server connection was for (the name, not the pinned address)."""
    addr = server.address or ("", 0)
    return (server.sni or addr[0], addr[1])


# Failures mitmproxy reports in its own words, in pangate's terms (checked in order).
_MESSAGES = (
    ("body_size_limit", Verdict(502, "response_too_large", "the upstream's response is larger than the gateway "
                                                          "accepts")),
    ("request smuggling", Verdict(502, "invalid_upstream_response", "the upstream sent headers the gateway refuses")),
    ("Cannot parse HTTP response", Verdict(502, "invalid_upstream_response", "the upstream's response is not HTTP")),
    ("unexpected server response", Verdict(502, "invalid_upstream_response", "the upstream's response is not HTTP")),
)


def classify(flow) -> Verdict | None:
    """What a flow's error says about its upstream; None for errors of the client's making."""
    msg = flow.error.msg if flow.error else ""
    if msg == "Connection killed." or flow.request.timestamp_end is None:
        return None  # killed by pangate (already recorded) or the client went away mid-request
    for needle, verdict in _MESSAGES:
        if needle in msg:
            return verdict
    if flow.response is not None:
        return Verdict(502, "upstream_reset", "the upstream broke off its response")
    if not flow.server_conn.timestamp_tcp_setup:
        return Verdict(502, "upstream_unreachable", "the gateway could not connect to the upstream")
    return Verdict(502, "upstream_reset", "the upstream closed the connection without answering")


# ------------------------------------------------------------------- error pages

# client connection id -> flows whose pangate refusal is the error page to send.
PAGES: dict[str, list] = {}
_PATCHED: dict[str, bool] = {}
_GENERIC = {  # ErrorCode name -> (error, code, reason) of a page no flow explains
    "CONNECT_FAILED": ("bad_gateway", "upstream_unreachable", "the gateway could not connect to the upstream"),
    "GENERIC_SERVER_ERROR": ("bad_gateway", "upstream_reset", "the upstream connection failed"),
    "RESPONSE_VALIDATION_FAILED": ("bad_gateway", "invalid_upstream_response", "the upstream's response was refused"),
    "RESPONSE_TOO_LARGE": ("bad_gateway", "response_too_large", "the upstream's response is too large"),
    "REQUEST_TOO_LARGE": ("request_too_large", "request_too_large", "the request is larger than the gateway accepts"),
    "REQUEST_VALIDATION_FAILED": ("bad_request", "invalid_request", "the request was refused as malformed"),
    "DESTINATION_UNKNOWN": ("bad_request", "destination_unknown", "the request names no destination"),
    "GENERIC_CLIENT_ERROR": ("bad_request", "invalid_request", "the request could not be read"),
}


def remember_page(flow) -> None:
    """The flow's refusal is what the client gets if mitmproxy now sends an error page for it."""
    flows = PAGES.setdefault(flow.client_conn.id, [])
    flows.append(flow)
    del flows[:-32]


def page_for(client_id: str, message: str, code, status: int) -> http.Response:
    """The error page to send: the flow's pangate refusal, or a plain pangate JSON error."""
    flows = PAGES.get(client_id) or []
    for i, flow in enumerate(flows):
        if flow.error is not None and flow.error.msg == message:
            del flows[i]
            if flow.response is not None and "X-Pangate-Request-Id" in flow.response.headers:
                return flow.response
    error, kind, reason = _GENERIC.get(getattr(code, "name", ""), ("bad_gateway", "gateway_error",
                                                                   "the request failed at the gateway"))
    body = json.dumps({"error": error, "reason": reason, "code": kind, "request_id": None}, indent=1) + "\n"
    return http.Response.make(status, body, {"Content-Type": "application/json", "Cache-Control": "no-store"})


def install_error_pages() -> bool:
    """Make mitmproxy's HTTP/1 and HTTP/2 error pages pangate's JSON. Once; False if it could not."""
    if _PATCHED.get("done"):
        return True
    try:
        from mitmproxy import connection
        from mitmproxy.net.http import http1
        from mitmproxy.proxy import commands
        from mitmproxy.proxy.layers.http import ResponseProtocolError, _http1, _http2

        h1_send = _http1.Http1Server.send
        h2_handle = _http2.Http2Server._handle_event  # inherited from Http2Connection
        can_write = connection.ConnectionState.CAN_WRITE

        def send(self, event):
            status = event.code.http_status_code() if isinstance(event, ResponseProtocolError) else None
            if status is not None and not self.response and self.conn.state & can_write:
                page = page_for(self.conn.id, event.message, event.code, status)
                yield commands.SendData(self.conn, http1.assemble_response(_closing(page)))
                yield commands.CloseConnection(self.conn)
                return
            yield from h1_send(self, event)

        def handle_event(self, event):
            if isinstance(event, ResponseProtocolError) and (status := event.code.http_status_code()) is not None:
                sid = event.stream_id
                stream = None if self.is_closed(sid) else self.h2_conn.streams.get(sid)
                if stream is not None and self.is_open_for_us(sid) and not stream.state_machine.headers_sent:
                    page = page_for(self.conn.id, event.message, event.code, status)
                    headers = [(b":status", b"%d" % page.status_code)]
                    headers += [(k.lower(), v) for k, v in page.headers.fields if k.lower() != b"content-length"]
                    self.h2_conn.send_headers(sid, headers)
                    self.h2_conn.send_data(sid, page.raw_content or b"", end_stream=True)
                    yield commands.SendData(self.conn, self.h2_conn.data_to_send())
                    return
            yield from h2_handle(self, event)

        _http1.Http1Server.send = send
        _http2.Http2Server._handle_event = handle_event
    except Exception as e:  # an unexpected mitmproxy: run on with its pages rather than not at all
        log.error("pangate: upstream error pages are mitmproxy's own (HTML), the JSON pages could not be "
                  "installed: %s: %s", type(e).__name__, e)
        return False
    _PATCHED["done"] = True
    return True


def _closing(page: http.Response) -> http.Response:
    page = page.copy()
    page.headers["Connection"] = "close"
    return page


# ------------------------------------------------------------------- the stage

class Upstream(Component):
    """Bounds the waits for an upstream and answers its failures with pangate's JSON."""

    name = "pangate-upstream"
    # A failure of a flow refused earlier still needs its page, and its timer stopped.
    sees_refused = frozenset({"error", "response", "responseheaders"})

    def __init__(self):
        self.connect_timeout = self.tls_timeout = 10.0
        self.response_timeout = 60.0
        self._timers: dict[tuple, asyncio.TimerHandle] = {}
        self._failed: OrderedDict[str, Verdict] = OrderedDict()  # server connection id -> why it failed
        self._client_failed: OrderedDict[str, tuple] = OrderedDict()  # client id -> (target, verdict, when)
        self._verdicts: OrderedDict[str, Verdict] = OrderedDict()  # flow id -> why its wait was broken off
        self._waiting: dict[str, dict] = {}  # client id -> {flow id: flow} awaiting response headers

    def load(self, loader):
        for name, (default, help_) in OPTIONS.items():
            loader.add_option(name, str, default, help_ + " (e.g. 10s, 500ms)")
        install_error_pages()

    def configure(self, updated):
        for name, attr in (("pangate_upstream_connect_timeout", "connect_timeout"),
                           ("pangate_upstream_tls_timeout", "tls_timeout"),
                           ("pangate_upstream_response_timeout", "response_timeout")):
            if name in updated:
                try:
                    value = parse_duration(getattr(ctx.options, name))
                except ValueError as e:
                    raise exceptions.OptionsError(f"{name}: {e}") from None
                if not 0 < value <= 3600:
                    raise exceptions.OptionsError(f"{name} must be between 0 and 3600 seconds")
                setattr(self, attr, value)

    # ---- timers

    def _arm(self, key: tuple, delay: float, fn, *args) -> None:
        self._cancel(key)
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key, fn, args)

    def _fire(self, key, fn, args) -> None:
        self._timers.pop(key, None)
        try:
            fn(*args)
        except Exception:  # a timer must never break the event loop
            log.exception("pangate upstream timer failed")

    def _cancel(self, key: tuple) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _connect_expired(self, client_id: str, server) -> None:
        if server.timestamp_start is None:  # still in the server_connect hooks: not connecting yet
            self._arm(("connect", server.id), 0.5, self._connect_expired, client_id, server)
            return
        v = Verdict(504, "upstream_timeout", f"the upstream did not accept a connection within "
                                             f"{self.connect_timeout:g} s")
        self._failed_server(client_id, server, v)
        log.warning("pangate: %s; connection to %s abandoned", v.reason, _target(server))
        reset_connections(client_id, server, cancel=f"pangate: {v.reason}")

    def _tls_expired(self, client_id: str, server) -> None:
        v = Verdict(502, "upstream_tls_failed", f"the upstream did not complete TLS within {self.tls_timeout:g} s")
        self._failed_server(client_id, server, v)
        log.warning("pangate: %s; connection to %s reset", v.reason, _target(server))
        reset_connections(client_id, server, cancel=f"pangate: {v.reason}")

    def _response_expired(self, flow) -> None:
        self._waiting.get(flow.client_conn.id, {}).pop(flow.id, None)
        v = Verdict(504, "upstream_timeout", f"the upstream sent no response within {self.response_timeout:g} s")
        _bounded(self._verdicts, flow.id, v)
        FlowContext.of(flow).error = v.reason  # noted now; the error hook answers with it
        log.warning("pangate: request %s: %s; upstream connection reset", request_id(flow), v.reason)
        if not reset_connections(flow.client_conn.id, flow.server_conn, cancel=f"pangate: {v.reason}"):
            if flow.killable:
                flow.kill()

    def _failed_server(self, client_id: str, server, v: Verdict) -> None:
        _bounded(self._failed, server.id, v)
        _bounded(self._client_failed, client_id, (_target(server), v))

    def _restart_waits(self, client_id: str) -> None:
        """A connection came up (or finished TLS): the flows waiting on it count from now."""
        for flow in list(self._waiting.get(client_id, {}).values()):
            self._arm(("response", flow.id), self.response_timeout, self._response_expired, flow)

    # ---- connection hooks (registered with mitmproxy directly)

    def server_connect(self, data) -> None:
        server = data.server
        if server.error:
            return
        failed = self._client_failed.get(data.client.id)
        if failed is not None and failed[0] == _target(server) and failed[1].code == "upstream_tls_failed":
            # This tunnel's upstream already failed its TLS: answer now instead of waiting again.
            server.error = f"pangate: {failed[1].reason}"
            _bounded(self._failed, server.id, failed[1])
            return
        self._arm(("connect", server.id), self.connect_timeout, self._connect_expired, data.client.id, server)

    def server_connected(self, data) -> None:
        self._cancel(("connect", data.server.id))
        if not data.server.tls:
            self._restart_waits(data.client.id)

    def server_connect_error(self, data) -> None:
        self._cancel(("connect", data.server.id))
        if data.server.id not in self._failed:
            _bounded(self._failed, data.server.id,
                     Verdict(502, "upstream_unreachable", "the gateway could not connect to the upstream"))

    def tls_start_server(self, tls_start) -> None:
        client = tls_start.context.client
        self._arm(("tls", tls_start.conn.id), self.tls_timeout, self._tls_expired, client.id, tls_start.conn)

    def tls_established_server(self, data) -> None:
        self._cancel(("tls", data.conn.id))
        self._restart_waits(data.context.client.id)

    def tls_failed_server(self, data) -> None:
        self._cancel(("tls", data.conn.id))
        v = self._failed.get(data.conn.id)
        if v is None or v.code != "upstream_tls_failed":
            v = Verdict(502, "upstream_tls_failed", f"TLS with the upstream failed ({data.conn.error or 'closed'})")
        self._failed_server(data.context.client.id, data.conn, v)

    def server_disconnected(self, data) -> None:
        self._cancel(("connect", data.server.id))
        self._cancel(("tls", data.server.id))

    def client_disconnected(self, client) -> None:
        for flow_id in self._waiting.pop(client.id, {}):
            self._cancel(("response", flow_id))
        self._client_failed.pop(client.id, None)
        PAGES.pop(client.id, None)

    # ---- flow hooks (run by the data path)

    def request(self, flow) -> None:
        self._waiting.setdefault(flow.client_conn.id, {})[flow.id] = flow
        self._arm(("response", flow.id), self.response_timeout, self._response_expired, flow)

    def _done_waiting(self, flow) -> None:
        self._cancel(("response", flow.id))
        waiting = self._waiting.get(flow.client_conn.id)
        if waiting is not None:
            waiting.pop(flow.id, None)
            if not waiting:
                self._waiting.pop(flow.client_conn.id, None)

    def responseheaders(self, flow) -> None:
        self._done_waiting(flow)

    def response(self, flow) -> None:
        self._done_waiting(flow)

    def http_connect_error(self, flow) -> None:
        """A CONNECT whose (eager) upstream connection failed: pangate's refusal, not mitmproxy's text."""
        v = self._failed.pop(flow.server_conn.id, None)
        if v is not None:
            refuse(flow, v.status, _error_word(v.status), v.reason, v.code)

    def error(self, flow) -> None:
        self._done_waiting(flow)
        if is_refused(flow):
            remember_page(flow)  # its refusal stands; it is also the page mitmproxy may send now
            return
        v = self._verdicts.pop(flow.id, None) or self._failed.pop(flow.server_conn.id, None)
        if v is None:
            failed = self._client_failed.get(flow.client_conn.id)
            if failed is not None and failed[0] == (flow.request.host, flow.request.port):
                v = failed[1]
        v = v or classify(flow)
        if v is None:
            return
        fc = FlowContext.of(flow)
        if flow.response is not None and flow.response.stream:
            # Its headers already went to the client: nothing can be answered, the client sees the cut.
            fc.mark_refused(v.status, v.code, v.reason)
            fc.error = v.reason
        else:
            flow.response = None  # what the upstream began (if anything) never reached the client
            refuse(flow, v.status, _error_word(v.status), v.reason, v.code)
            fc.error = v.reason
            remember_page(flow)
        log.warning("pangate: request %s failed upstream: %s (%s)", request_id(flow), v.reason, v.code)


def _error_word(status: int) -> str:
    return "gateway_timeout" if status == 504 else "bad_gateway"
