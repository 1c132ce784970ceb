"""Fail closed: nothing is forwarded because a pangate control broke.

mitmproxy logs an exception raised in a hook and lets the flow go on; a
script that fails to reload is unregistered and traffic flows unchecked.
Three layers stop that:

1. `Component` wraps every flow hook of every pangate addon: an exception
   refuses that flow with a JSON error instead of letting it continue.
2. `Sentinel` is added to mitmproxy's own addon chain, outside the script, the
   first time the gateway script loads. It outlives reloads and refuses every
   flow while the pangate chain is not loaded and healthy.
3. Before the script has ever loaded (or if it never loads), the launcher arms
   mitmproxy's built-in block_list with ARM_BLOCK; the Sentinel disarms it once
   it is in place.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import traceback
import uuid

from mitmproxy import ctx, http
from mitmproxy.net.http.http1.read import expected_http_body_size
from mitmproxy.utils import human

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


def request_id(flow) -> str:
    """Every flow gets one id, shown to the client and in every record of it."""
    meta = flow.metadata.setdefault("pangate", {})
    if "request_id" not in meta:
        meta["request_id"] = uuid.uuid4().hex[:20]
    return meta["request_id"]


def meta(flow) -> dict:
    """pangate's own notes on a flow. Saved with flows and shown in mitmweb: nothing secret here."""
    return flow.metadata.setdefault("pangate", {})


def may_stream(flow, response: bool = False) -> bool:
    """Whether mitmproxy could stream this body under `stream_large_bodies`.

    A body of unknown size (chunked, read-until-close) is switched to raw
    streaming mid-body once it outgrows the limit, with no hook to see it: so
    such a body is treated as streamed from the start, through our callable.
    """
    limit = human.parse_size(getattr(ctx.options, "stream_large_bodies", None) or None)
    if limit is None:
        return False
    msg = flow.response if response else flow.request
    if (msg.is_http2 or msg.is_http3) and "content-length" not in msg.headers:
        # HTTP/2 frames carry no length up front (mitmproxy reads it as 0): a body may
        # follow, of any size. Only a request method that never has a body is exempt.
        return response or flow.request.method not in ("GET", "HEAD")
    try:
        size = expected_http_body_size(flow.request, flow.response if response else None)
    except ValueError:
        return True  # malformed framing: never let it switch to raw streaming
    return size is None or size < 0 or size > limit


def abort_connections(flow, *conns) -> bool:
    """Reset the given connections of a live flow now (not after queued data is flushed).

    A stream callable cannot refuse a flow: mitmproxy has already sent the
    headers. Resetting the sockets is the only way to make the receiver see
    an error instead of a clean (truncated) end of message. On HTTP/2 this
    resets the whole client connection, other streams included. Uses
    mitmproxy internals (proxyserver.connections, handler.transports): if
    they are not there, the caller still sends nothing more, and a
    Content-Length body then ends short, which clients report.
    """
    try:
        server = ctx.master.addons.get("proxyserver")
        handler = getattr(server, "connections", {}).get(flow.client_conn.id) if server else None
        if handler is None:
            return False
        done = False
        for conn in conns:
            io = handler.transports.get(conn)
            writer = getattr(io, "writer", None)
            if writer is not None:
                writer.transport.abort()
                done = True
        return done
    except Exception:  # called from error paths: must not raise into mitmproxy's layer
        log.exception("pangate: could not reset the connections of a cut stream")
        return False


def stop_messages(flow) -> None:
    """End a websocket or TCP flow now: drop the message in hand and reset both sides.

    kill() does not stop mitmproxy's websocket or TCP relays, so the message
    being handled is dropped explicitly and the sockets are reset.
    """
    ws = getattr(flow, "websocket", None)
    if ws is not None and ws.messages:
        ws.messages[-1].drop()
    elif getattr(flow, "messages", None):
        flow.messages[-1].content = b""
    abort_connections(flow, flow.client_conn, flow.server_conn)
    if flow.killable:
        flow.kill()


