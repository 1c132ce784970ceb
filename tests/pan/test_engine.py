"""Table-driven tests of the PAN/SAD engine (pangate.pan.engine)."""

from __future__ import annotations

import random
import re

import pytest

from pangate.pan.engine import (Masker, PanMatch, brand_of, contains_pan, find_pans, luhn_ok,
                         url_contains_pan)
from pan_corpus import (FALSE_POSITIVES, break_luhn, dense_csv_rows, in_formats, luhn_digit,
                        separator_styles, valid_pans)

M = Masker()
KEY = b"k" * 32
VALID = valid_pans()


def masked_ok(out: bytes, pan: str) -> bool:
    """The PAN's digits no longer appear and the bin6 / last4 survive."""
    flat = out.replace(b" ", b"").replace(b"-", b"")
    return pan.encode() not in flat and pan[-4:].encode() in flat


# ---- Luhn and issuer table ------------------------------------------------
def test_luhn_known_values():
    assert luhn_ok("4111111111111111") and luhn_ok(b"378282246310005")
    assert not luhn_ok("4111111111111112")
    assert not luhn_ok("") and not luhn_ok("4111-1111") and not luhn_ok("٤١١١")
    for body in ("411111111111111", "5500000000000", "6011000000000"):
        assert luhn_ok(body + luhn_digit(body))


@pytest.mark.parametrize("brand,pan", VALID, ids=[f"{b}-{len(p)}-{p[:6]}" for b, p in VALID])
def test_every_brand_and_length_is_masked(brand, pan):
    assert brand_of(pan) is not None
    out, n = M.mask(pan.encode())
    assert n == 1 and out == (pan[:6] + "*" * (len(pan) - 10) + pan[-4:]).encode()
    assert M.mask(break_luhn(pan).encode()) == (break_luhn(pan).encode(), 0)


@pytest.mark.parametrize("pan,brand", [
    ("4111111111111111", "visa"), ("4222222222222", "visa"), ("5500000000000004", "mastercard"),
    ("2223003122003222", "mastercard"), ("378282246310005", "amex"),
    ("6011000000000004", "discover"), ("6221260000000000", "discover"),
    ("6200000000000005", "unionpay"), ("36227206271667", "diners"), ("3530111333300000", "jcb"),
    ("2200000000000004", "mir"), ("122000000000003", "uatp"), ("5018000000009", "maestro"),
])
def test_brand_of(pan, brand):
    assert brand_of(pan) == brand


@pytest.mark.parametrize("digits", ["1732800000000", "411111111111", "37828224631000",
                                    "35693803564380", "9999999999999999"])
def test_brand_rejects_wrong_length_or_prefix(digits):
    assert brand_of(digits) is None


# ---- separators x container formats ---------------------------------------
CASES = [(b, p, s, f) for b, p in VALID[::7] for s in separator_styles(p)
         for f in in_formats("x")]


@pytest.mark.parametrize("brand,pan,style,fmt", CASES,
                         ids=[f"{b}{len(p)}-{s}-{f}" for b, p, s, f in CASES])
def test_separator_styles_in_every_format(brand, pan, style, fmt):
    value = separator_styles(pan)[style]
    doc = in_formats(value)[fmt].encode()
    out, n = M.mask(doc)
    assert n == 1 and masked_ok(out, pan) and len(out) == len(doc)
    assert out.replace(b"*", b"0") != doc  # something was replaced
    # separators stay where they were
    assert [i for i, c in enumerate(out) if c in b" -"] == [i for i, c in enumerate(doc) if c in b" -"]
    # Luhn-invalid: the whole number is not a PAN (a shorter group-aligned
    # window inside it may still legitimately be one).
    bad = in_formats(separator_styles(break_luhn(pan))[style])[fmt].encode()
    assert all(p.length < len(pan) for p in find_pans(bad))


def test_multiple_pans_and_neighbours():
    doc = b"a 4111111111111111 5500000000000004,378282246310005;6011000000000004|12 4111 1111 1111 1111"
    out, n = M.mask(doc)
    assert (out, n) == (b"a 411111******1111 550000******0004,378282*****0005;"
                        b"601100******0004|12 4111 11** **** 1111", 5)


@pytest.mark.parametrize("name", sorted(FALSE_POSITIVES))
def test_false_positive_families(name):
    doc = FALSE_POSITIVES[name].encode()
    assert M.mask(doc) == (doc, 0)
    assert not contains_pan(doc) and find_pans(doc) == []


