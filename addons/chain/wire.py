"""What pangate does to a live connection when a message cannot simply be answered.

A refusal is normally a JSON response (context.refuse). These helpers are for
the cases where that is no longer possible: a body mitmproxy may stream, a
stream already under way, a websocket or TCP relay.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx
from mitmproxy.net.http.http1.read import expected_http_body_size
from mitmproxy.utils import human

log = logging.getLogger("pangate")


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
    return reset_connections(flow.client_conn.id, *conns)


def reset_connections(client_id: str, *conns, cancel: str | None = None) -> bool:
    """Reset connections of the client connection `client_id` (see abort_connections).

    A connection still being opened has no socket to reset yet: with `cancel`
    (a reason), its opening is cancelled instead, and mitmproxy reports the
    connection as failed with that reason.
    """
    try:
        server = ctx.master.addons.get("proxyserver")
        handler = getattr(server, "connections", {}).get(client_id) if server else None
        if handler is None:
            return False
        done = False
        for conn in conns:
            io = handler.transports.get(conn)
            writer = getattr(io, "writer", None)
            if writer is not None:
                writer.transport.abort()
                done = True
            elif cancel is not None and getattr(io, "handler", None) is not None:
                io.handler.cancel(cancel)
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