def refuse(flow, status: int, error: str, reason: str, code: str, headers: dict | None = None) -> None:
    """Answer the client with pangate's JSON refusal; the request goes no further."""
    rid = request_id(flow)
    m = meta(flow)
    if (flow.request.method != "CONNECT" and flow.response is None and flow.request.timestamp_end is None
            and (flow.request.stream or may_stream(flow))):
        # mitmproxy cannot answer a request whose body it is going to stream
        # (it raises and drops the connection unanswered): cut it off instead.
        m["refused"] = {"status": status, "code": code, "reason": reason}
        log.warning("pangate refused request %s (%s) while its body was streaming in: connection reset", rid, code)
        if flow.killable:
            flow.kill()
        return
    body = json.dumps({"error": error, "reason": reason, "code": code, "request_id": rid}, indent=1)
    hdrs = {"Content-Type": "application/json", "Cache-Control": "no-store", "X-Pangate-Request-Id": rid}
    hdrs.update(headers or {})
    response = http.Response.make(status, body + "\n", hdrs)
    if flow.request.method == "CONNECT":
        # Clients often show only the status line of a refused CONNECT, so it says why.
        response.reason = f"{response.reason} ({code})"
    if flow.response is not None and flow.response.timestamp_end is None:
        # Refused between the upstream's headers and its body: mitmproxy would
        # still read that body into (or stream it under) our refusal, so it
        # is streamed through a sink that drops it and sends ours at the end.
        response.stream = DropUpstreamBody(response.raw_content)
    flow.response = response
    m["refused"] = {"status": status, "code": code, "reason": reason}
    if status >= 500 and code != "policy_unavailable":
        m.setdefault("error", reason)


class DropUpstreamBody:
    """A response stream that swallows the upstream body and emits `body` once, at its end."""

    def __init__(self, body: bytes):
        self.body = body

    def __call__(self, chunk: bytes) -> bytes:
        if chunk:
            return b""
        body, self.body = self.body, b""
        return body


def refused(flow) -> bool:
    """True when pangate has already answered this flow itself."""
    return "refused" in flow.metadata.get("pangate", {})


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
    if hook in MESSAGE_HOOKS or not isinstance(flow, http.HTTPFlow):
        meta(flow)["error"] = reason
        stop_messages(flow)
        return
    if hook != "error":
        refuse(flow, 502, "gateway_error", reason, "internal_error")
    meta(flow)["failed_hook"] = f"{addon}.{hook}"


def _wrap(name: str, fn):
    addon_name = None

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_guarded(self, flow, *args):
            try:
                return await fn(self, flow, *args)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                fail_flow(flow, name, e, addon_name or type(self).__name__)
        return async_guarded

    @functools.wraps(fn)
    def guarded(self, flow, *args):
        try:
            return fn(self, flow, *args)
        except Exception as e:
            fail_flow(flow, name, e, addon_name or type(self).__name__)
    return guarded


class Component:
    """Base of every pangate addon: flow hooks fail closed, and health is reported.

    `healthy` is False while the component cannot do its job (no policy, no
    audit sink); the Guard refuses traffic then.
    """

    healthy = True
    problem = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in FLOW_HOOKS:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_pangate_guarded", False):
                wrapped = _wrap(name, fn)
                wrapped._pangate_guarded = True
                setattr(cls, name, wrapped)


class Sentinel:
    """Refuses every flow while the pangate chain is not live. Survives script reloads."""

    name = "pangate-sentinel"

    def _check(self, flow) -> None:
        if STATE.live or flow.response is not None and refused(flow):
            return
        refuse(flow, 503, "unavailable", STATE.problem, "gateway_not_ready")

    def http_connect(self, flow):
        self._check(flow)

    def requestheaders(self, flow):
        self._check(flow)

    def request(self, flow):
        self._check(flow)

    def response(self, flow):
        if not STATE.live and not refused(flow):
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