def test_imei_is_luhn_valid_but_not_a_pan():
    assert luhn_ok("356938035643809") and brand_of("356938035643809") is None


# ---- modes -----------------------------------------------------------------
def test_modes():
    doc = b"pan 4111 1111 1111 1111 end"
    assert Masker("last4").mask(doc) == (b"pan **** **** **** 1111 end", 1)
    h1, n = Masker("hmac", hmac_key=KEY).mask(doc)
    h2, _ = Masker("hmac", hmac_key=KEY).mask(b"pan 4111-1111-1111-1111 end")
    h3, _ = Masker("hmac", hmac_key=b"z" * 32).mask(doc)
    assert n == 1 and len(h1) == len(doc) and h1.endswith(b" 1111 end")
    assert re.fullmatch(rb"pan [a-fA-F]{4} [a-fA-F]{4} [a-fA-F]{4} 1111 end", h1)
    assert h1.replace(b" ", b"") == h2.replace(b"-", b"").replace(b" ", b"")  # same PAN, same token
    assert h1 != h3  # keyed
    assert Masker("hmac", hmac_key=KEY).mask(h1) == (h1, 0)
    with pytest.raises(ValueError):
        Masker("hmac")
    with pytest.raises(ValueError):
        Masker("sha1")


# ---- SAD -------------------------------------------------------------------
SAD_DOCS = [
    ('{"cvc": "123"}', '{"cvc": "***"}'),
    ('{"cvc": 123}', '{"cvc": ***}'),
    ('{"card": {"CVV2":"4567", "x": 1}}', '{"card": {"CVV2":"****", "x": 1}}'),
    ("{'securityCode': '999'}", "{'securityCode': '***'}"),
    ('{"security_code" :\n  "999"}', '{"security_code" :\n  "***"}'),
    ("number=1&cvc=123&exp=12", "number=1&cvc=***&exp=12"),
    ("card[cvc]=123&x=1", "card[cvc]=***&x=1"),
    ("<cvv>123</cvv>", "<cvv>***</cvv>"),
    ('<ns:cid a="1">1234</ns:cid>', '<ns:cid a="1">****</ns:cid>'),
    ("CVV: 123\nname: x", "CVV: ***\nname: x"),
    ("pin=1234", "pin=****"),
    ('{"pinBlock": "0412AC89ABCDEF12"}', '{"pinBlock": "****************"}'),
    ('{"pin_block": "0412"}', '{"pin_block": "****"}'),
    ('{"card_csc": "12"}', '{"card_csc": "**"}'),
    ('{"track2": "x"}', '{"track2": "*"}'),
    ('{"track_data": "abc"}', '{"track_data": "***"}'),
]


@pytest.mark.parametrize("doc,want", SAD_DOCS)
def test_sad_fields(doc, want):
    out, n = M.mask_text(doc)
    assert (out, n) == (want, 1)
    assert M.mask_text(out) == (out, 0)  # idempotent, and not re-counted
    assert Masker(sad=False).mask_text(doc) == (doc, 0)


@pytest.mark.parametrize("doc", [
    '{"pinned": 123}', '{"spin": 1}', "cidr=10.0.0.0/8", '{"cvc_check": "pass"}',
    '{"pin_code": "560001"}', '{"shipping": 1}', "<track>12</track>", '{"cvv": null}',
    '{"type": "cvc", "n": 1}', "</cvv>\n  <x>1</x>",
])
def test_sad_no_false_positives(doc):
    assert M.mask_text(doc) == (doc, 0)


TRACKS = [
    "%B4111111111111111^DOE/JOHN^2512101000000000000000000000000?",
    ";4111111111111111=25121010000000000000?",
    "%b5500000000000004^SMITH/J^2601",
]


@pytest.mark.parametrize("track", TRACKS)
@pytest.mark.parametrize("fmt", ["text", "json_str", "xml", "csv"])
def test_track_data(track, fmt):
    doc = in_formats(track, key="data")[fmt]
    out, n = M.mask_text(doc)
    inner = track[1:-1] if track.endswith("?") else track[1:]
    assert n >= 1 and inner not in out and "*" * len(inner) in out and len(out) == len(doc)


def test_track2_equivalent_without_sentinels():
    assert M.mask(b"f35=4111111111111111=25121010000000000000 x") == (b"f35=" + b"*" * 37 + b" x", 1)


