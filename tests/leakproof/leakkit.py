"""Shared pieces of the adversarial leak suite: policy, card numbers, clients, at-rest checks.

Not a conftest on purpose: tests/conftest.py is imported as `conftest` by other
suites, and a second conftest module would shadow it. Test modules load this
as a plugin (`pytest_plugins = ["leakkit"]`); its fixtures are module-scoped,
so each module gets one gateway.

The card numbers are written out (not generated at run time) because
tests/leakscan.py learns which numbers to look for by reading the test sources;
`test_card_numbers_are_luhn_valid` proves each one was built with luhn_digit.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path

import pytest
import requests
from mitmproxy.net import encoding

import leakscan
from harness import open_tunnel
from pan_upstream import PanUpstream

# Brands the tests rotate through: each variant of a class gets the next one.
BRANDS = {
    "visa": "4242424242424242",
    "mastercard": "5555555555554444",
    "amex": "378282246310005",
    "discover": "6011111111111117",
    "jcb": "3566002020360505",
    "unionpay": "6200000000000005",
    "maestro6703": "6703232332113253",   # make_pan("6703", 16), Bancontact/Maestro
    "jcb3088": "3088679991858705",       # make_pan("3088", 16), legacy JCB 3088-3094
}
# Issuer ranges no IIN table row names (class 3), built with make_pan(prefix, n).
RANGE_PANS = {
    "maestro6703_16": "6703232332113253",
    "maestro6703_19": "6703072914289859843",
    "jcb3088": "3088679991858705",
    "jcb3094": "3094442606952476",
    "mii2_2999": "2999128656238241",
    "mii3_3333": "3333663892847036",
    "mii5_5900": "5900519189583510",
    "mii6_6600": "6600579173489737",
    "mii6_6900": "6900734129317030",
}
ALL_PANS = frozenset(BRANDS.values()) | frozenset(RANGE_PANS.values())
# Harmless numbers that must come back byte-identical.
HARMLESS = "ts 1732800000000 order 2024112800012345 imei 356938035643809"

# Credentials the gateway injects; both contain `/` and `+` so every echo form differs.
BEARER = "sk_live/Ab+Cd" + secrets.token_hex(10) + "/Qz+" + secrets.token_hex(4)
BASIC_USER = "lp_user"
BASIC_PASS = "pw/Zx+" + secrets.token_hex(10)
BASIC = f"{BASIC_USER}:{BASIC_PASS}"
SECRETS = [BEARER, BASIC, BASIC_PASS]

POLICY = """
version: 1
issuers:
  pangate: {{type: pangate, public_key_file: {pubkey}}}
identities:
  app: {{issuer: pangate, roles: [app]}}
roles:
  app:
    allow:
      - {{destination: cards, methods: [GET, POST, PUT], paths: ["/c/**"]}}
      - {{destination: cardsb, methods: [GET, POST, PUT], paths: ["/c/**"]}}
      - {{destination: plain, methods: [GET, POST, PUT], paths: ["/p/**"]}}
destinations:
  cards:
    host: localhost
    port: {port}
    card_data: true
    addresses: [127.0.0.1/32]
    credential: {{type: bearer, env: LP_BEARER}}
  cardsb:
    host: localhost
    port: {port2}
    card_data: true
    addresses: [127.0.0.1/32]
    credential: {{type: basic, env: LP_BASIC}}
  plain: {{host: 127.0.0.1, port: {port}, addresses: [127.0.0.1/32]}}
