"""The sink's blunt card pass, as optimized, stars exactly what its plain reference stars.

The reference below is the straightforward version (a Python loop for Luhn, every
run split into groups and every digit folded). Inputs mix ASCII and other-script
digits, every separator the pass accepts and Luhn-valid numbers in the payment
ranges, so both the one-group fast path and the general path are exercised.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from pan_corpus import luhn_digit
from pangate.sinks import scrubber as sc
from pangate.sinks.scrubber import _GROUP, _RUN, _card_digits, _luhn


def ref_luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def ref_card_digits(value: str) -> list[int]:
    out: list[int] = []
    for run in _RUN.finditer(value):
        groups = [(m.start() + run.start(), m.group()) for m in _GROUP.finditer(run.group())]
        folded = ["".join(str(int(c)) for c in g) for _, g in groups]
        for i in range(len(groups)):
            digits = ""
            for j in range(i, len(groups)):
                digits += folded[j]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and digits[0] in "23456" and ref_luhn(digits):
                    k = 0
                    for start, g in groups[i:j + 1]:
                        for off in range(len(g)):
                            if 6 <= k < len(digits) - 4:
                                out.append(start + off)
                            k += 1
    return out


ARABIC = "٠١٢٣٤٥٦٧٨٩"
FULLWIDTH = "０１２３４５６７８９"


@st.composite
def card(draw):
    body = draw(st.sampled_from("23456")) + draw(st.text("0123456789", min_size=11, max_size=17))
    pan = body + luhn_digit(body)
    script = draw(st.sampled_from(["0123456789", ARABIC, FULLWIDTH]))
    return "".join(script[int(c)] for c in pan) if draw(st.booleans()) else pan


pieces = st.one_of(
    card(),
    st.text("0123456789", min_size=1, max_size=22),
    st.text(" ._/\\+*'\"-\x00\u00a0\u00ad\u200b\u2060\ufeff", min_size=1, max_size=5),
    st.text("abc,:;{}" + ARABIC[:3], min_size=1, max_size=4),
)


@settings(max_examples=600, deadline=None)
@given(st.lists(pieces, max_size=12).map("".join))
def test_card_digits_match_reference(value):
    assert _card_digits(value) == ref_card_digits(value)


@settings(max_examples=300, deadline=None)
@given(st.text("0123456789", min_size=1, max_size=25))
def test_luhn_matches_reference(digits):
    assert _luhn(digits) == ref_luhn(digits)


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(max_codepoint=0x7F), max_size=80) | st.lists(pieces, max_size=10).map("".join))
def test_stretches_are_what_the_patterns_find(value):
    # The translate-and-find shortcut spans exactly what the class regexes do (ASCII control
    # characters included: str \s counts \x1c-\x1f as whitespace).
    assert sc._candidates(value) == [m.span() for m in sc._CANDIDATE.finditer(value)]
    want = [m.span() for m in sc._CLUSTER.finditer(value) if sc._ESCAPE_LEAD.search(m.group())]
    assert sc._clusters_with_escapes(value) == want