# ---- URL / percent-encoding ---------------------------------------------------
@pytest.mark.parametrize("url", [
    "https://h/p?card=4111111111111111&x=1",
    "https://h/p?card=4111+1111+1111+1111",
    "https://h/p?card=4111%201111%201111%201111",
    "https://h/p?card=4111%2D1111%2d1111%2D1111",
    "/p?card=%34%31%31%311111111111111111"[:-4],
    "q=4111111111111111",
])
def test_urls(url):
    out, n = M.mask_url(url)
    assert n == 1 and url_contains_pan(url) and not url_contains_pan(out)
    assert len(out) == len(url) and M.mask_url(out) == (out, 0)


def test_url_sad_and_non_ascii():
    assert M.mask_url("/p?card%5Bcvc%5D=123&ü=4111111111111111") == (
        "/p?card%5Bcvc%5D=***&ü=411111******1111", 2)
    assert M.mask_url("/p?ts=1732800000000&id=550e8400-e29b-41d4-a716-446655440000")[1] == 0
    assert not url_contains_pan("/p?x=%2041111111111111112")


# ---- API surface ---------------------------------------------------------------------
def test_find_pans_and_contains():
    doc = b"x 4111 1111 1111 1111 y 378282246310005"
    found = find_pans(doc)
    assert [(p.start, p.end, p.brand, p.masked, p.length) for p in found] == [
        (2, 21, "visa", "4111 11** **** 1111", 16), (24, 39, "amex", "378282*****0005", 15)]
    assert all(isinstance(p, PanMatch) and "4111111111111111" not in repr(p) for p in found)
    assert contains_pan(doc) and contains_pan(doc.decode()) and not contains_pan(b"nothing 1234")


def test_mask_text_unicode_and_length():
    text = "Zahlung €5 mit Karte 4111111111111111 — cvv: 123"
    out, n = M.mask_text(text)
    assert n == 2 and out == "Zahlung €5 mit Karte 411111******1111 — cvv: ***"


# ---- idempotence / never re-detected ------------------------------------------------------
@pytest.mark.parametrize("mode", ["bin6last4", "last4", "hmac"])
def test_idempotent_on_corpus(mode):
    m = Masker(mode, hmac_key=KEY)
    doc = "\n".join(r for r, _ in dense_csv_rows(300)).encode() + b"\n" + "\n".join(
        in_formats(separator_styles(p)[s])[f] for _, p in VALID[::5]
        for s in ("none", "spaces4", "dashes4") for f in ("text", "json_str", "form")).encode()
    out, n = m.mask(doc)
    assert n > 300 and len(out) == len(doc)
    assert m.mask(out) == (out, 0) and not contains_pan(out)


def test_masked_remnants_are_not_pans():
    # "411111******1111 2222 3333": the remnant after the stars touches "*".
    for doc in (b"1111 4111 1111 1111 1111 2222 3333", b"5612345678901234 2222 3333 44",
                b"123412341234567 8222 2333 3"):
        out, _ = M.mask(doc)
        assert M.mask(out) == (out, 0)


# ---- streaming ---------------------------------------------------------------------------
STREAM_SAMPLES = [
    b'{"card": "4111 1111 1111 1111", "cvc": "123", "ts": 1732800000000}',
    b"%B4111111111111111^DOE/JOHN^2512101000000000?;5500000000000004=2601101?",
    b"<cvv>123</cvv> 378282246310005 a4111111111111111 0.4111111111111111 " * 3,
    b"card[cvc]=987&pan=6011-0000-0000-0004&x=" + b"9" * 40,
]


@pytest.mark.parametrize("sample", STREAM_SAMPLES)
def test_stream_split_at_every_offset(sample):
    want = M.mask(sample)
    for cut in range(len(sample) + 1):
        sm = M.stream()
        got = sm.feed(sample[:cut]) + sm.feed(sample[cut:]) + sm.flush()
        assert (got, sm.count) == want, cut


