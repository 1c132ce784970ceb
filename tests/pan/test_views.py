"""Property tests of pan.views: a PAN written any way a client can read it is
found and masked in its own representation; harmless numbers stay byte-identical.

The oracle decodes bodies with the standard library (codecs, json, html,
urllib), independently of views.py.
"""

from __future__ import annotations

import html
import json
import os
import random
import unicodedata
import urllib.parse
from typing import Callable, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pangate.pan import kinds
from pangate.pan.engine import Masker
from pangate.pan.views import (UndecodableBody, contains_pan_views, mask_views, needs_views,
                               scan_views)
from pan_corpus import break_luhn, luhn_digit, make_pan, valid_pans

M = Masker()
# Moderate by default (the file runs in seconds); PANGATE_HYPOTHESIS_EXAMPLES=2000 for a deep run.
SETTINGS = settings(max_examples=int(os.environ.get("PANGATE_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Every brand and length of the IIN table, plus payment-MII numbers no row names.
UNKNOWN = [make_pan(p, n, random.Random(n)) for p, n in
           (("2900", 16), ("4999", 14), ("5999", 16), ("6900", 13), ("3300", 18), ("2123", 17))]
PANS = sorted({p for _, p in valid_pans()}) + UNKNOWN

SCRIPTS = {  # digit zero of scripts whose digits unicodedata.decimal knows
    "ascii": "0", "fullwidth": "\uff10", "arabic_indic": "\u0660", "devanagari": "\u0966",
    "bengali": "\u09e6", "thai": "\u0e50", "math_bold": "\U0001d7ce",
}
SEPARATORS = ["", " ", "-", ".", "_", "/", "\t", "\n", "\r\n", "  ", " - ", "\u00a0", "\u200b", "\u00ad",
              "\u2013", "\u3000", "\u202f", "\u2060"]
CHARSETS = ["utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"]
BOMS = {"utf-8": b"\xef\xbb\xbf", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff",
        "utf-32-le": b"\xff\xfe\x00\x00", "utf-32-be": b"\x00\x00\xfe\xff"}


def write_digits(number: str, script: str, mixed: bool, rng: random.Random) -> str:
    out = []
    for d in number:
        s = rng.choice(list(SCRIPTS)) if mixed else script
        out.append(chr(ord(SCRIPTS[s]) + int(d)))
    return "".join(out)


def layout(number: str, sep: str, size: int) -> str:
    if not sep:
        return number
    if size == 0 and len(number) == 15:
        parts = [number[:4], number[4:10], number[10:]]
    else:
        size = size or 4
        parts = [number[i:i + size] for i in range(0, len(number), size)]
    return sep.join(parts)


# ---- encodings: (apply to the value, inverse the oracle uses) ------------------------------------
def enc_json_u(text: str, rng) -> str:
    """JSON string body with some characters written as \\uXXXX (and \\/ for "/")."""
    out = []
    for ch in text:
        r = rng.random()
        if ch == "/" and r < 0.5:
            out.append("\\/")
        elif r < 0.6 and ord(ch) < 0x10000:
            out.append("\\u%04x" % ord(ch) if rng.random() < 0.5 else "\\u%04X" % ord(ch))
        else:
            out.append(json.dumps(ch, ensure_ascii=rng.random() < 0.5)[1:-1])
    return "".join(out)


def enc_html(text: str, rng) -> str:
    names = {"\u00a0": "&nbsp;", "\u00ad": "&shy;", "\u2013": "&ndash;", "/": "&sol;", ".": "&period;"}
    out = []
    for ch in text:
        r = rng.random()
        if ch in names and r < 0.4:
            out.append(names[ch])
        elif r < 0.45:
            out.append("&#%d;" % ord(ch))
        elif r < 0.7:
            out.append("&#x%x;" % ord(ch) if rng.random() < 0.5 else "&#X%04X;" % ord(ch))
        else:
            out.append(html.escape(ch))
    return "".join(out)


def enc_pct(text: str, rng) -> str:
    out = []
    for ch in text:
        if ch == " " and rng.random() < 0.5:
            out.append("+")
        elif rng.random() < 0.6 or not ch.isascii() or not ch.isalnum():
            out.append(urllib.parse.quote(ch, safe=""))
        else:
            out.append(ch)
    return "".join(out)


ENCODINGS = {
    "none": (lambda t, rng: t, lambda t: t),
    "json": (enc_json_u, lambda t: json.loads('"%s"' % t)),
    "html": (enc_html, html.unescape),
    "pct": (enc_pct, urllib.parse.unquote_plus),
    "pct_in_json": (lambda t, rng: enc_json_u(enc_pct(t, rng), rng),
                    lambda t: urllib.parse.unquote_plus(json.loads('"%s"' % t))),
    "html_in_pct": (lambda t, rng: enc_pct(enc_html(t, rng), rng),
                    lambda t: html.unescape(urllib.parse.unquote_plus(t))),
}


def content_type(encoding: str, charset_decl: str | None) -> str:
    mime = {"json": "application/json", "html": "text/html", "pct": "application/x-www-form-urlencoded",
            "pct_in_json": "application/json", "html_in_pct": "text/plain"}.get(encoding, "text/plain")
    return mime + ("; charset=%s" % charset_decl if charset_decl else "")


@st.composite
def written_pans(draw):
    """(pan, body bytes, content type, charset, decode(bytes) -> text the client reads)."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    pan = draw(st.sampled_from(PANS))
    script = draw(st.sampled_from(list(SCRIPTS)))
    mixed = draw(st.booleans())
    sep = draw(st.sampled_from(SEPARATORS))
    size = draw(st.sampled_from([4, 4, 0, 3, 5, 6]))
    encoding = draw(st.sampled_from(list(ENCODINGS)))
    charset = draw(st.sampled_from(CHARSETS))
    bom = draw(st.booleans()) and charset != "utf-8"
    declared = draw(st.sampled_from(["true", "none", "lying"]))
    if "." in sep or "\n" in sep:
        size = 4  # a "." or line-break window needs two gaps or more (scan.py)
    value = layout(write_digits(pan, script, mixed, rng), sep, size)
    enc, dec = ENCODINGS[encoding]
    if encoding in ("json", "pct_in_json"):
        text = '{"card": "%s", "n": 1}' % enc(value, rng)
        prefix = '{"card": "'
    else:
        text = "paid with " + enc(value, rng) + " today"
        prefix = "paid with "
    body = (BOMS[charset] if bom else b"") + text.encode(charset)
    decl = {"true": charset, "none": None,
            "lying": "utf-8" if charset != "utf-8" else "iso-8859-1"}[declared]

    def decode(data: bytes) -> str:
        t = data[len(BOMS[charset]) if bom else 0:].decode(charset)
        if encoding in ("json", "pct_in_json"):
            t = t[len(prefix):t.index('", "n"')]
        else:
            t = t[len(prefix):-len(" today")]
        return dec(t)

    start = len(BOMS[charset] if bom else b"") + len(prefix.encode(charset))
    return Case(pan, body, content_type(encoding, decl), decode, start, charset, bom)


class Case(NamedTuple):
    pan: str
    body: bytes
    ct: str
    decode: Callable[[bytes], str]
    start: int  # byte offset of the PAN's first digit
    charset: str
    bom: bool


def flat(text: str) -> str:
    """What a reader takes from the value: its digits, as ASCII, and the stars."""
    out = []
    for ch in text:
        d = unicodedata.decimal(ch, None)
        if d is not None:
            out.append(str(d))
        elif ch in "*\uff0a":
            out.append("*")
    return "".join(out)


class TestPansInEveryRepresentation:
    @SETTINGS
    @given(written_pans())
    def test_found_and_masked(self, case):
        pan, body, ct, decode, start = case[:5]
        before = decode(body)
        assert flat(before).replace("*", "") == pan  # the oracle reads the PAN
        sv = scan_views(body, ct)
        assert sv.undecodable is None
        pans = [f for f in sv.findings if f.kind in kinds.PAN_KINDS]
        assert pans and any(f.start == start for f in pans), (sv, body)
        assert contains_pan_views(body, ct)
        out, n = mask_views(body, ct, M)
        assert n >= 1
        after = decode(out)  # decodes the same way (the charset, JSON, %, &#)
        assert pan not in flat(after) and flat(after).count("*") >= len(pan) - 10
        # only digits changed, each into one mask character
        assert len(after) == len(before)
        for a, b in zip(before, after, strict=True):
            assert a == b or (unicodedata.decimal(a, None) is not None and b in "*\uff0a"), (before, after)

    @SETTINGS
    @given(written_pans())
    def test_masked_output_is_well_formed_and_final(self, case):
        out, _ = mask_views(case.body, case.ct, M)
        text = out[len(BOMS[case.charset]) if case.bom else 0:].decode(case.charset)  # strict
        if case.ct.startswith("application/json"):
            assert json.loads(text)["n"] == 1  # still valid JSON, same structure
        assert out.startswith(BOMS[case.charset]) == case.bom or case.charset == "utf-8"
        assert mask_views(out, case.ct, M) == (out, 0)  # nothing readable is left

    @SETTINGS
    @given(written_pans())
    def test_hmac_mode_keeps_the_form(self, case):
        h = Masker("hmac", hmac_key=b"k" * 32)
        out, n = mask_views(case.body, case.ct, h)
        after = case.decode(out)
        assert n >= 1 and case.pan not in flat(after) and len(after) == len(case.decode(case.body))


# ---- harmless numbers -----------------------------------------------------------------------------
def _luhn_valid(prefix: str, n: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(n - len(prefix) - 1))
    return body + luhn_digit(body)


@st.composite
def harmless(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    family = draw(st.sampled_from(["luhn_invalid", "ms_timestamp", "imei", "order_id", "datetime"]))
    if family == "luhn_invalid":
        number = break_luhn(draw(st.sampled_from(PANS)))
    elif family == "ms_timestamp":
        number = str(draw(st.integers(1_600_000_000_000, 1_999_999_999_999)))
    elif family == "imei":
        number = _luhn_valid(draw(st.sampled_from(["35", "86", "01", "49", "44", "99"])), 15, rng)
    elif family == "order_id":
        date = "20%02d%02d%02d" % (draw(st.integers(0, 39)), draw(st.integers(1, 12)), draw(st.integers(1, 28)))
        number = _luhn_valid(date, draw(st.sampled_from([13, 14, 16, 17, 18, 19])), rng)
    else:
        number = "20%02d%02d%02d%02d%02d%02d" % (draw(st.integers(0, 39)), draw(st.integers(1, 12)),
                                                 draw(st.integers(1, 28)), draw(st.integers(0, 23)),
                                                 draw(st.integers(0, 59)), draw(st.integers(0, 59)))
    script = draw(st.sampled_from(list(SCRIPTS)))
    encoding = draw(st.sampled_from(list(ENCODINGS)))
    charset = draw(st.sampled_from(CHARSETS))
    value = write_digits(number, script, False, rng)
    enc, _ = ENCODINGS[encoding]
    text = ('{"id": "%s"}' if encoding in ("json", "pct_in_json") else "id %s ok") % enc(value, rng)
    return number, text.encode(charset), content_type(encoding, charset)


class TestHarmlessNumbers:
    @SETTINGS
    @given(harmless())
    def test_stay_byte_identical(self, case):
        number, body, ct = case
        assert mask_views(body, ct, M) == (body, 0), number
        assert not contains_pan_views(body, ct)
        assert not [f for f in scan_views(body, ct).findings if f.kind in kinds.PAN_KINDS]


# ---- the common case: exactly the engine ----------------------------------------------------------
ASCII_SOUP = st.text(alphabet="0123456789 -./_\t\n abcxyz{}\":,;=*", max_size=300)


class TestPlainBodiesAreTheEngine:
    @SETTINGS
    @given(st.lists(st.one_of(ASCII_SOUP, st.sampled_from(PANS)), max_size=8))
    def test_no_views_means_masker_mask(self, parts):
        body = " ".join(parts).encode()
        ct = "application/json"
        assert not needs_views(body, ct)
        assert scan_views(body, ct).views == ("raw",)
        assert mask_views(body, ct, M) == M.mask(body)

    @SETTINGS
    @given(st.lists(st.one_of(ASCII_SOUP, st.sampled_from(PANS), st.sampled_from(["%41", "&#65;", "\\u0041"])),
                    max_size=8))
    def test_views_only_add_masking(self, parts):
        body = " ".join(parts).encode()
        want, k = M.mask(body)
        out, n = mask_views(body, "text/plain", M)
        assert len(out) == len(body) and n >= k  # ASCII escapes are rewritten with their own width
        assert all(out[i] != body[i] for i in range(len(body)) if want[i] != body[i])


# ---- confidence -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ct,body,code", [
    ("text/plain; charset=x-unknown", b"4111111111111111", "unknown_charset"),
    ("text/plain; charset=utf-7", b"+ADQ-111111111111111", "stateful_charset"),
    ("text/plain; charset=iso-2022-jp", b"abc", "stateful_charset"),
    ("text/plain; charset=utf-32-le", b"\xff\xff\xff\xff" * 4, "charset_roundtrip"),
    ("text/plain", b"%25252525252534", "escape_depth"),
])
def test_undecodable_bodies_are_reported(ct, body, code):
    sv = scan_views(body, ct)
    assert sv.undecodable == code
    with pytest.raises(UndecodableBody) as e:
        mask_views(body, ct, M)
    assert e.value.code == code and isinstance(e.value, ValueError)


def test_a_pan_is_reported_even_in_an_undecodable_body():
    body = b"card 4111111111111111"
    assert scan_views(body, "text/plain; charset=x-unknown").findings[0].kind == kinds.PAN
    assert contains_pan_views(body, "text/plain; charset=x-unknown")
    with pytest.raises(UndecodableBody):
        contains_pan_views(b"nothing", "text/plain; charset=x-unknown")


@pytest.mark.parametrize("body,ct,want", [
    (b'{"c": "\\u0034\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031\\u0031'
     b'\\u0031\\u0031\\u0031\\u0031"}', "application/json",
     b'{"c": "\\u0034\\u0031\\u0031\\u0031\\u0031\\u0031\\u002a\\u002a\\u002a\\u002a\\u002a\\u002a'
     b'\\u0031\\u0031\\u0031\\u0031"}'),
    (b"&#52;&#49;&#49;&#49;&#49;&#49;&#49;&#49;&#49;&#49;&#49;&#49;&#49;&#49;&#49;&#49;", "text/html",
     b"&#52;&#49;&#49;&#49;&#49;&#49;&#42;&#42;&#42;&#42;&#42;&#42;&#49;&#49;&#49;&#49;"),
    (b"c=%34%31%31%31%31%31%31%31%31%31%31%31%31%31%31%31", "text/plain",
     b"c=%34%31%31%31%31%31%2A%2A%2A%2A%2A%2A%31%31%31%31"),
    (b"4111&nbsp1111&nbsp1111&nbsp1111", "text/html", b"4111&nbsp11**&nbsp****&nbsp1111"),
    ("\uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11".encode(),
     "text/plain; charset=utf-8",
     "\uff14\uff11\uff11\uff11\uff11\uff11\uff0a\uff0a\uff0a\uff0a\uff0a\uff0a\uff11\uff11\uff11\uff11".encode()),
    ("card 4111 1111 1111 1111".encode("utf-16"), "text/plain",
     "card 4111 11** **** 1111".encode("utf-16")),
    ('{"cvc": "\\u0031\\u0032\\u0033"}'.encode(), "application/json", b'{"cvc": "\\u002a\\u002a\\u002a"}'),
])
def test_rewrites_keep_the_representation(body, ct, want):
    assert mask_views(body, ct, M) == (want, 1)


def test_findings_carry_original_spans_and_no_digits():
    body = "x " + "4111 1111 1111 1111" + " y"
    data = body.encode("utf-16-le")
    (f,) = [f for f in scan_views(data, "text/plain; charset=utf-16-le").findings]
    assert (f.start, f.end, f.kind, f.brand) == (4, 4 + 2 * 19, kinds.PAN, "visa")
    assert "4111" not in repr(f)
