"""The blunt pass in C stars exactly what the Python pass stars.

`_card_stars` hands ASCII text to the native `blunt_stars`; the Python
`_card_digits` (itself held to a plain reference in test_blunt_reference) is the
reference and the path for other text. Inputs are ASCII only (the native path's
domain): every separator the candidate class admits, gaps of 1-5 separators,
Luhn-valid numbers in and out of the payment ranges, single groups at every
length around 13-19, multi-group runs and chains of more groups than C decides
at once.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from pan_corpus import luhn_digit
from pangate.pan import native
from pangate.sinks import scrubber as sc

pytestmark = pytest.mark.skipif(native._MOD is None, reason=f"native PAN engine not built: {native._WHY}")

ASCII_SEPS = sc._ASCII_SEPS


@pytest.fixture(autouse=True)
def native_stretches(monkeypatch):
    """The native path on, whichever engine this process chose (a python-engine run too)."""
    monkeypatch.setattr(sc, "_NATIVE_STARS", native._MOD.blunt_stars)


def python_stars(value: str) -> list[int]:
    """The positions the Python pass stars (a set: _blunt stars each position once, in order)."""
    spans = sc._candidates(value)
    return sc._card_digits(value, spans) if spans else []


@st.composite
def number(draw):
    first = draw(st.sampled_from("0123456789"))
    body = first + draw(st.text("0123456789", min_size=9, max_size=19))
    return body + luhn_digit(body) if draw(st.booleans()) else body


pieces = st.one_of(
    number(),
    st.text("0123456789", min_size=1, max_size=22),
    st.text(ASCII_SEPS, min_size=1, max_size=5),
    st.text("abc,:;{}=&%#xu", min_size=1, max_size=4),
)


@settings(max_examples=800, deadline=None)
@given(st.lists(pieces, max_size=14).map("".join))
def test_native_stars_what_python_stars(value):
    assert sorted(set(sc._card_stars(value))) == sorted(set(python_stars(value)))


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(max_codepoint=127), max_size=80))
def test_native_stars_what_python_stars_on_any_ascii(value):
    assert sorted(set(sc._card_stars(value))) == sorted(set(python_stars(value)))


@pytest.mark.parametrize("value", [
    "4111111111111111", " 4111111111111111 ", "x4111111111111111x", "41111111111111111111",
    "4111 1111 1111 1111", "\x004\x001\x001\x001\x001\x001\x001\x001\x001\x001\x001\x001\x001\x001\x001\x001",
    "2223003122003222", "6011000000000004", "7011000000000004", "1732800000000", "-" * 20, "",
    "5500-0000-0000-0004/4111111111111111", "'4111111111111111'", "\"4111111111111111\"",
])
def test_native_stars_the_known_shapes_as_python(value):
    assert sorted(set(sc._card_stars(value))) == sorted(set(python_stars(value)))


def test_a_body_scanned_without_the_gil_gets_the_same_stars():
    """Above the GIL-release size the C pass runs without the GIL; the answer is the same."""
    row = '{"id": 1732800000000, "card": "4111111111111111", "n": "4111 1111 1111 1111"},\n'
    value = row * (1 + 2 * native._MOD.RULES["gil_release_bytes"] // len(row))
    assert sorted(set(sc._card_stars(value))) == sorted(set(python_stars(value)))
    assert "4111111111111111" not in sc._blunt(value)


def test_a_native_failure_falls_back_to_python(monkeypatch):
    def broken(*a):
        raise MemoryError("simulated")

    monkeypatch.setattr(sc, "_NATIVE_STARS", broken)
    value = "card 4111111111111111 and 5500-0000-0000-0004"
    assert sorted(set(sc._card_stars(value))) == sorted(set(python_stars(value))) != []
    assert "4111111111111111" not in sc._blunt(value)


def test_text_that_is_not_ascii_takes_the_python_pass(monkeypatch):
    calls = []
    monkeypatch.setattr(sc, "_NATIVE_STARS", lambda *a: calls.append(a) or [])
    value = "card ٤١١١١١١١١١١١١١١١ and 4111111111111111"
    assert sorted(set(sc._card_stars(value))) == sorted(set(python_stars(value))) != []
    assert calls == []


@pytest.mark.parametrize("unit", ["4 ", "41 ", "4111 ", "5-", "1  ", "3" * 7 + " ", "6.", "2 \t "])
def test_long_chains_of_groups_as_python(unit):
    """Chains of hundreds of groups: C decides them in windows, the stars must not change."""
    for n in (13, 19, 63, 64, 65, 82, 83, 200, 401):
        value = unit * n
        assert sorted(set(sc._card_stars(value))) == sorted(set(python_stars(value))), (unit, n)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("0123456789"), st.text("0123456789", max_size=2),
                          st.text(ASCII_SEPS, min_size=1, max_size=5)), min_size=50, max_size=160))
def test_long_random_chains_as_python(groups):
    """Mostly one-digit groups: a sequence then spans up to 19 groups, across C's windows."""
    value = "".join(first + (more if len(more) < 2 else "") + gap for first, more, gap in groups)
    assert sorted(set(sc._card_stars(value))) == sorted(set(python_stars(value)))


def _chain(pan: str, offset: int) -> str:
    return "0 " * offset + " ".join(pan) + " 0" * 30


def _lone_19() -> str:
    """19 digits, first 4, Luhn-valid, such that in _chain it is the one sequence starred."""
    import random

    rng = random.Random(19)
    while True:
        body = "4" + "".join(rng.choice("01789") for _ in range(17))
        pan = body + luhn_digit(body)
        if len(set(python_stars(_chain(pan, 0)))) == 9:
            return pan


def test_a_19_group_sequence_at_every_offset_of_a_long_chain():
    """One-digit groups, one sequence to star, placed across every window boundary C has."""
    pan = _lone_19()
    for offset in range(140):
        value = _chain(pan, offset)
        want = sorted(set(python_stars(value)))
        assert len(want) == 9, (offset, want)
        assert sorted(set(sc._card_stars(value))) == want, offset


@pytest.mark.parametrize("gap", range(1, 7))
def test_gaps_of_every_width_as_python(gap):
    for sep in (" ", "-", "\x00", "*", "\\", "\t"):
        value = (sep * gap).join(["4111", "1111", "1111", "1111"])
        assert sorted(set(sc._card_stars(value))) == sorted(set(python_stars(value))), (sep, gap)
        assert bool(python_stars(value)) == (gap <= 4)


def test_the_separators_reach_c_from_python():
    with pytest.raises(ValueError):
        native._MOD.blunt_stars(b"4111111111111111", b" 1")
    # with no separators a spaced number is no chain: the classes come from Python, not from C
    assert native._MOD.blunt_stars(b"4111 1111 1111 1111", b"") == []
    assert native._MOD.blunt_stars(b"4111 1111 1111 1111", b" ") == [(7, 9), (10, 14)]
