"""PAN scanner core: finds the card-number windows of a buffer (plain Python).

Detection rules, in the order they are applied (cheapest first):

1. Prefilter: translate every byte to b"\\0" (digit or separator), a folded
   letter (for the SAD anchors) or b"1", and ``find`` twelve b"\\0" in a row.
   ``translate`` and ``find`` run in C at memory speed, so only the long runs
   of digits/separators reach Python.
2. Each run is classified by one compiled regex (``_RUN``) matched at its
   start, in C: a contiguous run whose first two digits and length fit an
   issued prefix (the IIN table compiled into the pattern) is a candidate; a
   contiguous run that fits none (13-digit ms timestamps, 16-digit us ones,
   order ids) and a run with fewer than 12 digits (phone numbers, dates,
   indentation) are dropped without any further Python.
3. Anything else is a run with separators: digit *groups* separated by
   gaps of 1 to MAX_GAP (3) separator bytes form windows that start and end
   on group boundaries and have 12-19 digits, so a candidate is never a
   slice of a longer digit run. Every fitting window is checked, so
   "12 4111 1111 1111 1111" still finds the card. A longer gap splits the
   run. The windows of a run shape (e.g. 4-4-4-4) are computed once.
4. Luhn, then the boundary rule, then the IIN table (iin.py: brand, prefix
   range, allowed lengths), then the unknown-brand rule (iin.py docstring):
   a Luhn-valid number with a payment MII that no row names is still a PAN
   (kind PAN_UNKNOWN_BRAND) unless the scanner is strict_brand.

Separators (SEPS): space, ``-``, ``.``, ``_``, ``/``, backslash, tab, CR, LF; so
``4111.1111.1111.1111``, ``4111 - 1111 - ...``, ``4111  1111 ...`` (double
space) and a PAN broken over lines are one window. views.py folds Unicode
spaces, dashes, NBSP, zero-width and soft-hyphen characters (and escaped
separators: ``&nbsp;``, ``\\t``, ``%20``, ...) to these bytes, so every view
gets the same separator rule. Two rules keep numbers that are not card
layouts out: a window with a ``.`` gap must have only single-``.`` gaps and
at least two of them (a decimal ``4234567.890123`` is not a 13-digit PAN, a
dotted PAN has 2 or 3 dots), and a window with a line break needs at least
two gaps (two numbers on consecutive lines are not one PAN).

Boundary rule: a candidate touching a letter, digit or ``*`` is glued to
something else (``a4111...``, a hex id, an already masked value); ``.`` next
to an alphanumeric means decimal/version/host (``123.4111...``,
``4111....5``); ``-`` next to a hex digit means a UUID-like id
(``a716-446655440000``); ``+`` before <= 15 digits is an E.164 phone number.
``*`` counts as glue so that the remnants of a masked value (``411111******``)
can never be read as a new PAN; masking is idempotent by construction. The
price is that a PAN directly wrapped in asterisks (markdown ``**4111...**``)
is not detected.

A finding is (start, end, mask_start, mask_end, kind, info) with kind from
kinds.py: PAN (info = (brand, digits)), or a SAD kind whose span
mask_start:mask_end is fully starred (SAD value, track data; see sad.py).
"""

from __future__ import annotations

import re

from pangate.pan.iin import LENGTHS_BY_PREFIX2 as _LEN2, UNKNOWN_BRAND_LENGTHS, lookup as _lookup, unknown_brand
from pangate.pan.kinds import PAN, PAN_UNKNOWN_BRAND, TRACK2
from pangate.pan.sad import GLUE, MAXKEY, SIG, TRACK2_EQ, TRACK_LEAD, scan_sad, track_at

_HEXGLUE = frozenset(b"0123456789ABCDEFabcdef*")
_CLS = bytes(1 if b in GLUE else 2 if b == 46 else 3 if b == 45 else 4 if b == 43 else 0
             for b in range(256))
_DBL = bytes.maketrans(b"0123456789", b"0246813579")  # Luhn: doubled digit, digits summed

# The single translate() per scan: digits/space/dash -> 0x00 for the PAN
# prefilter, letters -> SIG for the SAD anchors, everything else -> "1".
# 0x00 rather than "0": bytes.find skips ahead using a 64-bit bloom of
# (byte & 63), and "0" (48) collides with "p" (112), which made every digit
# stall the search for the "pin" anchor.
SEPS = b" -._/\t\r\n\\"
_SEPCLASS = rb"[ \-._/\t\r\n\\]"  # SEPS as a regex class
_PRE = bytes(0 if (48 <= b <= 57 or b in SEPS) else SIG[b] if chr(b).isalpha() and b < 128
             else 49 for b in range(256))
