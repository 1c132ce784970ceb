"""PAN and SAD detection/masking engine (plain Python, no mitmproxy import).

Detection rules, in the order they are applied (cheapest first):

1. Prefilter: translate every byte to b"0" (digit, space, dash) or b"1"
   (anything else) and ``find`` twelve b"0" in a row. ``translate`` and
   ``find`` run in C at memory speed, so only the rare long runs of
   digits/separators reach Python.
2. Inside such a run, digit *groups* separated by one space or dash form
   windows: a candidate starts and ends on group boundaries and has 12-19
   digits, so it is never a slice of a longer digit run. Every fitting window
   is checked, so "12 4111 1111 1111 1111" still finds the card.
3. IIN table (issuers.py: brand, prefix range, allowed lengths), then a
   boundary rule, then Luhn.

Boundary rule: a candidate touching a letter, digit or ``*`` is glued to
something else (``a4111...``, a hex id, an already masked value); ``.`` next
to an alphanumeric means decimal/version/host (``123.4111...``,
``4111....5``); ``-`` next to a hex digit means a UUID-like id
(``a716-446655440000``); ``+`` before <= 15 digits is an E.164 phone number.
``*`` counts as glue so that the remnants of a masked value (``411111******``)
can never be read as a new PAN; masking is idempotent by construction. The
price is that a PAN directly wrapped in asterisks (markdown ``**4111...**``)
is not detected.

SAD (sensitive authentication data) is found by searching the lower-cased
buffer for a few anchors (cvv, cvc, cid, csc, pin, track, security), taking
the whole identifier around the hit and checking its trailing camelCase /
snake_case words against SAD_NAMES, then masking the value that follows
(JSON, form, text ``name: value``, XML element). Magnetic-stripe track data is
recognised from the PAN run it contains (``%B`` + PAN + ``^`` or
``;`` + PAN + ``=``).

Everything masks in place with the same byte length, which is what lets the
StreamMasker emit output as soon as it is sure nothing can still change it.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import re
from bisect import bisect_left
from itertools import accumulate
from dataclasses import dataclass

from .issuers import LENGTHS_BY_PREFIX2 as _LEN2, lookup as _lookup

__all__ = [
    "Masker", "StreamMasker", "PanMatch", "find_pans", "contains_pan",
    "url_contains_pan", "url_view", "luhn_ok", "brand_of", "MODES",
]

MODES = ("bin6last4", "last4", "hmac")

_DIG = b"0123456789"
_Z12 = b"0" * 12
_STAR = bytes.maketrans(_DIG, b"*" * 10)
_DBL = bytes.maketrans(_DIG, b"0246813579")  # Luhn: doubled digit, digits summed

# Boundary classes for the byte next to a candidate.
_GLUE = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*")
_HEXGLUE = frozenset(b"0123456789ABCDEFabcdef*")
_CLS = bytes(1 if b in _GLUE else 2 if b == 46 else 3 if b == 45 else 4 if b == 43 else 0
             for b in range(256))

# Track data. Track 1: %B PAN ^ NAME ^ YYMM service+discretionary ?  (ISO/IEC
# 7813, 79 chars max). Track 2: ; PAN = YYMM service+discretionary ?  (40 max).
# The end sentinel is optional so a truncated track is still masked.
_TRACK1 = re.compile(rb"%[Bb][0-9]{12,19}\^[^^?\r\n]{2,26}\^[0-9]{4}[^?\r\n\"'<>&,;]{0,60}\??")
_TRACK2 = re.compile(rb";[0-9]{12,19}=[0-9]{4}[0-9]{0,24}\??")
# ISO 8583 field 35 style track-2 equivalent without sentinels: PAN=YYMM...
_TRACK_LEAD = frozenset(b";Bb")  # byte before the PAN of a track 2 / track 1
_TRACK2_EQ = re.compile(rb"=[0-9]{7,32}(?![0-9])")

# SAD field names, normalised: camelCase/snake/kebab words, lower-cased,
# joined; matched against the last 1-3 words of an identifier.
SAD_NAMES = frozenset({
    b"cvv", b"cvc", b"cvv2", b"cvc2", b"cid", b"csc", b"securitycode",
    b"track1", b"track2", b"trackdata", b"track1data", b"track2data",
    b"pin", b"pinblock",
})
_LOWER_DIGIT = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")
_UPPER = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ANCHORS = (b"cvv", b"cvc", b"cid", b"csc", b"pin", b"track", b"security")
# One find() pass over the whole body costs as much as the whole PAN
# prefilter, so anchors share passes: _SIG case-folds and merges c/d and
# v/i/s, making cvv, cvc, cid and csc two signatures ("cvv", "cvc").
_SIG = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZdis", b"abcvefghvjklmnopqrvtuvwxyzcvv")
# The single translate() per scan: digits/space/dash -> "0" for the PAN
# prefilter, letters -> _SIG for the SAD anchors, everything else -> "1".
_PRE = bytes(48 if (48 <= b <= 57 or b in b" -") else _SIG[b] if chr(b).isalpha() and b < 128
             else 49 for b in range(256))
_FIRST6 = re.compile(rb"(?:[ -]*[0-9]){6}").match  # end = just after the 6th digit
_LAST4 = re.compile(rb"(?:[ -]*[0-9]){4}").match   # on the reversed window
_RUN_END = re.compile(rb"[^0]").search
_DIGITS = re.compile(rb"[0-9]*").match
_ANCHOR_SIGS = tuple(
    (sig, frozenset(a for a in _ANCHORS if a.translate(_SIG) == sig))
    for sig in sorted({a.translate(_SIG) for a in _ANCHORS}))
_KEYCH = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-")
_KEY_RUN = re.compile(rb"[A-Za-z0-9_-]{0,48}")
_WORDS = re.compile(rb"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_AFTER_KEY = frozenset(b"\"']%:= \t>")
_MAXKEY = 48
_MAXVAL = 128
# "key": "v" | key=v | key: v | 'key': 'v' | card[cvc]=v  (value capped at
# _MAXVAL so a streaming carry stays bounded).
_KV_VAL = re.compile(
    rb"""(?:["'\]]|%%5[Dd])?[ \t]{0,8}[:=][ \t]{0,8}(?:\r?\n[ \t]{0,16})?"""
    rb"""(?:"((?:[^"\\\r\n]|\\.){0,%d})|'([^'\r\n]{0,%d})|([^\s,;&"'<>{}()\[\]]{1,%d}))"""
    % (_MAXVAL, _MAXVAL, _MAXVAL))
_XML_VAL = re.compile(rb"(?:[ \t\r\n][^<>]{0,32})?>([^<]{1,%d})" % _MAXVAL)
_LITERALS = (b"null", b"true", b"false")

# Streaming: every finding is decided by at most _CTX bytes before its start
# and ends (with the bytes its rules look at) within _LOOKAHEAD bytes of it.
_CTX = 64
_LOOKAHEAD = 256
_MAX_PENDING = 1 << 16


def luhn_ok(digits: bytes | str) -> bool:
    """Luhn (ISO/IEC 7812-1 annex) check of a digits-only string."""
    if isinstance(digits, str):
        digits = digits.encode("ascii", "replace")
    if not digits.isdigit() or not digits.isascii():
        return False
    return _luhn(digits)


def _luhn(d: bytes) -> bool:
    # Sum in C: bytes slices + translate instead of a per-digit Python loop.
    r = d[::-1]
    return (sum(r[0::2]) + sum(r[1::2].translate(_DBL)) - 48 * len(r)) % 10 == 0


def brand_of(digits: bytes | str) -> str | None:
    """Card brand for a digits-only PAN (prefix and length; Luhn not checked)."""
    if isinstance(digits, str):
        digits = digits.encode("ascii", "replace")
    return _lookup(digits) if digits.isdigit() and digits.isascii() else None


def _bounded(buf: bytes, s: int, e: int, ndig: int) -> bool:
    """Boundary rule from the module docstring."""
    if s:
        k = _CLS[buf[s - 1]]
        if k:
            if k == 1 or (k == 4 and ndig <= 15):
                return False
            if k != 4 and s >= 2 and buf[s - 2] in (_GLUE if k == 2 else _HEXGLUE):
                return False
    if e < len(buf):
        k = _CLS[buf[e]]
        if k == 1:
            return False
        if k in (2, 3) and e + 1 < len(buf) and buf[e + 1] in (_GLUE if k == 2 else _HEXGLUE):
            return False
    return True


def _may_start_pan(seg: bytes, lens2) -> bool:
    """Cheap reject of a separated run (UUID tails, phone numbers, dates): a
    window starts at a group, so some group of >= 2 digits must begin with an
    issued two-digit prefix. Groups of one digit are left to the full check."""
    for g in seg.replace(b"-", b" ").split(b" "):
        if len(g) < 2 or lens2(g[:2], 0):
            return True
    return False


def _key_is_sad(key: bytes) -> bool:
    words = [w.lower() for w in _WORDS.findall(key)[-3:]]
    return bool(words) and (words[-1] in SAD_NAMES or b"".join(words[-2:]) in SAD_NAMES
                            or b"".join(words) in SAD_NAMES)


@dataclass(frozen=True, slots=True)
class PanMatch:
    """A detected PAN. Deliberately holds only the masked form."""
    start: int
    end: int
    brand: str
    masked: str
    length: int


class Masker:
    """Masks PANs (and, with sad=True, SAD and track data) keeping byte length.

    mode: "bin6last4" (first 6 + last 4 digits kept), "last4", or "hmac":
    the digits before the last four become letters derived from
    HMAC-SHA256(hmac_key, pan digits), e.g. "4111 1111 1111 1111" ->
    "dEbf aCeD fBcA 1111". Only the twelve letters a-f/A-F are used so the
    token never contains a digit run (cannot look like a PAN) and every
    letter counts as "glue" for the boundary rule; 12 symbols give 3.58 bits
    per position (43 bits for a 16-digit PAN), enough to correlate records,
    while the key keeps it from being a brute-forceable plain hash.
    """

    def __init__(self, mode: str = "bin6last4", hmac_key: bytes | None = None, sad: bool = True):
        if mode not in MODES:
            raise ValueError(f"unknown mask mode {mode!r}; expected one of {MODES}")
        if mode == "hmac" and (not hmac_key or len(hmac_key) < 16):
            raise ValueError("hmac mode needs hmac_key of at least 16 bytes")
        self.mode = mode
        self.sad = sad
        self._key = bytes(hmac_key) if hmac_key else None

    # ---- public API -------------------------------------------------
    def mask(self, data: bytes) -> tuple[bytes, int]:
        data = bytes(data) if not isinstance(data, bytes) else data
        finds = self._scan(data, 0, len(data))
        return self._apply(data, 0, len(data), finds)

    def mask_text(self, text: str) -> tuple[str, int]:
        # Only ASCII bytes are ever rewritten (SAD values: every byte), so
        # the UTF-8 round trip is safe.
        out, n = self.mask(text.encode("utf-8", "surrogatepass"))
        return (out.decode("utf-8", "replace") if n else text), n

    def mask_url(self, url_or_query: str) -> tuple[str, int]:
        view = _url_view(url_or_query)
        out, n = self.mask(view)
        if not n and out == view:
            return url_or_query, 0
        parts = []
        for k, m in enumerate(_URL_TOK.finditer(_url_ascii(url_or_query))):
            if out[k] == view[k]:
                parts.append(url_or_query[m.start():m.end()])
            elif m.end() - m.start() == 1:
                parts.append(chr(out[k]))
            else:
                # A masked escaped digit stays escaped: "%34" -> "%2A", so
                # the length and the decoded meaning both stay right.
                parts.append("%%%02X" % out[k])
        return "".join(parts), n

    def stream(self, on_pan=None) -> "StreamMasker":
        return StreamMasker(self, on_pan)

    # ---- engine -----------------------------------------------------
    def _scan(self, buf: bytes, base: int, stop: int) -> list[tuple]:
        """Findings with base <= start < stop, sorted by start.

        A finding is (start, end, mask_start, mask_end, kind, info): kind "p"
        is a PAN window (info = (brand, digits)), "z" a span to be fully
        starred (SAD value, track data). This loop is the hot path: the common
        cases (one bare digit run, e.g. a ms timestamp) are handled inline.
        """
        finds: list[tuple] = []
        n = len(buf)
        t = buf.translate(_PRE)
        find = t.find
        lens2 = _LEN2.get
        pos = base
        if base and t[base - 1] == 48:  # a run straddles base: start at its head
            pos = base - 1
            while pos and t[pos - 1] == 48:
                pos -= 1
        end_regions = stop + 2  # a track finding starts 2 bytes before its PAN
        while True:
            i = find(_Z12, pos)
            if i < 0 or i >= end_regions:
                break
            m = _RUN_END(t, i + 12)
            j = pos = m.start() if m else n
            seg = buf[i:j]
            if not seg.isdigit():
                st = seg.strip(b" -")
                if not st.isdigit():
                    if len(st) - st.count(b" ") - st.count(b"-") >= 12 and _may_start_pan(st, lens2):
                        self._sep_region(buf, i + seg.index(st[:1]), st, base, stop, finds)
                    continue
                i += seg.index(st[:1])
                seg = st
                j = i + len(st)
            if j - i <= 19 and (lens2(seg[:2], 0) >> (j - i)) & 1 or i and buf[i - 1] in _TRACK_LEAD:
                self._window(buf, i, j, seg, base, stop, finds)
        if self.sad:
            k = len(finds)
            self._scan_sad(buf, t, base, stop, finds)
            if len(finds) != k:
                finds.sort()
        return finds

    def _sep_region(self, buf, i, seg, base, stop, finds):
        """Windows of a run with separators: seg = buf[i:...], stripped."""
        parts = seg.replace(b"-", b" ").split(b" ")
        if b"" in parts:  # a double separator splits the run: do each piece
            off = 0
            for piece in re.split(rb"(?:[ -]){2,}", seg):
                if len(piece) - piece.count(b" ") - piece.count(b"-") >= 12:
                    self._sep_region(buf, i + seg.index(piece, off), piece, base, stop, finds)
                off = seg.index(piece, off) + len(piece)
            return
        cum = [0, *accumulate(map(len, parts))]  # digits before group k
        ng = len(parts)
        digits = b"".join(parts)
        lens2 = _LEN2.get
        window = self._window
        for a in range(ng):
            ca = cum[a]
            if cum[ng] - ca < 12:
                break
            # first group index b whose window a..b reaches 12 digits
            for b in range(bisect_left(cum, ca + 12) - 1, ng):
                tot = cum[b + 1] - ca
                if tot > 19:
                    break
                d = digits[ca:ca + tot]
                if (lens2(d[:2], 0) >> tot) & 1:
                    # group k starts at seg offset cum[k] + k (one separator each)
                    window(buf, i + ca + a, i + cum[b + 1] + b, d, base, stop, finds)

    def _window(self, buf, s, e, digits, base, stop, finds):
        ndig = len(digits)
        if ndig == e - s and self.sad and s and buf[s - 1] in _TRACK_LEAD:
            tr = self._track(buf, s, base, stop)
            if tr:
                finds.append(tr)
                return
        if not base <= s < stop:
            return
        r = digits[::-1]  # Luhn, inlined: this runs once per candidate
        if (sum(r[0::2]) + sum(r[1::2].translate(_DBL)) - 48 * ndig) % 10:
            return
        if ((s and _CLS[buf[s - 1]]) or (e < len(buf) and _CLS[buf[e]])) \
                and not _bounded(buf, s, e, ndig):
            return
        brand = _lookup(digits)
        if brand is None:
            return
        if ndig == e - s:  # no separators: positions are arithmetic
            if self.sad and e < len(buf) and buf[e] == 61:  # "=": track-2 equivalent
                m = _TRACK2_EQ.match(buf, e)
                if m:
                    finds.append((s, m.end(), s, m.end(), "z", (brand + " track2", None)))
                    return
            last4 = e - 4
            first = s + 6 if self.mode == "bin6last4" else s
        else:
            seg = buf[s:e]
            last4 = e - _LAST4(seg[::-1]).end()
            first = s + _FIRST6(seg).end() if self.mode == "bin6last4" else s
        finds.append((s, e, first, last4, "p", (brand, digits)))

    def _track(self, buf, s, base, stop):
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
        return (m.start(), m.end(), ms, me, "z", ((brand or "card") + (" track2" if c == 59 else " track1"), None))

    def _scan_sad(self, buf, u, base, stop, finds):
        seen = set()
        for sig, names in _ANCHOR_SIGS:
            p = u.find(sig, base)
            alen = len(sig)
            while 0 <= p < stop + _MAXKEY:
                # Cheap rejects first: the real (case-folded) letters must be
                # an anchor, and the anchor must start a word, i.e. not follow
                # an alphanumeric unless at a camelCase boundary ("cardCvv").
                # This drops "display", "shipping", "decide", "spin", ...
                pc = buf[p - 1] if p else 32
                if (pc not in _GLUE or (pc in _LOWER_DIGIT and buf[p] in _UPPER)) \
                        and buf[p:p + alen].lower() in names:
                    f = self._sad_at(buf, p, alen)
                    if f and base <= f[0] < stop and f[0] not in seen:
                        seen.add(f[0])
                        finds.append(f)
                p = u.find(sig, p + 1)

    def _sad_at(self, buf, p, alen):
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
        if not _key_is_sad(buf[ks:ke]):
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
        return (ks, m.end(), vs, ve, "z", None)

    def _apply(self, buf: bytes, base: int, c: int, finds) -> tuple[bytes, int]:
        """Mask buf[base:c] with findings (all inside it); returns (bytes, count).

        PAN masks only ever write their masked span, and star spans are
        written last, so overlapping findings combine as a union.
        """
        if not finds:
            return (buf if base == 0 and c == len(buf) else buf[base:c]), 0
        out = bytearray(buf[base:c])
        count = sum(1 for f in finds if f[4] == "z" and buf[f[2]:f[3]].strip(b"*"))
        count += len(_counted(finds))
        for s, e, ms, me, kind, info in finds:
            if kind != "p":
                continue
            if self.mode == "hmac":
                out[ms - base:me - base] = self._token(buf[ms:me], info[1])
            elif ms == s + 6 and me - ms == len(info[1]) - 10:  # no separators
                out[ms - base:me - base] = b"*" * (me - ms)
            else:
                out[ms - base:me - base] = buf[ms:me].translate(_STAR)
        for s, e, ms, me, kind, info in finds:
            if kind == "z":
                out[ms - base:me - base] = b"*" * (me - ms)
        return bytes(out), count

    def _token(self, span: bytes, digits: bytes) -> bytes:
        num = int.from_bytes(_hmac.new(self._key, b"pangate-pan-v1:" + digits,
                                       hashlib.sha256).digest(), "big")
        out = bytearray(span)
        for k, ch in enumerate(span):
            if 47 < ch < 58:
                num, r = divmod(num, 12)
                out[k] = _TOKEN_ALPHABET[r]
        return bytes(out)


_TOKEN_ALPHABET = b"abcdefABCDEF"


def _counted(finds) -> list[tuple]:
    """The PAN findings that count as one card each: overlapping windows of
    one digit run count once, and a PAN inside track data counts as the track."""
    zspans = [(f[0], f[1]) for f in finds if f[4] == "z"]
    out, last_end = [], -1
    for f in finds:
        s, e = f[0], f[1]
        if f[4] == "p" and s >= last_end and not any(zs <= s and e <= ze for zs, ze in zspans):
            out.append(f)
            last_end = e
    return out


class StreamMasker:
    """Chunked masking whose concatenated output equals Masker.mask(whole).

    Each feed() scans carry+chunk but only emits up to a cut point c that is
    at least _LOOKAHEAD bytes before the end (so every finding starting
    before c has been fully seen) and not inside any finding. The next round
    keeps _CTX bytes before c as read-only context for boundary and SAD-key
    rules. Carry is therefore ~_CTX+_LOOKAHEAD bytes (plus a finding that
    straddles the cut); a pathological chain of overlapping findings longer
    than _MAX_PENDING is cut anyway, the only case where equality can break.
    """

    def __init__(self, masker: Masker, on_pan=None):
        self._m = masker
        self._buf = b""
        self._base = 0
        self.count = 0
        # on_pan(out, start, end, brand): called for each counted PAN with the
        # output chunk about to be returned and the PAN's span in it (masked).
        self._on_pan = on_pan

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        buf = self._buf + bytes(chunk)
        base = self._base
        limit = len(buf) - _LOOKAHEAD
        if limit <= base:
            self._buf = buf
            return b""
        finds = self._m._scan(buf, base, limit)
        c = limit
        for f in reversed(finds):  # sorted by start: one pass moves c out of all
            if f[0] < c < f[1]:
                c = f[0]
        if c <= base:
            if len(buf) - base < _MAX_PENDING:
                self._buf = buf
                return b""
            c = limit
        finds = [f for f in finds if f[0] < c]
        out, n = self._m._apply(buf, base, c, finds)
        self.count += n
        self._report(out, base, finds)
        keep = max(0, c - _CTX)
        self._buf, self._base = buf[keep:], c - keep
        return out

    def flush(self) -> bytes:
        buf, base = self._buf, self._base
        finds = self._m._scan(buf, base, len(buf))
        out, n = self._m._apply(buf, base, len(buf), finds)
        self.count += n
        self._report(out, base, finds)
        self._buf, self._base = b"", 0
        return out

    def _report(self, out: bytes, base: int, finds) -> None:
        if self._on_pan is not None and finds:
            # PANs, and track data (a "z" span that names its card brand)
            for f in sorted(_counted(finds) + [f for f in finds if f[4] == "z" and f[5]]):
                self._on_pan(out, f[0] - base, f[1] - base, f[5][0])


def _xml_ns_open(buf: bytes, colon: int) -> bool:
    """True for "<ns:" before a key (but not the closing "</ns:")."""
    k = colon
    while k and buf[k - 1] in _KEYCH and colon - k < 32:
        k -= 1
    return k > 0 and k < colon and buf[k - 1] == 60


# ---- URL / query strings ------------------------------------------------
_URL_TOK = re.compile(r"%[0-9A-Fa-f]{2}|[\s\S]")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _url_ascii(url: str) -> str:
    # One placeholder byte per non-ASCII character keeps positions 1:1.
    return url if url.isascii() else _NON_ASCII.sub("\x80", url)


def _url_view(url: str) -> bytes:
    """Percent-decoded bytes, one byte per original token, '+' as space."""
    u = _url_ascii(url)
    if "%" in u:
        u = _PCT.sub(lambda m: chr(int(m.group(1), 16)), u)
    return u.replace("+", " ").encode("latin-1")


_DEFAULT = Masker()
_PLAIN = Masker(sad=False)


def find_pans(data: bytes) -> list[PanMatch]:
    """Every PAN in data (overlapping windows included), masked bin6last4."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    out = []
    for s, e, ms, me, kind, info in _PLAIN._scan(data, 0, len(data)):
        if kind == "p":
            masked = data[s:ms] + data[ms:me].translate(_STAR) + data[me:e]
            out.append(PanMatch(s, e, info[0], masked.decode("ascii"), len(info[1])))
    return out


def contains_pan(data: bytes) -> bool:
    """Fast yes/no for outbound DLP (PANs only, SAD not considered)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if data.translate(_PRE).find(_Z12) < 0:
        return False
    return any(f[4] == "p" for f in _PLAIN._scan(data, 0, len(data)))


def url_contains_pan(url: str) -> bool:
    return contains_pan(_url_view(url))


def url_view(url: str) -> bytes:
    """A URL or form body as a server decodes it (%xx, `+`), one byte per original token."""
    return _url_view(url)
