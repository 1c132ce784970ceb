"""Differential tests: the native PAN engine (C) against the Python reference.

Every test builds the same Masker twice, engine="native" and engine="python",
and requires byte-identical output and the same count (and, for the scan, the
same findings in the same order) on: random bytes, random documents made of
PANs in every separator style and carrier, SAD fields and track data in every
syntax the rules know, near-misses of each rule, findings cut by the buffer
ends and by scan ranges, stream chunkings, and all modes (bin6last4, last4,
hmac) with SAD on and off and strict_brand on and off.

Skipped (not failed) when the native engine is not built; scripts/test
builds it, and test_engine_startup.py::test_native_engine_is_built fails when
PANGATE_REQUIRE_NATIVE=1 (.ci/run) and the process is not on the native engine.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pangate.pan import engine, native
from pangate.pan.engine import Masker
from pan_corpus import (FALSE_POSITIVES, break_luhn, carrier_docs, corpus_pans, in_formats, separator_styles,
                        valid_pans)

pytestmark = pytest.mark.skipif(native._MOD is None, reason=f"native PAN engine not built: {native._WHY}")

KEY = b"differential-test-hmac-key-0123456789"
CONFIGS = [(mode, sad, strict) for mode in ("bin6last4", "last4", "hmac") for sad in (True, False)
           for strict in (False, True)]
# For the big inputs: the default masker, hmac with strict brands, last4 without SAD.
FEW = [("bin6last4", True, False), ("hmac", True, True), ("last4", False, False)]
PAIRS = {c: (Masker(c[0], KEY if c[0] == "hmac" else None, sad=c[1], strict_brand=c[2], engine="native"),
             Masker(c[0], KEY if c[0] == "hmac" else None, sad=c[1], strict_brand=c[2], engine="python"))
         for c in CONFIGS} if native._MOD is not None else {}
SETTINGS = settings(max_examples=int(os.environ.get("PANGATE_DIFF_EXAMPLES", "100")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def same(data: bytes, configs=CONFIGS) -> None:
    for c in configs:
        nat, ref = PAIRS[c]
        got, want = nat.mask(data), ref.mask(data)
        assert got == want, (c, data[:200])
        assert got[1].sad == want[1].sad, (c, "SAD part of the count", data[:200])
        assert nat._scan(data, 0, len(data)) == ref._pyscan(data, 0, len(data)), c


# ---- document generator ---------------------------------------------------------------------
PANS = [p for _b, p in valid_pans(random.Random(5))]
SEPS = [" ", "-", ".", "_", "/", "\t", "\r", "\n", "\\", " \\ ", "  ", " - ", "\r\n", "..", " .", "-\n", "    "]
SAD_KEYS = ["cvv", "CVV", "cvc", "cvv2", "cvc2", "cid", "CID", "csc", "securityCode", "security_code",
            "card_cvv", "cardCvv", "cardCVV", "pin", "PIN", "pinBlock", "pin_block", "track1", "track2",
            "trackData", "track_2_data", "track2Data", "spin", "shipping", "cvvv", "xcvv", "Cvv", "cardCvc",
            "card[cvc]", "card%5Bcvc%5D", "security", "track", "cvv_code", "ns:cvv", "a" * 47 + "cvv",
            "x" * 50 + "cvv", "CvvCode", "CVVCode", "tracking", "pinned", "c-i-d", "cid-"]
SAD_GLUE = ['": "', '":"', "=", ": ", ":\n  ", "' : '", '"=\t', ">", " a='1'>", ":", " : ", "\t=\t",
            '"]=', "%5D=", ":\r\n    ", "        : ", ":" + " " * 9, "\n", '": \'', '" :"']
SAD_VALUES = ["123", "1234", "***", "null", "true", "False", "12 34", "a\\\"b", "1\\\n2", "x" * 140, "",
              "12;3", "4111111111111111", "</x>", "<", "'1'", "\"", "1,2", "ab(c)"]
NOISE = ["a", "Z", "*", "+", ".", "-", "0", "9", "=", ";", "^", "?", "%", "B", "b", "<", ">", "\"", "'", ":",
         "\n", " ", "x1", "0x", "id ", "+1 415 555 2671", "1732800000000", "2024-11-28", "3.14", "é", "\x00",
         "\xff", "{", "}", "[", "]", ",", "&", "\\", "/", "_", "ab12", "ABCDEF", "12345678-1234-",
         "ord_00aa11"]


def styled_pan(draw) -> str:
    pan = draw(st.sampled_from(PANS))
    if draw(st.integers(0, 3)) == 0:
        pan = break_luhn(pan)
    how = draw(st.integers(0, 3))
    if how == 0:
        return pan
    if how == 1:
        return draw(st.sampled_from(list(separator_styles(pan).values())))
    # random grouping with random separators (1-4 chars, so gaps over MAX_GAP appear too)
    parts, k = [], 0
    while k < len(pan):
        g = draw(st.integers(1, 7))
        parts.append(pan[k:k + g])
        k += g
    out = parts[0]
    for p in parts[1:]:
        out += draw(st.sampled_from(SEPS)) + p
    return out


def track(draw) -> str:
    pan = draw(st.sampled_from(PANS))
    kind = draw(st.integers(0, 6))
    yymm = draw(st.sampled_from(["2512", "251", "25121", "0000"]))
    disc = draw(st.sampled_from(["", "101", "1" * 24, "1" * 25, "000123", "x?", "9" * 59, "9" * 61, "a,b"]))
    end = draw(st.sampled_from(["", "?", "??", "\"", "\n"]))
    if kind == 0:
        return f";{pan}={yymm}{disc}{end}"
    if kind == 1:
        name = draw(st.sampled_from(["DOE/JANE", "X", "A" * 26, "A" * 27, "J^D", "JANE DOE", "a?b", "AB"]))
        return f"%{draw(st.sampled_from('Bb'))}{pan}^{name}^{yymm}{disc}{end}"
    if kind == 2:  # ISO 8583 field 35 style: 7 to 32 digits after "="
        return f"{pan}=" + "1" * draw(st.sampled_from([6, 7, 8, 31, 32, 33])) + end
    if kind == 3:
        return f"B{pan}^X"
    if kind == 4:
        return f";{pan}{draw(st.sampled_from(['', ' ', '-1']))}={yymm}"
    if kind == 5:
        return f";{pan}0000=2512"  # PAN digits over 19
    return f"%B{pan[:draw(st.integers(5, len(pan)))]}^NAME^2512"


def near(draw, limit: int) -> int:
    """A count at, just under or just over one of the rules' limits."""
    return draw(st.sampled_from([0, 1, limit - 1, limit, limit + 1]))