_Z12 = b"\0" * 12
_RUNCH = frozenset(b"0123456789" + SEPS)
_NOT_RUNCH = re.compile(rb"[^0-9 \-._/\t\r\n\\]")


def _issued_alternation(len2: dict) -> bytes:
    """Regex matching exactly the digit strings whose first two digits and
    length fit LENGTHS_BY_PREFIX2 (built from the IIN table, so a new row can
    never be missed by the fast path). Branches on the first digit, so a
    timestamp starting with "1" tries one short branch, not the whole table."""
    by_first: dict[str, dict[int, list[str]]] = {}
    for k, mask in len2.items():
        k = k.decode()
        by_first.setdefault(k[0], {}).setdefault(mask, []).append(k[1])
    alts = []
    for first, masks in sorted(by_first.items()):
        subs = []
        for mask, seconds in sorted(masks.items()):
            lens = [n - 2 for n in range(12, 20) if mask >> n & 1]
            if not lens:
                continue
            if lens == list(range(lens[0], lens[-1] + 1)):  # possessive: no backtracking
                tail = "[0-9]{%d,%d}+" % (lens[0], lens[-1]) if len(lens) > 1 else "[0-9]{%d}" % lens[0]
            else:
                tail = "|".join("[0-9]{%d}" % k for k in reversed(lens))
            subs.append("[%s](?:%s)" % ("".join(sorted(seconds)), tail))
        if subs:
            alts.append("%s(?:%s)" % (first, "|".join(subs)))
    return "|".join(alts).encode()


# Matched at the start of every run of >= 12 digits/separators; possessive
# quantifiers keep it linear. Groups: "c" = a contiguous candidate, "t" = a
# contiguous run right after a track lead (";" / "B", checked by the track
# rules whatever its length). No group = nothing to do (contiguous run that no
# brand issues, or fewer than 12 digits). "s" = a run with separators inside
# and >= 12 digits (leading separators skipped, trailing ones included).
def _run_regex(len2: dict):
    S, R = _SEPCLASS, rb"[0-9 \-._/\t\r\n\\]"
    return re.compile(
        S + rb"*+(?:(?P<c>" + _issued_alternation(len2) + rb")" + S + rb"*+(?!" + R + rb")"
        rb"|(?<![;Bb])[0-9]++" + S + rb"*+(?!" + R + rb")"
        rb"|(?P<t>[0-9]++)" + S + rb"*+(?!" + R + rb")"
        rb"|(?!(?:" + S + rb"*+[0-9]){12})" + R + rb"*+"
        rb"|(?P<s>[0-9]" + R + rb"*+))").match


# Unknown-brand rule (iin.py): first two digits 20-69 may be a PAN of 13, 14
# or 16-19 digits even if no row names them; the loose scanner's candidate
# lengths add those to the table's.
_LEN2_LOOSE = dict(_LEN2)
for _p2 in range(20, 70):
    _k = b"%02d" % _p2
    _LEN2_LOOSE[_k] = _LEN2_LOOSE.get(_k, 0) | UNKNOWN_BRAND_LENGTHS
_RUN = _run_regex(_LEN2)
_RUN_LOOSE = _run_regex(_LEN2_LOOSE)

# The widest gap of separator characters between two digit groups of one
# window, and the most bytes a PAN finding's rules read from its start before
# it is known to exist: 19 digits, 18 gaps, the 2 bytes the boundary rule
# reads after it; the track-2 equivalent (PAN "=" 7 digits, not a digit).
# Track data is bounded in sad.MAX_READ.
MAX_GAP = 3
MAX_READ = max(19 + 18 * MAX_GAP + 2, 19 + 1 + 8)

# A run's shape: digits -> "0", "." and line breaks kept (the layout rules
# look at them), every other separator -> " ".
_SHAPE = bytes.maketrans(b"0123456789-_/\t\r\\", b"0000000000    \n ")
_BRANDS: dict = {}  # (first 8 digits, length) -> brand | None; BINs repeat
_LAYOUTS: dict = {}  # run shape -> windows (see _layout)
_GROUPS = re.compile(rb"0+")
_CACHE_MAX = 1 << 14
_BLOCK = 1 << 16  # bytes per scan block (buf + t fit in L2)


def has_run(buf: bytes) -> bool:
    """Cheap "can buf contain a PAN at all" (12 digits/separators in a row)."""
    return buf.translate(_PRE).find(_Z12) >= 0


def luhn(d: bytes) -> bool:
    # Sum in C: bytes slices + translate instead of a per-digit Python loop.
    # The doubled digits are every other one from the right: from index len & 1.
    p = len(d) & 1
    return (sum(d[p::2].translate(_DBL)) + sum(d[1 - p::2]) - 48 * len(d)) % 10 == 0


