"""SAD (sensitive authentication data) and magnetic-stripe track data rules
of the PAN engine (see engine.py for the overview). Pure functions on bytes.

SAD is found by searching the case-folded scan string (panscan._PRE)
for a few anchors (cvv, cvc, cid, csc, pin, track, security), taking the whole
identifier around the hit and checking its trailing camelCase / snake_case
words against SAD_NAMES, then masking the value that follows (JSON, form,
text ``name: value``, XML element). Track data is recognised from the PAN run
it contains (``%B`` + PAN + ``^`` or ``;`` + PAN + ``=``).

A finding is (start, end, mask_start, mask_end, kind, info) with kind one
of kinds.CVC, PIN, TRACK_FIELD (a SAD field's value, info None) or TRACK1,
TRACK2 (track data, info = (brand label, None)): the span mask_start:mask_end
is starred.
"""

from __future__ import annotations

import re

from pangate.pan.iin import lookup as _lookup
from pangate.pan.kinds import CVC, PIN, TRACK1, TRACK2, TRACK_FIELD

# Byte classes shared with the PAN boundary rule: a letter, digit or "*"
# next to a word means it is glued to something else.
GLUE = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*")

# Track data. Track 1: %B PAN ^ NAME ^ YYMM service+discretionary ?  (ISO/IEC
# 7813, 79 chars max). Track 2: ; PAN = YYMM service+discretionary ?  (40 max).
# The end sentinel is optional so a truncated track is still masked.
_TRACK1 = re.compile(rb"%[Bb][0-9]{12,19}\^[^^?\r\n]{2,26}\^[0-9]{4}[^?\r\n\"'<>&,;]{0,60}\??")
_TRACK2 = re.compile(rb";[0-9]{12,19}=[0-9]{4}[0-9]{0,24}\??")
TRACK_LEAD = frozenset(b";Bb")  # byte before the PAN of a track 2 / track 1
# ISO 8583 field 35 style track-2 equivalent without sentinels: PAN=YYMM...
TRACK2_EQ = re.compile(rb"=[0-9]{7,32}(?![0-9])")
_DIGITS = re.compile(rb"[0-9]*").match

# SAD field names, normalised: camelCase/snake/kebab words, lower-cased,
# joined; matched against the last 1-3 words of an identifier.
SAD_KIND_OF = {
    **dict.fromkeys((b"cvv", b"cvc", b"cvv2", b"cvc2", b"cid", b"csc", b"securitycode"), CVC),
    **dict.fromkeys((b"track1", b"track2", b"trackdata", b"track1data", b"track2data"), TRACK_FIELD),
    **dict.fromkeys((b"pin", b"pinblock"), PIN),
}
SAD_NAMES = frozenset(SAD_KIND_OF)
_LOWER_DIGIT = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")
_UPPER = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ANCHORS = (b"cvv", b"cvc", b"cid", b"csc", b"pin", b"track", b"security")
# One find() pass over the whole body costs as much as the whole PAN
# prefilter, so anchors share passes: SIG case-folds and merges c/d and
# v/i/s, so cvv, cvc, cid and csc all start with "cv" and share one pass (the
# third letter is checked on the hit). Both cases of a letter must fold
# alike, or "CID" would not be found.
SIG = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZdis", b"abccefghvjklmnopqrvtuvwxyzcvv")
_ANCHOR_SIGS = tuple(
    (needle, len(group[0]), frozenset(group))
    for needle, group in (
        (b"cv", [a for a in _ANCHORS if a.translate(SIG).startswith(b"cv")]),
        *((a.translate(SIG), [a]) for a in _ANCHORS if not a.translate(SIG).startswith(b"cv"))))
_KEYCH = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-")
_KEY_RUN = re.compile(rb"[A-Za-z0-9_-]{0,48}")
_WORDS = re.compile(rb"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_AFTER_KEY = frozenset(b"\"']%:= \t>")
MAXKEY = _MAXKEY = 48
_MAXVAL = 128
# "key": "v" | key=v | key: v | 'key': 'v' | card[cvc]=v  (value capped at
# _MAXVAL so a streaming carry stays bounded).
_KV_VAL = re.compile(
    rb"""(?:["'\]]|%%5[Dd])?[ \t]{0,8}[:=][ \t]{0,8}(?:\r?\n[ \t]{0,16})?"""
    rb"""(?:"((?:[^"\\\r\n]|\\.){0,%d})|'([^'\r\n]{0,%d})|([^\s,;&"'<>{}()\[\]]{1,%d}))"""
    % (_MAXVAL, _MAXVAL, _MAXVAL))
