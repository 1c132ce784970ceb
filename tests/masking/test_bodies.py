"""masking.bodies: a streamed body is masked like the buffered one, in every view, whatever the chunking."""

from __future__ import annotations

import codecs
import json
import random

import pytest

from pangate.credentials.forms import Redactor, echo_forms
from pangate.credentials.kinds import KINDS, PLACEHOLDER
from pangate.masking.bodies import HOLD, STEP, MaskStream, mask_decoded
from pangate.pan.engine import Masker
from pangate.pan.views import UndecodableBody, mask_views

M = Masker()
PAN = "4242424242424242"
HARMLESS = "ts 1732800000000 order 2024112800012345"


def _bodies():
    u = "".join(f"\\u{ord(d):04x}" for d in PAN)
    text = f"card {PAN} {HARMLESS}\n"
    return {
        "ascii": ("text/plain", text.encode()),
        "utf16le": ("text/plain; charset=utf-16le", text.encode("utf-16-le")),
        "utf16be_bom": ("text/plain; charset=utf-16", codecs.BOM_UTF16_BE + text.encode("utf-16-be")),
        "utf32_lies": ("text/plain; charset=utf-8", text.encode("utf-32-le")),
        "json_u": ("application/json", f'{{"card": "{u}", "n": "{HARMLESS}"}}'.encode()),
        "html_refs": ("text/html", ("<p>" + "".join(f"&#{ord(d)};" for d in PAN) + "</p>").encode()),
        "fullwidth": ("text/plain; charset=utf-8", "".join(chr(0xFF10 + int(d)) for d in PAN).encode()),
        "late_escape": ("application/json", (("x" * 5000) + f'"{u}"').encode()),
    }


def _stream(ms: MaskStream, data: bytes, rng: random.Random) -> bytes:
    out, k = [], 0
    while k < len(data):
        step = rng.choice((1, 2, 5, 17, 333, 4096))
        out.append(ms.feed(data[k:k + step]))
        k += step
    out.append(ms.flush())
    return b"".join(out)


@pytest.mark.parametrize("name", list(_bodies()))
def test_stream_equals_buffered_views(name):
    ctype, body = _bodies()[name]
    want, n = mask_views(body, ctype, M)
    assert PAN.encode() not in want and want != body
    rng = random.Random(name)
    for _ in range(4):
        ms = MaskStream(M, ctype)
        assert _stream(ms, body, rng) == want
        assert ms.total == n


def test_long_stream_is_masked_in_windows_and_each_pan_whole():
    # Many windows: PANs written as JSON escapes everywhere, also across every window cut.
    u = "".join(f"\\u{ord(d):04x}" for d in PAN)
    unit = f'{{"card": "{u}", "n": "{HARMLESS}"}}\n'.encode()
    body = unit * ((3 * (STEP + HOLD)) // len(unit) + 3)
    ms = MaskStream(M, "application/json")
    got = _stream(ms, body, random.Random(1))
    assert got == mask_views(body, "application/json", M)[0]
    assert ms.total == body.count(b'"card"')


def test_plain_ascii_stays_in_the_raw_stream():
    ms = MaskStream(M, "text/plain")
    ms.feed(f"card {PAN} ".encode() * 100)
    assert not ms.views


def test_keep_length_refuses_a_length_change():
    body = "".join(chr(0x0660 + int(d)) for d in PAN).encode()  # Arabic-Indic digits: 2 bytes each
    ms = MaskStream(M, "text/plain; charset=utf-8", keep_length=True)
    ms.feed(body)
    with pytest.raises(UndecodableBody) as e:
        ms.flush()
    assert e.value.code == "masked_length_changed"


def test_stream_redacts_secret_forms_split_anywhere():
    secret = "sk_live/Ab+Cd0123456789"
    r = Redactor(echo_forms(secret))
    for form in (secret, json.dumps(secret)[1:-1].replace("/", "\\/"), "".join(f"%{b:02x}" for b in secret.encode()),
                 "".join(f"\\u{ord(c):04x}" for c in secret)):
        body = f"prefix {form} {HARMLESS}\n".encode()
        for cut in range(1, len(body)):
            ms = MaskStream(M, "text/plain", r)
            out = ms.feed(body[:cut]) + ms.feed(body[cut:]) + ms.flush()
            assert form.encode() not in out and HARMLESS.encode() in out and ms.echoed, (form, cut)


def test_mask_decoded_reports_echo():
    r = Redactor(echo_forms("sk_live_abcdef"))
    out, n, echoed = mask_decoded(M, b"token sk_live_abcdef card " + PAN.encode(), "text/plain", r)
    assert echoed and n == 1 and b"sk_live" not in out


class _Req:
    def __init__(self, headers=None, query=None):
        self.headers, self.query = dict(headers or {}), dict(query or {})


class _Cred:
    def __init__(self, type, name=None):
        self.type, self.name = type, name


@pytest.mark.parametrize("kind,name,where", [("header", "X-Key", "X-Key"), ("bearer", None, "Authorization"),
                                             ("basic", None, "Authorization"), ("query", "key", None)])
def test_kind_table_injects_strips_and_scrubs(kind, name, where):
    k, cred = KINDS[kind], _Cred(kind, name)
    req = _Req({"Authorization": "client's", "Cookie": "c", "X-Key": "client's"}, {"key": "client's"})
    k.strip(req, cred)
    assert "Authorization" not in req.headers and "Cookie" not in req.headers
    k.inject(req, cred, "user:s3cr3t/+x")
    sent = req.headers.get(where) if where else req.query["key"]
    assert sent == k.wire_value("user:s3cr3t/+x")
    assert sent in k.echo_forms("user:s3cr3t/+x") or kind == "query"
    k.scrub(req, cred)
    assert (req.headers.get(where) if where else req.query["key"]) == PLACEHOLDER


def test_basic_echo_forms_cover_the_password_alone():
    forms = KINDS["basic"].echo_forms("lp_user:pw/Zx+0123456789")
    assert "pw/Zx+0123456789" in forms and "lp_user:pw/Zx+0123456789" in forms
    assert KINDS["mtls"].echo_forms("anything") == ()


def test_settings_range_is_strip_by_default_or_refuse():
    from pangate.policy.errors import PolicyError
    from pangate.policy.model import parse_policy
    assert parse_policy("version: 1\n").range == "strip"
    assert parse_policy("version: 1\nsettings: {range: refuse}\n").range == "refuse"
    with pytest.raises(PolicyError):
        parse_policy("version: 1\nsettings: {range: allow}\n")