def brand(digits: bytes) -> str | None:
    """issuers.lookup, memoised on what it depends on (8-digit IIN, length)."""
    key = (digits[:8], len(digits))
    try:
        return _BRANDS[key]
    except KeyError:
        b = _lookup(digits)
        if len(_BRANDS) >= _CACHE_MAX:
            _BRANDS.clear()
        _BRANDS[key] = b
        return b


def _bounded(buf: bytes, s: int, e: int, ndig: int) -> bool:
    """Boundary rule from the module docstring."""
    if s:
        k = _CLS[buf[s - 1]]
        if k:
            if k == 1 or (k == 4 and ndig <= 15):
                return False
            if k != 4 and s >= 2 and buf[s - 2] in (GLUE if k == 2 else _HEXGLUE):
                return False
    if e < len(buf):
        k = _CLS[buf[e]]
        if k == 1:
            return False
        if k in (2, 3) and e + 1 < len(buf) and buf[e + 1] in (GLUE if k == 2 else _HEXGLUE):
            return False
    return True


def _layout(shape: bytes) -> tuple:
    """Windows of a separated run of this shape: (digit start, digit end,
    char start, char end, char end of the 6th digit, char start of the last 4
    digits), chars counted from the run start. A window spans whole groups,
    has 12-19 digits, no gap wider than MAX_GAP, and passes the "." and
    line-break rules of the module docstring."""
    groups = [m.span() for m in _GROUPS.finditer(shape)]
    dpos = [i for i, c in enumerate(shape) if c == 48]  # char offset of each digit
    cum = [0]
    for gs, ge in groups:
        cum.append(cum[-1] + ge - gs)
    gaps = [shape[groups[k][1]:groups[k + 1][0]] for k in range(len(groups) - 1)]
    ng = len(groups)
    wins = []
    for a in range(ng):
        ca = cum[a]
        if cum[ng] - ca < 12:
            break
        dots = lines = 0
        for b in range(a, ng):
            if b > a:
                gap = gaps[b - 1]
                if len(gap) > MAX_GAP:
                    break
                if 46 in gap:
                    dots = -1 if dots < 0 or gap != b"." else dots + 1
                elif dots > 0:
                    dots = -1
                if 10 in gap:
                    lines = 1
            cb = cum[b + 1]
            if cb - ca > 19:
                break
            if cb - ca < 12:
                continue
            if dots < 0 or dots == 1 or (dots and b - a < 2) or (lines and b - a < 2):
                continue
            if dots and b - a != dots:  # a "." gap mixed with other separators
                continue
            wins.append((ca, cb, groups[a][0], groups[b][1], dpos[ca + 5] + 1, dpos[cb - 4]))
    return tuple(wins)


class _Run:
    """_run_general's answer, shaped like a _RUN match."""
    __slots__ = ("_end", "lastgroup", "_span")

    def __init__(self, end, group=None, span=None):
        self._end, self.lastgroup, self._span = end, group, span

    def end(self):
        return self._end

    def span(self, group):
        return self._span


def _run_general(buf: bytes, i: int, len2: dict = _LEN2) -> _Run:
    """What _RUN decides for the run starting at i, step by step in Python."""
    m = _NOT_RUNCH.search(buf, i + 12)
    j = m.start() if m else len(buf)
    seg = buf[i:j]
    st = seg.strip(SEPS)
    if not st:
        return _Run(j)
    s = i + seg.index(st[:1])
    e = s + len(st)
    if st.isdigit():
        if e - s <= 19 and (len2.get(st[:2], 0) >> (e - s)) & 1:
            return _Run(j, "c", (s, e))
        if s == i and s and buf[s - 1] in TRACK_LEAD:
            return _Run(j, "t", (s, e))
        return _Run(j)
    if len(st.translate(None, SEPS)) < 12:
        return _Run(j)
    return _Run(j, "s", (s, e))