# How far past its start a SAD or track finding's rules must read before the
# finding is known to exist (the stream masker's look-ahead is built on it):
# key (48) + `"]`-ish closer (3) + blanks, `:`/`=`, blanks (17) + newline and
# indentation (18) + quote and first value byte (2); XML: 48 + 34 + 1; track
# 1 up to its expiry (%B, 19 digits, ^, 26, ^, 4): 53. The value itself may
# run on (up to 128 characters, 256 bytes escaped): a match cut short by the
# end of the buffer reaches that end, so it straddles the stream's cut and is
# decided again, whole, in the next round.
MAX_READ = max(_MAXKEY + 3 + 17 + 18 + 2, _MAXKEY + 34 + 1, 53)
_XML_VAL = re.compile(rb"(?:[ \t\r\n][^<>]{0,32})?>([^<]{1,%d})" % _MAXVAL)
_LITERALS = (b"null", b"true", b"false")


def track_at(buf: bytes, s: int, base: int, stop: int):
    """Track 1/2 finding whose PAN starts at s (buf[s-1] in TRACK_LEAD), or None."""
    c = buf[s - 1]
    if c == 59:  # ";"
        m = _TRACK2.match(buf, s - 1)
    elif c in b"Bb" and s >= 2 and buf[s - 2] == 37:  # "%B"
        m = _TRACK1.match(buf, s - 2)
    else:
        return None
    if not m or not (base <= m.start() < stop):
        return None
    ms, me = m.start() + 1, m.end() - (buf[m.end() - 1] == 63)
    brand = _lookup(_DIGITS(buf, s).group())
    kind = TRACK2 if c == 59 else TRACK1
    return (m.start(), m.end(), ms, me, kind, ((brand or "card") + " " + kind, None))


def sad_kind(key: bytes) -> str | None:
    """The SAD kind an identifier names (its last 1-3 words), or None."""
    words = [w.lower() for w in _WORDS.findall(key)[-3:]]
    if not words:
        return None
    get = SAD_KIND_OF.get
    return get(words[-1]) or get(b"".join(words[-2:])) or get(b"".join(words))


def key_is_sad(key: bytes) -> bool:
    return sad_kind(key) is not None


def scan_sad(buf: bytes, u: bytes, off: int, base: int, stop: int, finds: list,
             lo: int = 0, hi: int | None = None, seen: set | None = None) -> None:
    """Append SAD findings with base <= start < stop; u = buf[off:...]
    translated with SIG (case-folded). Only anchors at lo <= p < hi are looked
    at (the caller walks the buffer in cache-sized blocks, u covering
    [lo, hi + 7)); seen dedups findings across blocks."""
    seen = set() if seen is None else seen
    lo = max(lo, base)
    hi = stop + _MAXKEY if hi is None else min(hi, stop + _MAXKEY)
    for sig, alen, names in _ANCHOR_SIGS:
        end = hi + len(sig) - 1 - off  # find() needs the whole needle inside [lo, end)
        p = u.find(sig, lo - off, end)
        while p >= 0:
            p += off
            # Cheap rejects first: the real (case-folded) letters must be
            # an anchor, and the anchor must start a word, i.e. not follow
            # an alphanumeric unless at a camelCase boundary ("cardCvv").
            # This drops "display", "shipping", "decide", "spin", ...
            pc = buf[p - 1] if p else 32
            if (pc not in GLUE or (pc in _LOWER_DIGIT and buf[p] in _UPPER)) \
                    and buf[p:p + alen].lower() in names:
                f = _sad_at(buf, p, alen)
                if f and base <= f[0] < stop and f[0] not in seen:
                    seen.add(f[0])
                    finds.append(f)
            p = u.find(sig, p + 1 - off, end)


def _sad_at(buf, p, alen):
    ke = _KEY_RUN.match(buf, p + alen).end()
    if ke - p - alen >= _MAXKEY or ke >= len(buf) or buf[ke] not in _AFTER_KEY:
        return None
    ks = p
    while ks and buf[ks - 1] in _KEYCH:
        ks -= 1
        if ke - ks > _MAXKEY:
            return None
    # Raw form body "card%5Bcvc%5D=1": the identifier run is "5Bcvc".
    if buf[ks:ks + 2] in (b"5B", b"5b") and ks and buf[ks - 1] == 37:
        ks += 2
    kind = sad_kind(buf[ks:ke])
    if kind is None:
        return None
    if ks and (buf[ks - 1] == 60 or (buf[ks - 1] == 58 and _xml_ns_open(buf, ks - 1))):
        m = _XML_VAL.match(buf, ke)
        if not m:
            return None
        vs, ve = m.span(1)
    else:
        m = _KV_VAL.match(buf, ke)
        if not m:
            return None
        g = 1 if m.start(1) >= 0 else 2 if m.start(2) >= 0 else 3
        vs, ve = m.span(g)
        if g == 3 and buf[vs:ve].lower() in _LITERALS:
            return None
    if ve <= vs:
        return None
    return (ks, m.end(), vs, ve, kind, None)


def _xml_ns_open(buf: bytes, colon: int) -> bool:
    """True for "<ns:" before a key (but not the closing "</ns:")."""
    k = colon
    while k and buf[k - 1] in _KEYCH and colon - k < 32:
        k -= 1
    return k > 0 and k < colon and buf[k - 1] == 60