@pytest.mark.parametrize("mode", ["bin6last4", "hmac"])
def test_stream_random_chunking(mode):
    rng = random.Random(4242)
    m = Masker(mode, hmac_key=KEY)
    parts = [r for r, _ in dense_csv_rows(400, rng)]
    parts += [d for d, _ in SAD_DOCS] + TRACKS + list(FALSE_POSITIVES.values())
    parts += ["x" * rng.randrange(0, 600) for _ in range(50)] + ["1 " * 200, "7" * 5000]
    rng.shuffle(parts)
    data = "\n".join(parts).encode()
    want = m.mask(data)
    for trial in range(40):
        sm, out, k = m.stream(), [], 0
        while k < len(data):
            step = rng.choice((1, 2, 7, 63, 255, 256, 257, 1000, 4096, 65536))
            out.append(sm.feed(data[k:k + step]))
            k += step
            assert len(sm._buf) - sm._base <= 512 + 19  # carry stays bounded
        out.append(sm.flush())
        assert (b"".join(out), sm.count) == want, trial


def test_stream_output_is_prompt():
    sm = M.stream()
    assert len(sm.feed(b"a" * 100_000)) >= 100_000 - 512


# ---- outbound DLP and reveal decisions (pangate.dlp.addon, pure) ---------------------------------------
def test_outbound_pan_where():
    from pangate.dlp.addon import outbound_pan

    assert outbound_pan("https://x/pay?card=4111%201111%201111%201111", []) == "url"
    assert outbound_pan("https://x/pay?card=4111+1111+1111+1111", []) == "url"
    assert outbound_pan("https://x/p", [("X-Card", "5500-0000-0000-0004")]) == "header X-Card"
    assert outbound_pan("https://x/p", [("Proxy-Authorization", "4111111111111111")]) is None
    assert outbound_pan("https://x/p", [], b'{"n": 378282246310005}') == "body"
    assert outbound_pan("https://x/p", [], b"c=4111+1111+1111+1111", "application/x-www-form-urlencoded") == "body"
    harmless = " ".join(FALSE_POSITIVES.values()).encode()
    assert outbound_pan("https://x/p?ts=1732800000000", [("X-Ts", "1732800000000")], harmless) is None


def test_reveal_and_card_destination_decisions():
    from pangate.dlp.addon import is_card_destination, reveal_for
    from pangate.policy.model import parse_policy

    p = parse_policy("""
version: 1
identities:
  a: {roles: [r], static_key: {sha256: "sha256:%s", reason: "test fixture only"}}
  b: {roles: [r], static_key: {sha256: "sha256:%s", reason: "test fixture only"}}
roles:
  r: {allow: [{destination: cards, methods: [GET], paths: ["/**"]}]}
destinations:
  cards: {host: cards.example, card_data: true}
  other: {host: other.example}
reveal:
  - {identity: a, destination: cards, justification: disputes need the full number}
""" % ("0" * 64, "1" * 64))
    assert reveal_for(p, "a", "cards").justification == "disputes need the full number"
    assert reveal_for(p, "a", "other") is None and reveal_for(p, "b", "cards") is None
    assert reveal_for(None, "a", "cards") is None and reveal_for(p, None, "cards") is None
    assert is_card_destination(p, "cards") and not is_card_destination(p, "other")
    assert not is_card_destination(p, None) and not is_card_destination(p, "nope")


# ---- the gateway's stream callable (pangate.masking.BodyStream), without a proxy ------------------
@pytest.mark.parametrize("enc", ["identity", "gzip", "deflate", "br", "zstd"])
@pytest.mark.parametrize("events", [False, True])
def test_body_stream_equals_whole_body_masking(enc, events):
    import gzip
    import types
    import zlib

    import brotli
    from backports import zstd

    from pangate.masking.addon import BodyStream
    from pangate.masking.decoders import Decoder as stream_decoder

    rng = random.Random(hash((enc, events)) & 0xFFFF)
    secret = b"sk_live_0123456789abcdef"
    parts = [r for r, _ in dense_csv_rows(60, rng)] + list(FALSE_POSITIVES.values())
    parts += ["data: card 4111 1111 1111 1111\n", "auth " + secret.decode(), '{"cvc": "123"}']
    rng.shuffle(parts)
    body = "\n\n".join(parts).encode()
    data = {"identity": lambda b: b, "gzip": gzip.compress, "deflate": zlib.compress,
            "br": brotli.compress, "zstd": zstd.compress}[enc](body)
    want = M.mask(body.replace(secret, b"*" * len(secret)))[0]
    for trial in range(5):
        flow = types.SimpleNamespace(metadata={})
        bs = BodyStream(flow, M, stream_decoder(enc), events=events, redact=(secret,))
        out, k = [], 0
        while k < len(data):
            step = rng.choice((1, 5, 17, 64, 333, 4096))
            out += bs(data[k:k + step])
            k += step
        out += bs(b"")
        assert not bs.failed and b"".join(out) == want, trial
        notes, n = flow.metadata["pangate"], M.mask(body)[1]
        assert (notes.get("pans_masked", 0), notes.get("sad_masked", 0)) == (n.pans, n.sad)


