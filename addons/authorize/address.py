"""Where a destination really is: its resolved address is checked, and connected to.

A host name in the policy says nothing about where it points: DNS can answer
with 127.0.0.1, 10.x or the cloud metadata service, and answer differently on
the next lookup (DNS rebinding). So pangate resolves the name itself, off the
event loop, checks every answer with `decide.address_refusal`, and pins the
server connection to an address it checked: mitmproxy then connects to exactly
that address, never to a second lookup's answer.

The check runs twice by design: in the flow hooks, so the workload gets a
clear 403 JSON refusal, and in `server_connect`, the point every upstream
connection passes, so nothing reaches an unchecked address even if a flow hook
was skipped or the name re-resolved differently in between.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import OrderedDict

from mitmproxy import connection

from pangate.common import events
from pangate.policy.decide import address_refusal, destinations_for
from pangate.chain.failsafe import Component, meta, refuse, refused

log = logging.getLogger("pangate")
RESOLVE_TIMEOUT = 5.0


class Refused(Exception):
    """The destination's addresses may not be reached; str() says why."""


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of host, IPv4 first, by the system resolver in a worker thread."""
    if _literal(host):
        return [host.strip("[]")]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as e:
        raise Refused(f"{host} does not resolve ({type(e).__name__})") from None
    addrs = list(dict.fromkeys(info[4][0] for info in infos))
    # IPv4 first: localhost often resolves to ::1 first while services bind
    # 127.0.0.1 only, and once pinned there is no fallback to the next address.
    return sorted(addrs, key=lambda a: ":" in a)


def checked_address(host: str, dests: list, addrs: list[str]) -> str:
    """The first address that passes the check; Refused when none does.

    Refused answers are skipped, never connected to: a record set mixing a
    public and a private address connects to the public one only.
    """
    if not dests:
        raise Refused(f"{host} is not a destination in the policy")
    problems = []
    for addr in addrs:
        problem = address_refusal(host, dests, resolved=addr)
        if problem is None:
            return addr
        problems.append(problem)
    if not problems:
        raise Refused(f"{host} has no address")
    raise Refused("; ".join(dict.fromkeys(problems)) + " (name the network in the destination's addresses to allow it)")


class AddressGuard(Component):
    """Refuses destinations that resolve to forbidden addresses; pins connections to checked ones."""

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
            events.emit("address_refused", request_id=meta(flow).get("request_id"), host=req.host,
                        port=req.port, reason=str(e))
            return
        meta(flow)["address"] = addr

    async def http_connect(self, flow):
        if not refused(flow):
            await self._check_flow(flow)

    async def requestheaders(self, flow):
        # Inside a tunnel the connection was checked and pinned at CONNECT.
        if not refused(flow) and not flow.server_conn.connected:
            await self._check_flow(flow)

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
        if server.sni is None and not _literal(host):
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
        if reason is not None and not refused(flow):
            refuse(flow, 403, "forbidden", reason, "address_not_allowed")
            events.emit("address_refused", request_id=meta(flow).get("request_id"), host=flow.request.host,
                        port=flow.request.port, reason=reason)

    def error(self, flow):
        self._refusals.pop(flow.server_conn.id, None)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
        return True
    except ValueError:
        return False
