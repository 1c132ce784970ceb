"""Header masking's one-test shortcut gives what masking each field in every view gives.

mask_fields() tests a whole head once and, when it is plain ASCII without escapes,
masks each field's raw bytes only. The reference masks every name and value through
mask_views, as the slow path does. Fields mix card numbers (raw, spaced, escaped,
percent-encoded, entity-encoded), NUL, non-ASCII bytes and plain header text.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from mitmproxy.http import Headers

from pan_corpus import luhn_digit
from pangate.masking.addon import _mask_bytes, mask_fields, mask_name
from pangate.pan.engine import Masker

M = Masker()


def reference(fields):
    out, count = [], 0
    for name, value in fields:
        n2, a = mask_name(M, name, _mask_bytes)
        v2, b = _mask_bytes(M, value)
        out.append((n2, v2))
        count += a + b
    return tuple(out), count


@st.composite
def pan_text(draw):
    lead = draw(st.sampled_from(["4111", "5500", "3400", "6011"]))
    body = lead + draw(st.text("0123456789", min_size=8, max_size=11))
    pan = body + luhn_digit(body)
    form = draw(st.sampled_from(["raw", "spaced", "json", "pct", "entity", "dashed"]))
    if form == "spaced":
        return " ".join(pan[i:i + 4] for i in range(0, len(pan), 4))
    if form == "dashed":
        return "-".join(pan[i:i + 4] for i in range(0, len(pan), 4))
    if form == "json":
        return "".join(f"\\u{ord(c):04x}" for c in pan)
    if form == "pct":
        return "".join(f"%{ord(c):02X}" for c in pan)
    if form == "entity":
        return "".join(f"&#{ord(c)};" for c in pan)
    return pan


chunk = st.one_of(pan_text(), st.text("abcXYZ-_=;:/ 0123456789", max_size=12),
                  st.sampled_from(["\0", "é", "+4", "&amp;"]))
value = st.lists(chunk, max_size=4).map("".join).map(lambda s: s.encode("utf-8"))
name = st.one_of(st.sampled_from([b"Content-Type", b"X-Card", b"Date"]), st.lists(chunk, min_size=1, max_size=2)
                 .map(lambda p: ("X-" + "".join(p)).encode("utf-8")))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(name, value), max_size=6))
def test_fast_path_masks_as_every_view_would(fields):
    want, count = reference(fields)
    headers = Headers(fields)
    assert mask_fields(M, headers) == count
    assert tuple(headers.fields) == want