# ---- fast path (panscan._RUN regex, layout cache, blocks) vs the general path -------------------
def _random_doc(rng: random.Random) -> bytes:
    """Digit/separator soup around real PANs: every run shape the classifier sees."""
    pans = [p for _, p in VALID]
    atoms = [b";", b"%B", b"B", b"=", b"^", b"a", b"*", b".", b"+", b"\n", b'"', b"1732800000000",
             b"+1 415 555 2671", b'{"cvc": "1", "CID": 2}', b"shipping pin=12"]
    parts = []
    for _ in range(rng.randrange(1, 12)):
        r = rng.random()
        if r < 0.4:
            p = rng.choice(pans)
            if rng.random() < 0.6:
                k, sep = rng.choice((3, 4, 5, 6)), rng.choice((" ", "-", "  ", " -"))
                p = sep.join(p[i:i + k] for i in range(0, len(p), k))
            parts.append(p.encode())
        elif r < 0.7:
            parts.append(bytes(rng.choice(b"0123456789 -") for _ in range(rng.randrange(1, 40))))
        else:
            parts.append(rng.choice(atoms))
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(4))
def test_fast_run_classifier_equals_general_path(seed):
    from pangate.pan.scan import Scanner

    rng = random.Random(seed)
    for _ in range(600):
        doc = _random_doc(rng)
        for bin6 in (True, False):
            fast = Scanner(bin6, True).scan(doc, 0, len(doc))
            assert fast == Scanner(bin6, True, fast=False).scan(doc, 0, len(doc)), doc


def test_luhn_equals_per_digit_reference():
    rng = random.Random(5)
    for n in range(1, 24):
        for _ in range(50):
            d = "".join(rng.choice("0123456789") for _ in range(n))
            assert luhn_ok(d) == (luhn_digit(d[:-1]) == d[-1]), d


def test_uppercase_cid_is_sad():
    # SIG once folded "D" and "d" differently, so all-caps CID was missed.
    assert M.mask_text('{"CID": "1234", "Cid": "12"}') == ('{"CID": "****", "Cid": "**"}', 2)


@pytest.mark.parametrize("offset", [-40, -17, -12, -5, -1, 0, 3])
def test_findings_across_scan_block_boundary(offset):
    from pangate.pan.scan import _BLOCK

    pieces = [b"4111 1111 1111 1111", b"5500000000000004", b'"cvc": "123"', b";4111111111111111=2512101?"]
    for piece in pieces:
        pad = _BLOCK + offset
        doc = b"x" * pad + b" " + piece + b" " + b"y" * 100
        want = M.mask(b" " + piece + b" ")
        out, n = M.mask(doc)
        assert (out[pad:pad + len(piece) + 2], n) == want and out[:pad] == doc[:pad]


def test_block_walk_equals_one_block(monkeypatch):
    from pangate.pan import scan as panscan

    rng = random.Random(11)
    doc = b"\n".join(_random_doc(rng) for _ in range(6000)) + b" " + b"7 " * 20000
    assert len(doc) > 3 * panscan._BLOCK
    want = [Masker(mode, hmac_key=KEY).mask(doc) for mode in ("bin6last4", "hmac")]
    monkeypatch.setattr(panscan, "_BLOCK", 1 << 40)
    assert [Masker(mode, hmac_key=KEY).mask(doc) for mode in ("bin6last4", "hmac")] == want
    assert want[0][1] > 1000


def test_counts_know_their_sad_part():
    # pans_masked counts card numbers and sad_masked the rest: the engine's count carries both.
    m = Masker(sad=True)
    out, n = m.mask(b'{"pan": "4111111111111111", "cvv": "123", "track2": ";4111111111111111=2512101"}')
    assert (int(n), n.sad, n.pans) == (4, 3, 1)  # the track2 field: its field value and its track
    total = 0
    for chunk in (n, m.mask(b"5500000000000004")[1], 2):  # a plain int counts as card numbers
        total += chunk
    assert (int(total), total.sad) == (7, 3)