"""


def upstream_fixture(name: str):
    def _up(pki):
        server = PanUpstream(pki.cert, pki.key)
        yield server
        server.close()
    return pytest.fixture(scope="module", name=name)(_up)


up = upstream_fixture("up")
up2 = upstream_fixture("up2")  # the basic-credential card destination


@pytest.fixture(scope="module")
def lgw(start_gateway, token_key, up, up2):
    """One gateway per module; recordings on (var/recordings, the default); bodies of unknown
    length or over 1 MB streamed, as in production."""
    return start_gateway(policy=POLICY.format(pubkey=token_key + ".pub", port=up.port, port2=up2.port),
                         env={"LP_BEARER": BEARER, "LP_BASIC": BASIC},
                         options={"stream_large_bodies": "1m"})


def cards(up, path: str) -> str:
    return f"https://localhost:{up.port}/c{path}"


def plain(up, path: str) -> str:
    return f"https://127.0.0.1:{up.port}/p{path}"


def brand_pan(k: int) -> str:
    return list(BRANDS.values())[k % len(BRANDS)]


def group(pan: str, sep: str) -> str:
    sizes = (4, 6, 5) if len(pan) == 15 else (4, 4, 4, 4, 3)
    out, k = [], 0
    for n in sizes:
        if k < len(pan):
            out.append(pan[k:k + n])
            k += n
    return sep.join(out)


def raw_body(r: requests.Response) -> bytes:
    """The body bytes as they came off the wire (transfer-decoded, Content-Encoding undone by
    mitmproxy's own decoder): what a client that does not guess charsets would read."""
    data = r.raw.read(decode_content=False)
    return encoding.decode(data, r.headers.get("content-encoding", "identity"))


def proxy_auth(token: str, identity: str = "app") -> str:
    return "Basic " + base64.b64encode(f"{identity}:{token}".encode()).decode()


def tunnel(gw, mint, host: str, port: int, server_hostname: str | None = None):
    return open_tunnel(gw, f"{host}:{port}", proxy_auth(mint("app")), server_hostname)


def read_http_response(sock, timeout: float = 15) -> bytes:
    """Everything the gateway sends on a raw socket until it closes or a response is complete
    (Content-Length or chunked with its trailer section)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        if b"\r\n\r\n" in data:
            head, rest = data.split(b"\r\n\r\n", 1)
            h = head.lower()
            if b"transfer-encoding: chunked" in h:
                if rest.endswith(b"\r\n\r\n") and (b"\r\n0\r\n" in b"\r\n" + rest):
                    return data
            else:
                for line in h.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        if len(rest) >= int(line.split(b":")[1]):
                            return data
        try:
            part = sock.recv(65536)
        except (OSError, TimeoutError):
            return data
        if not part:
            return data
        data += part


# ---- refusals ---------------------------------------------------------------------------------
def assert_refusal(status: int, body: bytes, code: str | None, statuses=(403,)) -> dict:
    """pangate's JSON refusal: the status, the four fields, and no card number in it."""
    assert status in statuses, (status, body[:300])
    doc = json.loads(body)
    assert {"error", "reason", "code", "request_id"} <= set(doc), doc
    if code:
        assert doc["code"] == code, doc
    assert not leakscan.pans_in(body), doc
    return doc


def upstream_paths(up, prefix: str) -> list[str]:
    return [r.path for r in up.received if r.path.startswith(prefix)]


# ---- at rest ----------------------------------------------------------------------------------
class Rest:
    """What a gateway holds at rest, from a mark on: leakscan's scan over what was written
    (gateway output lines, appended bytes of the audit trail, recordings and any other file)
    after the mark. A shared gateway stays usable across tests: one leak is reported by the
    test that caused it, not by every test after it."""

    def __init__(self, gw):
        self.gw = gw
        self.line = gw.log.mark()
        self.sizes = {p: p.stat().st_size for p in leakscan.at_rest_files(gw.workdir)}

    def new_bytes(self) -> list[tuple[str, bytes]]:
        out = [("gateway output", "\n".join(self.gw.log.lines[self.line:]).encode("utf-8", "surrogatepass"))]
        for p in leakscan.at_rest_files(self.gw.workdir):
            data = p.read_bytes()
            off = self.sizes.get(p, 0)
            if len(data) < off:  # rewritten: scan it all
                off = 0
            out.append((str(p.relative_to(self.gw.workdir)), data[off:]))
        return out

    def leaks(self, secrets=()) -> list[str]:
        out = []
        for name, data in self.new_bytes():
            for pan in sorted(leakscan.pans_in(data) | leakscan.pans_in(data, ALL_PANS)):
                out.append(f"{name}: card number {pan[:6]}…{pan[-4:]}")
            for s in sorted(leakscan.secrets_in(data, list(secrets))):
                out.append(f"{name}: secret {s[:7]}…")
        return out

    def settle(self, request_id: str | None, recorded: bool = True, timeout: float = 5.0) -> list[dict]:
        """Wait for the request's audit record and (when recorded) its recording."""
        recs = self.gw.records_for(request_id) if request_id else []
        if recorded and request_id:
            wait_recorded(self.gw, request_id, timeout)
        return recs

    def assert_clean(self, request_id: str | None = None, secrets=SECRETS, recorded: bool = True):
        recs = self.settle(request_id, recorded)
        if request_id:
            assert recs, f"no audit record for {request_id}"
        found = self.leaks(secrets)
        assert not found, "at rest:\n" + "\n".join(found)

    # As a context manager the at-rest check runs even when an earlier assertion failed, so a
    # test reports every leak it caused, and its records land before the next test's mark.
    rid: str | list | None = None
    secrets = SECRETS

    def __enter__(self) -> "Rest":
        return self

    def __exit__(self, et, ev, tb):
        problems = [f"{et.__name__}: {ev}"] if et is not None else []
        for rid in self.rid if isinstance(self.rid, list) else [self.rid]:
            try:
                recs = self.settle(rid)
            except TimeoutError:
                recs = []
            if rid and not recs:
                problems.append(f"no audit record for {rid}")
        found = self.leaks(self.secrets)
        if found:
            problems.append("at rest:\n" + "\n".join(found))
        if problems:
            raise AssertionError("\n".join(problems)) from ev
        return False


def recordings_bytes(gw) -> bytes:
    d = Path(gw.workdir) / "var" / "recordings"
    return b"".join(p.read_bytes() for p in sorted(d.glob("*.mitm*"))) if d.is_dir() else b""


def wait_recorded(gw, needle: str, timeout: float = 5.0) -> bool:
    """Recordings are written by a thread in groups: wait until `needle` (a request id) is in them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle.encode() in recordings_bytes(gw):
            return True
        time.sleep(0.05)
    return False


def raw_request(gw, mint, host: str, port: int, method: str, target: str, headers=(), body: bytes = b"",
                server_hostname: str | None = None, host_header: str | None = None):
    """One request written byte for byte through a CONNECT tunnel (repeated headers, odd names,
    any body): returns (status, head bytes, body bytes); status 0 when the gateway closed."""
    tls = tunnel(gw, mint, host, port, server_hostname)
    head = f"{method} {target} HTTP/1.1\r\nHost: {host_header or f'{host}:{port}'}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    tls.sendall(head.encode("utf-8") + body)
    data = read_http_response(tls)
    tls.close()
    if b"\r\n\r\n" not in data:
        return 0, data, b""
    h, b = data.split(b"\r\n\r\n", 1)
    return int(h.split(b" ", 2)[1]), h, b


def ws_exchange(gw, mint, up, host: str, path: str, server_script=(), client_events=(), timeout: float = 5):
    """A websocket through the gateway: the upstream plays `server_script` after the handshake,
    the client then sends `client_events` (wsproto events) and answers pings and the close.
    Returns (raw bytes the client received, events it parsed)."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Ping, Request

    from pan_upstream import ws_script_handler

    up.routes[path] = ws_script_handler(up, list(server_script))
    tls = tunnel(gw, mint, host, up.port)
    ws = WSConnection(ConnectionType.CLIENT)
    tls.sendall(ws.send(Request(host=f"{host}:{up.port}", target=path)))
    tls.settimeout(timeout)
    wire, events, sent = b"", [], False
    try:
        while True:
            data = tls.recv(65536)
            if not data:
                break
            wire += data
            ws.receive_data(data)
            for ev in ws.events():
                events.append(ev)
                if isinstance(ev, Ping):
                    tls.sendall(ws.send(ev.response()))
                elif isinstance(ev, CloseConnection):
                    try:
                        tls.sendall(ws.send(ev.response()))
                    except Exception:
                        pass
                elif isinstance(ev, AcceptConnection) and not sent and not server_script:
                    sent = True
                    for c in client_events:
                        tls.sendall(ws.send(c))
    except (OSError, TimeoutError):
        pass
    finally:
        tls.close()
    return wire, events


def head_rid(head: bytes) -> str | None:
    """The X-Pangate-Request-Id of a raw response head."""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"x-pangate-request-id:"):
            return line.split(b":", 1)[1].strip().decode()
    return None