def sad_glue(draw) -> str:
    """Key/value glue of _KV_VAL with blank runs around their caps (8, 8, 16)."""
    blank = st.sampled_from(" \t")
    out = draw(st.sampled_from(["", '"', "'", "]", "%5D", "%5d", "%5", ")"]))
    out += "".join(draw(blank) for _ in range(near(draw, 8)))
    out += draw(st.sampled_from([":", "=", ":", "=", "-", ""]))
    out += "".join(draw(blank) for _ in range(near(draw, 8)))
    nl = draw(st.sampled_from(["", "", "\n", "\r\n", "\r"]))
    if nl:
        out += nl + "".join(draw(blank) for _ in range(near(draw, 16)))
    return out


def sad_value(draw) -> str:
    k = draw(st.integers(0, 5))
    if k == 0:
        return draw(st.sampled_from(SAD_VALUES))
    n = near(draw, 128)
    if k == 1:
        return '"' + "".join(draw(st.sampled_from(["1", "\\\"", "\\n", "\\\n", "a"])) for _ in range(n))
    if k == 2:
        return "'" + "1" * n
    if k == 3:  # XML: optional attributes (up to 32 chars) then > then text
        return " " + "a" * near(draw, 32) + ">" + "9" * n
    return "".join(draw(st.sampled_from("12ab*"))) * n


