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

from pangate.policy.decide import address_refusal

log = logging.getLogger("pangate")
RESOLVE_TIMEOUT = 5.0


class Refused(Exception):
    """The destination's addresses may not be reached; str() says why."""


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of host, IPv4 first, by the system resolver in a worker thread."""
    if is_ip_literal(host):
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


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
        return True
    except ValueError:
        return False