class Scanner:
    """Finds PAN windows (and, with sad=True, SAD/track spans) in a buffer."""

    def __init__(self, bin6: bool, sad: bool, fast: bool = True, strict_brand: bool = False):
        self.bin6 = bin6  # mask keeps the first 6 digits
        self.sad = sad
        self.strict_brand = strict_brand
        self._len2 = _LEN2 if strict_brand else _LEN2_LOOSE
        # fast=False classifies runs with plain Python (_run_general) instead
        # of the _RUN regex: the reference the tests compare the fast path to.
        self.fast = fast

    def scan(self, buf: bytes, base: int, stop: int) -> list[tuple]:
        """Findings with base <= start < stop, sorted by start.

        This loop is the hot path: one find() and one regex match per run.
        """
        finds: list[tuple] = []
        if self.fast:
            run = _RUN if self.strict_brand else _RUN_LOOSE
        else:
            len2 = self._len2

            def run(buf, i):
                return _run_general(buf, i, len2)
        window = self._window
        pos = base
        if base and buf[base - 1] in _RUNCH:  # a run straddles base: start at its head
            pos = base - 1
            while pos and buf[pos - 1] in _RUNCH:
                pos -= 1
        end_regions = stop + 2  # a track finding starts 2 bytes before its PAN
        sad, seen = self.sad, set()
        sad_end = stop + MAXKEY
        # Walk in cache-sized blocks, each translated on its own: the run
        # search and the SAD anchor searches then re-read the block from
        # cache, instead of writing a translated copy of a multi-MB body to
        # memory and streaming it back once per pass.
        b0 = min(pos, base)
        while b0 < end_regions or (sad and b0 < sad_end):
            b1 = b0 + _BLOCK
            # 11 bytes of overlap: a run (or anchor) starting before b1 is
            # found whole in this block.
            t = buf[b0:b1 + 11].translate(_PRE)
            find = t.find
            lim = min(b1, end_regions) + 11 - b0  # runs starting before the block end
            while True:
                i = find(_Z12, pos - b0, lim)
                if i < 0:
                    break
                i += b0
                m = run(buf, i)
                pos = m.end()
                g = m.lastgroup
                if g is None:
                    continue
                s, e = m.span(g)
                if g == "s":
                    self._sep_region(buf, s, buf[s:e].rstrip(SEPS), base, stop, finds)
                else:
                    window(buf, s, e, buf[s:e], base, stop, finds)
            if pos < b1:  # every run starting before b1 was found above
                pos = b1
            if sad:
                scan_sad(buf, t, b0, base, stop, finds, b0, b1, seen)
            b0 = b1
        if seen:
            finds.sort()
        return finds

    def _sep_region(self, buf, i, seg, base, stop, finds):
        """Windows of a run with separators: seg = buf[i:...], stripped."""
        # The run's shape ("0000 0000 0000 0000") keys its precomputed
        # windows: two C calls instead of splitting and measuring groups.
        shape = seg.translate(_SHAPE)
        wins = _LAYOUTS.get(shape)
        if wins is None:
            wins = _layout(shape)
            if len(shape) <= 96:  # long runs ("1 1 1 ...") are rare: do not keep them
                if len(_LAYOUTS) >= _CACHE_MAX:
                    _LAYOUTS.clear()
                _LAYOUTS[shape] = wins
        if not wins:
            return
        digits = seg.translate(None, SEPS)
        lens2 = self._len2.get
        for ds, de, cs, ce, f6, l4 in wins:
            d = digits[ds:de]
            if (lens2(d[:2], 0) >> (de - ds)) & 1:
                self._window(buf, i + cs, i + ce, d, base, stop, finds, i + f6, i + l4)

    def _window(self, buf, s, e, digits, base, stop, finds, first6=0, last4=0):
        ndig = len(digits)
        if s and buf[s - 1] in TRACK_LEAD and ndig == e - s and self.sad:
            tr = track_at(buf, s, base, stop)
            if tr:
                finds.append(tr)
                return
        if not base <= s < stop:
            return
        # Luhn, inlined (once per candidate): the doubled digits are every
        # other one counted from the right, i.e. from index ndig & 1.
        p = ndig & 1
        if (sum(digits[p::2].translate(_DBL)) + sum(digits[1 - p::2]) - 48 * ndig) % 10:
            return
        if ((s and _CLS[buf[s - 1]]) or (e < len(buf) and _CLS[buf[e]])) \
                and not _bounded(buf, s, e, ndig):
            return
        b = _BRANDS.get((digits[:8], ndig), 0)
        if b == 0:
            b = brand(digits)
        kind = PAN
        if b is None:
            if self.strict_brand or not unknown_brand(digits):
                return
            b, kind = "unknown", PAN_UNKNOWN_BRAND
        if ndig == e - s:  # no separators: positions are arithmetic
            if self.sad and e < len(buf) and buf[e] == 61:  # "=": track-2 equivalent
                m = TRACK2_EQ.match(buf, e)
                if m:
                    finds.append((s, m.end(), s, m.end(), TRACK2, (b + " track2", None)))
                    return
            finds.append((s, e, s + 6 if self.bin6 else s, e - 4, kind, (b, digits)))
        else:  # separated: mask offsets come from the layout
            finds.append((s, e, first6 if self.bin6 else s, last4, kind, (b, digits)))