def sad_field(draw) -> str:
    key = draw(st.sampled_from(SAD_KEYS))
    if draw(st.integers(0, 4)) == 0:  # keys around the 48-character cap
        key = "k" * (near(draw, 48) - 3) + key if draw(st.booleans()) else key + "_" * near(draw, 48)
    lead = draw(st.sampled_from(['"', "'", "<", "&", " ", "", "_", "a", "<ns:", "</", "%", "x.", "\n", "<a:b:",
                                 "<" + "n" * 33 + ":"]))
    glue = draw(st.sampled_from(SAD_GLUE)) if draw(st.booleans()) else sad_glue(draw)
    return lead + key + glue + sad_value(draw) + \
        draw(st.sampled_from(['"', "'", "</" + key + ">", ",", "&", "", " ", "\n"]))


@st.composite
def documents(draw) -> bytes:
    parts = []
    for _ in range(draw(st.integers(1, 12))):
        k = draw(st.integers(0, 9))
        if k <= 2:
            parts.append(styled_pan(draw))
        elif k == 3:
            parts.append(track(draw))
        elif k <= 5:
            parts.append(sad_field(draw))
        elif k == 6:
            parts.append(draw(st.sampled_from(list(FALSE_POSITIVES.values()))))
        elif k == 7:
            pan = draw(st.sampled_from(PANS))
            parts.append(draw(st.sampled_from(list(in_formats(pan).values()))))
        else:
            parts.append("".join(draw(st.lists(st.sampled_from(NOISE), max_size=6))))
    return "".join(parts).encode("utf-8", "surrogatepass")


@st.composite
def sad_documents(draw) -> bytes:
    """Only SAD fields and track data, run together or apart."""
    parts = [sad_field(draw) if draw(st.booleans()) else track(draw) for _ in range(draw(st.integers(1, 6)))]
    return draw(st.sampled_from(["", " ", "\n", ",", "&"])).join(parts).encode()


SOUP = st.binary(max_size=300) | st.text(alphabet="0123456789 -._/\\\t\r\n;=^?%B*+aZ\"':<>cvpinstrack", max_size=200
                                         ).map(str.encode)


# ---- the tests --------------------------------------------------------------------------------
def test_engine_choice_is_observable():
    assert engine.ENGINE in ("native", "python")
    assert engine.ENGINE_DETAIL.startswith(engine.ENGINE)
    assert native.choose(None, {"PANGATE_ENGINE": "python"})[0] == "python"
    with pytest.raises(native.EngineUnavailable):
        native.choose(None, {"PANGATE_ENGINE": "fast"})


@SETTINGS
@given(documents())
def test_documents(data):
    same(data)


@SETTINGS
@given(sad_documents())
def test_sad_documents(data):
    same(data)


@SETTINGS
@given(SOUP)
def test_random_bytes(data):
    same(data)


@SETTINGS
@given(documents(), st.data())
def test_scan_ranges(data, d):
    """Any base <= stop, as the stream masker and the views call it."""
    base = d.draw(st.integers(0, len(data)))
    stop = d.draw(st.integers(base, len(data)))
    for c in CONFIGS[::2]:
        nat, ref = PAIRS[c]
        assert nat._scan(data, base, stop) == ref._pyscan(data, base, stop), (c, base, stop)


@SETTINGS
@given(documents(), st.lists(st.integers(1, 400), min_size=1, max_size=8), st.booleans())
def test_stream_chunks(data, sizes, with_on_pan):
    data = data * 3  # long enough for several rounds past the look-ahead
    for c in CONFIGS[::3]:
        outs, counts, reports = [], [], []
        for m in PAIRS[c]:
            seen = []
            sm = m.stream((lambda out, s, e, b, seen=seen: seen.append((out[s:e], b))) if with_on_pan else None)
            parts, i, k = [], 0, 0
            while i < len(data):
                n = sizes[k % len(sizes)]
                parts.append(sm.feed(data[i:i + n]))
                i, k = i + n, k + 1
            parts.append(sm.flush())
            outs.append(b"".join(parts))
            counts.append(sm.count)
            reports.append(seen)
        assert outs[0] == outs[1] and counts[0] == counts[1] and reports[0] == reports[1], c
        assert outs[1] == PAIRS[c][1].mask(data)[0]


