"""The literal probes in C (found_folded) answer what the Python `in` tests answer.

The sinks' word hints and the redactors' secret probes run over every stored
body: `any(n in value.lower() for n in needles)`. The native version folds ASCII
case as it goes; these tests hold it to that expression (hypothesis over mixed
case, needles at the edges, non-ASCII bytes), and show that a failure of the
native call falls back to the Python test instead of reporting "nothing found".
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from pangate.credentials import forms
from pangate.credentials.forms import Redactor, echo_forms
from pangate.pan import native
from pangate.sinks import scrubber as sc

pytestmark = pytest.mark.skipif(native._MOD is None, reason=f"native PAN engine not built: {native._WHY}")


def found(value, needles) -> bool:
    return native._MOD.found_folded(value, needles)


def reference(value, needles) -> bool:
    low = bytes(value).lower()
    return any(n in low for n in needles)


alphabet = st.sampled_from(list(b"aAbBeEyYjJrR0%3\\u\x00\xc3\xa9 ") + [0xC9, 0xFF])
needle = st.lists(st.sampled_from(list(b"abeyjr0%3\\u\xc3\xa9")), min_size=2, max_size=6).map(bytes)


@settings(max_examples=1500, deadline=None)
@given(st.lists(alphabet, max_size=400).map(bytes), st.lists(needle, min_size=1, max_size=8).map(tuple))
def test_found_folded_is_in_of_the_lowered_value(value, needles):
    assert found(value, needles) == reference(value, needles)
    assert found(bytearray(value), needles) == reference(value, needles)


@pytest.mark.parametrize("value,needles,want", [
    (b"Authorization: x", (b"authorization",), True),
    (b"xxBEARER", (b"bearer",), True),                 # at the very end
    (b"BEARE", (b"bearer",), False),                   # cut by the end
    (b"bearer"[:1], (b"be",), False),
    (b"eyJhbGciOi", (b"eyj", b"cvv"), True),
    (b"", (b"ab",), False),
    (b"abc", (), False),
    (b"\xc9T\xc9", (b"\xc9t",), True),                 # non-ASCII bytes are not folded, ASCII are
    (b"\xe9t", (b"\xc9t",), False),
])
def test_found_folded_edges(value, needles, want):
    assert found(value, needles) is want is reference(value, needles)


def test_a_large_body_scanned_without_the_gil_finds_the_same():
    body = b"x" * (2 * native._MOD.RULES["gil_release_bytes"])
    assert found(body + b"SeCuRiTy", (b"security",)) and not found(body, (b"security",))


@pytest.mark.parametrize("needles", [(b"a",), (b"Ab",), ("ab",), (b"ab", b"")])
def test_needles_the_c_pass_cannot_take_are_refused(needles):
    with pytest.raises((ValueError, TypeError)):
        found(b"abc", needles)


def test_a_native_failure_falls_back_in_the_sinks_hints(monkeypatch):
    def broken(*a):
        raise MemoryError("simulated")

    monkeypatch.setattr(forms, "FOUND_FOLDED", broken)
    body = b"x" * 1000 + b" Authorization: Bearer abcdefghijklmnop"
    assert sc._data_hint(body, 0) and sc._data_hint(body, 1)
    assert b"abcdefghijklmnop" not in sc.SinkScrubber().data(body)


def test_a_native_failure_falls_back_in_the_secret_probe(monkeypatch):
    secret = "sk_live_0123456789abcdefXYZ"
    redactor = Redactor(echo_forms(secret))
    body = b"y" * 1000 + secret.upper().encode()
    assert redactor.may_match_data(body)

    def broken(*a):
        raise MemoryError("simulated")

    monkeypatch.setattr(forms, "FOUND_FOLDED", broken)
    assert redactor.may_match_data(body)
    assert secret.encode() not in redactor.data(b"z" * 1000 + secret.encode())


def test_the_probe_is_native_where_the_engine_is():
    redactor = Redactor(echo_forms("sk_live_0123456789abcdefXYZ"))
    assert (redactor._probe_data._native is not None) == (forms.FOUND_FOLDED is not None)
