"""Credential echo: the secret the gateway injects never reaches the client or comes to rest.

The card-data upstreams echo the Authorization value they received in every
spelling a client could decode: JSON-escaped (`\\/`), base64 (of the token, and
of `user:pass` for basic), percent-encoded, lower- and upper-cased, and split
across the chunks of a streamed response at several offsets. The bearer secret
and the basic password both contain `/` and `+`, so each spelling differs from
the raw value. leakscan.secrets_in checks the client's bytes; the at-rest scan
checks the audit trail, the gateway's output and the recordings.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

import leakscan
from leakkit import BASIC, BASIC_PASS, BEARER, HARMLESS, SECRETS, Rest, raw_body
from pan_upstream import send, send_chunked

pytest_plugins = ["leakkit"]  # fixtures up, up2, lgw: one gateway for this module


def _secret_of(auth: str) -> str:
    """What the upstream was given, as its server code would read it."""
    kind, _, value = auth.partition(" ")
    return base64.b64decode(value).decode() if kind.lower() == "basic" else value


FORMS = {
    "raw": lambda s: s,
    "json_escaped": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    "json_u_escaped": lambda s: "".join(f"\\u{ord(c):04x}" for c in s),
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "base64_unpadded": lambda s: base64.b64encode(s.encode()).decode().rstrip("="),
    "base64url": lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
    "percent": lambda s: quote(s, safe=""),
    "percent_lower_hex": lambda s: "".join(f"%{b:02x}" for b in s.encode()),
    "lower": lambda s: s.lower(),
    "upper": lambda s: s.upper(),
    "password_only": lambda s: s.split(":", 1)[-1],
    "password_base64": lambda s: base64.b64encode(s.split(":", 1)[-1].encode()).decode(),
}


def _dest(cred, up, up2):
    return up if cred == "bearer" else up2


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("cred", ["bearer", "basic"])
def test_echoed_credential_never_reaches_the_client(lgw, up, up2, mint, cred, form):
    if form.startswith("password") and cred == "bearer":
        pytest.skip("a bearer token has no password part")
    server = _dest(cred, up, up2)
    path = f"/c/echo/{cred}/{form}"
    seen = []

    def echo(req, s):
        secret = _secret_of(req.headers.get("authorization", ""))
        seen.append(secret)
        body = json.dumps({"note": HARMLESS})[:-1].encode() + b', "got": "' + FORMS[form](secret).encode() + b'"}'
        send(s, 200, body, {"Content-Type": "application/json"})

    server.routes[path] = echo
    with Rest(lgw) as rest:
        r = lgw.session("app", mint("app")).get(f"https://localhost:{server.port}{path}", stream=True)
        rest.rid = r.headers["X-Pangate-Request-Id"]
        got = raw_body(r)
        assert seen and seen[0] in (BEARER, BASIC), "the upstream did not get the injected credential"
        found = leakscan.secrets_in(got, SECRETS) | ({"raw"} if FORMS[form](seen[0]).encode() in got else set())
        assert not found, f"the client received the credential ({form}): {got[:300]!r}"
        assert r.status_code in (200, 502), r.status_code
        if r.status_code == 200:
            assert HARMLESS.encode() in got


OFFSETS = [1, 2, 5, 8, 13, 21, 30]


@pytest.mark.parametrize("form", ["raw", "json_escaped", "base64"])
@pytest.mark.parametrize("offset", OFFSETS)
def test_echo_split_across_chunks(lgw, up, mint, offset, form):
    """A streamed (chunked) response that cuts the echoed secret at `offset`, then one byte per
    chunk for the rest: the streamed redaction must hold state across chunks."""
    path = f"/c/echo-split/{form}/{offset}"

    def echo(req, s):
        text = FORMS[form](_secret_of(req.headers.get("authorization", ""))).encode()
        body = b"prefix " + text + b" " + HARMLESS.encode() + b"\n"
        cut = len(b"prefix ") + min(offset, len(text) - 1)
        tail = body[cut:cut + 12]
        chunks = [body[:cut]] + [tail[k:k + 1] for k in range(len(tail))] + [body[cut + 12:]]
        send_chunked(s, chunks, {"Content-Type": "text/plain"})

    up.routes[path] = echo
    with Rest(lgw) as rest:
        r = lgw.session("app", mint("app")).get(f"https://localhost:{up.port}{path}", stream=True)
        rest.rid = r.headers["X-Pangate-Request-Id"]
        got = raw_body(r)
        found = leakscan.secrets_in(got, SECRETS)
        assert not found, f"the client received the credential split at {offset}: {got[:200]!r}"
        assert r.status_code == 200 and HARMLESS.encode() in got


def test_secrets_have_the_characters_that_make_forms_differ():
    for s in (BEARER, BASIC_PASS):
        assert "/" in s and "+" in s
        assert quote(s, safe="") != s and json.dumps(s)[1:-1].replace("/", "\\/") != s