@pytest.mark.parametrize("name", sorted(carrier_docs()))
def test_carrier_documents(name):
    _ctype, body = carrier_docs()[name]
    same(body)
    big = body * (1 + 40000 // len(body))  # over the size where the GIL is released
    assert len(big) > native._MOD.RULES["gil_release_bytes"]
    same(big, FEW)


def test_every_pan_in_every_style_and_carrier():
    docs = []
    for pan in corpus_pans():
        for s in separator_styles(pan).values():
            docs += [v.encode() for v in in_formats(s).values()]
            docs.append(s.encode())
            docs.append(break_luhn(s).encode())
    for d in docs:
        same(d, FEW)
    same(b"\n".join(docs))


def test_findings_at_buffer_edges():
    """Every prefix and suffix cut of documents dense in findings."""
    doc = (b'{"cvv":"123"} 4111 1111 1111 1111;4111111111111111=25121010?%B5500000000000004^DOE/J^2512x '
           b'6011000000000004=2512101 pin=9876 <cvc>12</cvc> 378282246310005.')
    for k in range(len(doc) + 1):
        same(doc[:k])
        same(doc[k:])


def test_large_buffers_and_gil_release():
    rng = random.Random(3)
    parts = []
    for _ in range(12000):
        r = rng.random()
        parts.append(rng.choice(PANS) if r < 0.2 else rng.choice(list(FALSE_POSITIVES.values())) if r < 0.5
                     else '"cvv": "%03d"' % rng.randrange(1000) if r < 0.55 else "x" * rng.randrange(40))
        parts.append(rng.choice([" ", ",", "\n", "", "-"]))
    data = "".join(parts).encode()
    assert len(data) > 4 * native._MOD.RULES["gil_release_bytes"]
    same(data, FEW)
    # Another thread keeps running *during* one native mask of a large buffer:
    # with the GIL held through the call, its longest pause would cover the call.
    nat = PAIRS[("bin6last4", True, False)][0]
    big = data * (1 + (32 << 20) // len(data))
    state, done, seen = {"gap": 0.0, "last": None}, threading.Event(), []

    def other():
        while not done.is_set():
            now = time.perf_counter()
            if state["last"] is not None:
                state["gap"] = max(state["gap"], now - state["last"])
            state["last"] = now

    t = threading.Thread(target=other)
    t.start()
    try:
        for _ in range(4):  # a loaded machine may deschedule the thread: a few tries
            state["gap"] = 0.0
            t0 = time.perf_counter()
            nat.mask(big)
            t1 = time.perf_counter()
            took = t1 - t0
            while (state["last"] or 0) <= t1:  # the thread's first step after the call closes its gap
                time.sleep(0.001)
            seen.append((round(state["gap"], 4), round(took, 4)))
            if state["gap"] < took / 2:
                break
    finally:
        done.set()
        t.join()
    assert any(gap < took / 2 for gap, took in seen), seen


def test_long_runs():
    """Runs longer than the layout tables and the stream context."""
    for unit in (b"4111 ", b"1 ", b"4111111111111111 ", b"41-", b"5.", b"0\n"):
        same(unit * 400, FEW)
    same(b"4" * 100000, FEW)


def test_native_failure_falls_back_to_python(monkeypatch, caplog):
    nat, ref = PAIRS[("bin6last4", True, False)]
    doc = b"card 4111 1111 1111 1111 cvv: 123 " * 10

    class Broken:
        def __getattr__(self, name):
            def fail(*a):
                raise MemoryError("simulated")
            return fail

    m = Masker(engine="native")
    monkeypatch.setattr(m, "_native", Broken())
    with caplog.at_level("ERROR", logger="pangate.pan"):
        assert m.mask(doc) == ref.mask(doc)
        sm = m.stream()
        out = b"".join([sm.feed(doc[:100]), sm.feed(doc[100:] * 3), sm.flush()])
        assert out == ref.mask(doc[:100] + doc[100:] * 3)[0]
        assert m._scan(doc, 0, len(doc)) == ref._pyscan(doc, 0, len(doc))
    assert "native call failed" in caplog.text and "4111" not in caplog.text


# ---- grids over the rules' limits (each cell is a separate line of one document) ---------------
def same_lines(lines, configs=FEW) -> None:
    doc = "\n~~\n".join(lines).encode("utf-8", "surrogatepass")
    same(doc, configs)


def test_grid_sad_key_value():
    lines = []
    for key in ("cvv", "pin_block"):
        for closer in ("", '"', "]", "%5D", "%5"):
            for b1 in (0, 8, 9):
                for sep in (":", "="):
                    for b2 in (0, 8, 9):
                        for nl in ("", "\n", "\r\n", "\r"):
                            for b3 in ((0, 16, 17) if nl else (0,)):
                                for val in ('"123', '"', "'12", "12", "NULL", "nullx", "**1",
                                            '"' + "\\\"" * 130, "3" * 129):
                                    lines.append(f'"{key}{closer}{" " * b1}{sep}{chr(9) * b2}{nl}{" " * b3}{val}')
    same_lines(lines)


def test_grid_sad_keys_and_xml():
    lines = []
    for lead in ("", "<", "</", "<ns:", "<" + "n" * 32 + ":", "%5B", "a", "1", "-", ":", "<a:"):
        for pre in ("", "K" * 45, "k" * 46, "card"):
            for anchor in ("cvv", "Cid", "csc", "PIN", "Track", "security"):
                for post in ("", "2", "Code", "Data", "x" * 44, "x" * 45):
                    for glue in ('":"1"', "=1", ">1</x>", " a='b'>1", "\t" + "z" * 32 + ">12", " " + "z" * 33 + ">1",
                                 "><", ">" + "7" * 129):
                        lines.append(lead + pre + anchor + post + glue)
    same_lines(lines)


def test_grid_track_data():
    lines = []
    for d1 in range(11, 21):
        pan = (PANS[d1 % len(PANS)] * 2)[:d1]
        for yymm in ("251", "2512"):
            for tail in ("", "1" * 24, "1" * 25, "x" * 60, "x" * 61, "a,b", "?x"):
                lines.append(f";{pan}={yymm}{tail}")
                lines.append(f";{pan}={yymm}{tail}?")
                for name in ("A", "AB", "N" * 26, "N" * 27, "A?B"):
                    lines.append(f"%B{pan}^{name}^{yymm}{tail}?")
        for k in (6, 7, 32, 33):
            lines.append(f"{pan}={'1' * k}")
            lines.append(f"{pan}={'1' * k}x")
    same_lines(lines)


def test_grid_pan_windows():
    lines = []
    pans = [p for p in PANS if 12 <= len(p) <= 19][::7]
    for pan in pans:
        for sep in (" ", "-", ".", "/", "\\", "\n", "\r\n", "..", " . ", "   ", "    ", "\\\\"):
            for sizes in ((4,), (4, 6, 5), (1, 3), (7,), (3, 2, 5)):
                parts, k, i = [], 0, 0
                while k < len(pan):
                    parts.append(pan[k:k + sizes[i % len(sizes)]])
                    k += sizes[i % len(sizes)]
                    i += 1
                body = sep.join(parts)
                for left, right in (("", ""), (";", "="), ("B", "^"), ("%B", "^X^2512"), ("+", ""), ("+ ", " "),
                                    ("a", ""), ("", "z"), ("1.", ""), ("", ".5"), ("-", "-f"), ("*", "*"),
                                    ("12 ", " 34"), ("0x", ""), ("", "=2512101")):
                    lines.append(left + body + right)
    same_lines(lines)
