"""The Redactor's cheap first look never lets through what its regex would star.

The reference is the plain IGNORECASE regex over every form; the class under
test skips it when an ASCII-lowered substring test says no form can be there.
Text is drawn from the secret's own characters, its case variants and Unicode
letters that fold onto ASCII under IGNORECASE (`ſ`, `K`, `ı`), so near-misses
and folded matches are common rather than rare.
"""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from pangate.credentials.forms import STARS, Redactor, echo_forms

FOLDING = "ſKıİµ"  # non-ASCII characters the regex folds onto ASCII letters


def reference_text(forms, value: str) -> str:
    alt = "|".join(re.escape(f) for f in sorted(set(forms), key=len, reverse=True))
    return re.compile(alt, re.IGNORECASE).sub(lambda m: STARS * len(m.group()), value)


def reference_data(forms, value: bytes) -> bytes:
    alt = "|".join(re.escape(f) for f in sorted(set(forms), key=len, reverse=True)).encode()
    return re.compile(alt, re.IGNORECASE).sub(lambda m: b"*" * len(m.group()), value)


secrets = st.text(alphabet="abcsSkKiI_-0123456789/+=:", min_size=6, max_size=24)


@st.composite
def secret_and_text(draw):
    secret = draw(secrets)
    forms = [f for f in echo_forms(secret) if len(f) >= 6]
    pieces = st.one_of(
        st.sampled_from(forms),
        st.sampled_from(forms).map(str.swapcase),
        st.sampled_from(forms).map(lambda f: f.replace("s", "ſ").replace("k", "K")),
        st.text(alphabet=secret + FOLDING + "xyz %\\\"", max_size=8),
    )
    text = "".join(draw(st.lists(pieces, max_size=6)))
    return secret, forms, text


@settings(max_examples=400, deadline=None)
@given(secret_and_text())
def test_text_matches_reference(case):
    secret, forms, text = case
    assert Redactor(forms).text(text) == reference_text(forms, text)


@settings(max_examples=400, deadline=None)
@given(secret_and_text())
def test_data_matches_reference(case):
    secret, forms, text = case
    data = text.encode("utf-8")
    assert Redactor(forms).data(data) == reference_data(forms, data)


def test_non_ascii_form_always_takes_the_regex():
    # A form with `ſ` matches plain `s` under IGNORECASE; an ASCII-lowered test would miss it.
    r = Redactor(["tokenſecret"])
    assert r.text("a tokensecret here") == "a " + "*" * 11 + " here"


def test_folded_text_is_still_starred():
    r = Redactor(echo_forms("sk_live_abcdef"))
    assert r.text("echo: ſK_live_abcdef") == "echo: " + "*" * 14
