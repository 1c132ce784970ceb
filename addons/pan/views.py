"""One normalized view for detection: every reading of a body a client could
make, checked by the same engine, masked in the body's own representation.

A card number reaches a client not only as ASCII digits: a UTF-16 body, a
``charset`` that lies, JSON ``\\u0034``, HTML ``&#52;``, URL ``%34``,
fullwidth or Arabic-Indic digits, NBSP or zero-width characters between the
groups. This module turns (bytes, declared Content-Type) into *views*, each a
byte string the engine scans (one byte per unit) plus a map from every unit
back to a byte span of the original; masking rewrites those spans in the form
they were written in, so the client's bytes stay well-formed.

Views (names as reported in ViewScan.views):
  * ``raw``: the bytes as they are (exactly what Masker.mask sees);
  * ``text:<codec>``: the text in the declared charset, and in a sniffed one
    when it differs (BOM; UTF-16/32 LE/BE from the NUL pattern; UTF-8 if the
    bytes are valid UTF-8, else cp1252). Each character is folded to one
    byte: any ``unicodedata.decimal`` digit -> ASCII digit; Unicode spaces,
    NBSP, zero-width and other format characters (soft hyphen, BOM, bidi
    marks) -> space; dashes and minus signs -> ``-``; fullwidth ASCII ->
    ASCII; a byte the charset cannot decode (the client sees U+FFFD) ->
    space; anything else -> 0x80, a neutral byte. The separator rules
    themselves are the engine's (scan.py), the same for every view;
  * ``...+json``, ``+html``, ``+pct``: the same text with escapes decoded, JSON (``\\uXXXX``, pairs,
    ``\\t \\n \\/ ...``), HTML/XML character references (``&#52;``,
    ``&#x34;``, ``&nbsp;`` and the HTML5 names), percent-encoding (``%34``,
    UTF-8 sequences like ``%EF%BC%94``, ``+`` between digits), repeated up to
    MAX_DEPTH times for nested encodings (``%2534``, ``&amp;#52;``).

Cheap precheck (needs_views): a body that is ASCII, has no NUL, and contains
none of ``\\u``, a JSON escape next to a digit, ``&#`` or ``&name;``,
``%XX``, ``+`` between digits, in a charset that reads ASCII as ASCII, needs
only the raw view; then every function here is exactly the engine's
Masker.mask / contains_pan, at the cost of a few C-speed ``in`` tests.

Confidence: a text view is used only if re-encoding it gives back the
original bytes (undecodable bytes are carried as surrogate escapes, so
stray bytes do not break this). A body is reported undecodable, with a
precise code (UndecodableBody.code, ViewScan.undecodable), when its declared
charset is unknown (``unknown_charset``) or stateful (``stateful_charset``:
UTF-7, ISO-2022, HZ, whose byte spans cannot be mapped), when a charset it
declares (Content-Type or BOM) does not round-trip (``charset_roundtrip``),
when escapes are nested deeper than MAX_DEPTH rounds and still decode
(``escape_depth``), or when two views would rewrite overlapping bytes
differently (``conflicting_views``). mask_views and contains_pan_views raise
UndecodableBody (a ValueError) then, so a caller refuses the body instead of
passing it unread; scan_views reports it and never raises.

Rewriting keeps the form: a JSON-escaped digit ``\\u0034`` becomes
``\\u002a``, ``&#52;`` -> ``&#42;`` (same width), ``%34`` -> ``%2A``, a
fullwidth digit a fullwidth ``＊`` (``%EF%BC%94`` -> ``%EF%BC%8A``), a UTF-16
body stays UTF-16. A digit in another script becomes ``*`` (its byte length
may differ: views are for buffered bodies, whose length is set afterwards).
"""

from __future__ import annotations

import codecs
import html.entities
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass

from pangate.pan.engine import Masker, _counted
from pangate.pan.kinds import PAN_KINDS, Masked

__all__ = ["UndecodableBody", "ViewFinding", "ViewScan", "needs_views", "scan_views", "mask_views",
           "contains_pan_views", "MAX_DEPTH"]

MAX_DEPTH = 3  # escape passes (percent inside JSON inside HTML ...)

UNKNOWN_CHARSET = "unknown_charset"
STATEFUL_CHARSET = "stateful_charset"
CHARSET_ROUNDTRIP = "charset_roundtrip"
ESCAPE_DEPTH = "escape_depth"
CONFLICTING_VIEWS = "conflicting_views"


class UndecodableBody(ValueError):
    """The body cannot be read with confidence; code says why (module docstring)."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


@dataclass(frozen=True, slots=True)
class ViewFinding:
    """A finding with its span in the original bytes. Holds no digits."""
    start: int
    end: int
    kind: str
    brand: str | None
    view: str


@dataclass(frozen=True, slots=True)
class ViewScan:
    findings: tuple[ViewFinding, ...]
    views: tuple[str, ...]
    undecodable: str | None = None  # a code above, None: every view decoded with confidence
    detail: str = ""


# ---- content type and charset -------------------------------------------------------------
def _charset_of(content_type: str) -> str | None:
    for param in (content_type or "").split(";")[1:]:
        k, _, v = param.partition("=")
        if k.strip().lower() == "charset":
            return v.strip().strip("\"'").strip() or None
    return None


_STATEFUL = ("utf-7", "utf_7", "iso2022", "hz")
_ASCII_PROBE = "0123456789 -./_\t\r\n%&#;\\+*abcfuxABCFUX\"'<>=:,{}[]"


def _resolve(name: str):
    """(codec name, error) for a declared charset."""
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        return None, UNKNOWN_CHARSET
    if any(codec.startswith(p) for p in _STATEFUL):
        return None, STATEFUL_CHARSET
    return codec, None


def _ascii_compatible(codec: str) -> bool:
    try:
        return _ASCII_PROBE.encode(codec) == _ASCII_PROBE.encode("ascii")
    except (UnicodeError, LookupError):
        return False


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def _bom(data: bytes):
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec, len(bom)
    return None, 0


def _nul_pattern(data: bytes) -> str | None:
    """UTF-16/32 byte order from where the NULs are: ASCII and Latin-1 in
    UTF-16-LE is "x\\0", and every BMP character in UTF-32-LE is "xx\\0\\0"."""
    sample = data[:4096]
    n = len(sample) // 4 * 4
    if n < 4 or b"\0" not in sample:
        return None
    z = [sample[k:n:4].count(0) for k in range(4)]
    q = n // 4
    # UTF-32: every code point is < 0x110000, so one byte of four is always
    # 0 and the next at most 0x10; text rarely has a NUL in the low byte.
    if z[3] == q and max(sample[2:n:4]) <= 0x10 and z[0] < 0.5 * q:
        return "utf-32-le"
    if z[0] == q and max(sample[1:n:4]) <= 0x10 and z[3] < 0.5 * q:
        return "utf-32-be"
    # UTF-16: ASCII and Latin-1 have their NUL in the high byte; CJK text and
    # U+3000 may put some in the low byte, so the majority decides.
    even, odd = z[0] + z[2], z[1] + z[3]
    if odd >= 2 and odd > even:
        return "utf-16-le"
    if even >= 2 and even > odd:
        return "utf-16-be"
    return None


def _errors(codec: str) -> str:
    return "surrogatepass" if codec.startswith("utf-16") or codec.startswith("utf-32") else "surrogateescape"


# ---- folding: one byte per character, the engine's alphabet --------------------------------
class _Fold(dict):
    def __missing__(self, cp: int) -> int:
        if cp < 128:
            r = cp
        else:
            ch = chr(cp)
            d = unicodedata.decimal(ch, None)
            if d is not None:
                r = 48 + d
            elif 0xFF01 <= cp <= 0xFF5E:  # fullwidth ASCII
                r = cp - 0xFEE0
            elif 0xD800 <= cp <= 0xDFFF or cp == 0xFFFD:  # undecodable: the client sees U+FFFD
                r = 32
            else:
                cat = unicodedata.category(ch)
                if cat in ("Zs", "Cf"):  # NBSP, thin/ideographic spaces, ZW*, soft hyphen, BOM
                    r = 32
                elif cat == "Pd" or cp in (0x2212, 0x2043, 0xFE63):
                    r = 45
                elif cat in ("Zl", "Zp") or cp == 0x85:
                    r = 10
                else:
                    r = 0x80
        self[cp] = r
        return r


_FOLD = _Fold()


def _fold(text: str) -> bytes:
    return text.translate(_FOLD).encode("latin-1")


# ---- layers -----------------------------------------------------------------------------------
class _Base:
    """Layer 0: text decoded from data[base:end] with codec (None: raw bytes as latin-1)."""
    depth = 0

    def __init__(self, name: str, data: bytes, codec: str | None, base: int, end: int, text: str):
        self.name, self.data, self.codec, self.base, self.end, self.text = name, data, codec, base, end, text
        self.err = _errors(codec) if codec else "strict"
        self._ci, self._co = [0], [base]  # checkpoints: character index -> byte offset

    def off(self, i: int) -> int:
        """Byte offset of character i: encodes only from the nearest checkpoint."""
        if self.codec is None:
            return i
        k = bisect_right(self._ci, i) - 1
        j, o = self._ci[k], self._co[k]
        if j != i:
            o += len(self.text[j:i].encode(self.codec, self.err))
            if k == len(self._ci) - 1:
                self._ci.append(i)
                self._co.append(o)
        return o

    def chars(self, i: int):
        return i, i + 1

    def render(self, i: int, c: str) -> str:
        return _same_width(self.text[i], c)

    def encode(self, s: str) -> bytes:
        return s.encode(self.codec or "latin-1", self.err)


_ESC = re.compile(
    r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"   # 1, 2: JSON surrogate pair
    r"|\\u([0-9a-fA-F]{4})"                                              # 3: JSON \uXXXX
    r"|\\([tnrbf/\\\"])"                                                  # 4: JSON short escape
    r"|&#([0-9]{1,7})(;?)"                                                # 5, 6: decimal reference
    r"|&#([xX])([0-9a-fA-F]{1,6})(;?)"                                    # 7, 8, 9: hex reference
    r"|&([A-Za-z][A-Za-z0-9]{1,31};?)"                                    # 10: named reference
    r"|((?:%[c-fC-F][0-9a-fA-F])(?:%[89abAB][0-9a-fA-F]){1,3})"           # 11: %-encoded UTF-8
    r"|%([0-9a-fA-F]{2})"                                                 # 12: %XX
    r"|(?<=[0-9A-Fa-f;+\-])(\+)(?=[0-9+\-%&\\\s])")                                # 13: "+" in a number
_FORM_PLUS = re.compile(r"\+")  # a form body: every "+" is a space
_SHORT = {"t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"'}
_NAMED = html.entities.html5

# Precheck patterns, on bytes (raw) and on text (a decoded view). Each starts
# with a literal, so the regex engine skips ahead to it at memchr speed.
_NEED_BS = r"\\(?:u[0-9a-fA-F]{4}|[tnrbf/][0-9]|(?<=[0-9]\\)[tnrbf/])"
_NEED_AMP = r"&(?:#|[A-Za-z][A-Za-z0-9]{1,31};|nbsp|shy)"
_NEED_PCT = r"%[0-9a-fA-F]{2}"
_NEED_PLUS = r"\+(?<=[0-9A-Fa-f;+\-]\+)[0-9+\-%&\\\s]"
_NEED_B = tuple((c.encode(), re.compile(p.encode()).search)
                for c, p in (("\\", _NEED_BS), ("&", _NEED_AMP), ("%", _NEED_PCT), ("+", _NEED_PLUS)))
_NEED_S = re.compile("|".join((_NEED_BS, _NEED_AMP, _NEED_PCT, _NEED_PLUS)))
# One decoding pass per syntax, outermost first within a round: a JSON API
# carries URLs and HTML, HTML carries URLs. Each pass decodes only its own
# escapes, so a sequence split across syntaxes (a %-encoded UTF-8 character
# whose "%"s are JSON-escaped) is decoded whole once the outer one is gone.
_SYNTAXES = (("json", frozenset((2, 3, 4)), re.compile(_NEED_BS).search),
             ("html", frozenset((5, 6, 7, 8, 9, 10)), re.compile(_NEED_AMP).search),
             ("pct", frozenset((11, 12, 13)), re.compile(_NEED_PCT + "|" + _NEED_PLUS).search))


def _escapes_in(data: bytes) -> bool:
    return any(c in data and search(data) for c, search in _NEED_B)


def _same_width(orig: str, c: str) -> str:
    """A fullwidth digit is replaced by the fullwidth form of the mask character."""
    return chr(ord(c) + 0xFEE0) if "\uff10" <= orig <= "\uff19" and "!" <= c <= "~" else c


_LEGACY = sorted((k for k in _NAMED if not k.endswith(";")), key=len, reverse=True)


def _decode_escape(m):
    """(char, form, end) for an escape match, or None to leave it."""
    r = _decode(m)
    if r is None and m.lastindex == 10 and not m.group(10).endswith(";"):
        # Legacy references need no ";" and may be glued to what follows:
        # "&nbsp4111" is NBSP then "4111" for a browser.
        name = m.group(10)
        for k in _LEGACY:
            if name.startswith(k) and len(_NAMED[k]) == 1:
                return _NAMED[k], "plain", m.start() + 1 + len(k)
        return None
    return r if r is None else (*r, m.end())


def _decode(m):
    g = m.lastindex
    if g == 2:
        hi, lo = int(m.group(1), 16), int(m.group(2), 16)
        return chr(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)), "json_pair"
    if g == 3:
        return chr(int(m.group(3), 16)), "json_u"
    if g == 4:
        return _SHORT[m.group(4)], "plain"
    if g in (5, 6):
        v = int(m.group(5))
        return (chr(v), "html_dec") if 0 < v <= 0x10FFFF else None
    if g in (7, 8, 9):
        v = int(m.group(8), 16)
        return (chr(v), "html_hex") if 0 < v <= 0x10FFFF else None
    if g == 10:
        v = _NAMED.get(m.group(10))
        return (v, "plain") if v is not None and len(v) == 1 else None
    if g == 11:
        try:
            v = bytes.fromhex(m.group(11).replace("%", "")).decode("utf-8")
        except UnicodeDecodeError:
            return None
        return (v, "pct_utf8") if len(v) == 1 else None
    if g == 12:
        v = int(m.group(12), 16)
        # A lone byte >= 0x80 is not UTF-8: a server reads U+FFFD (a separator).
        return (chr(v), "pct") if v < 0x80 else ("\ufffd", "plain")
    if g == 13:
        return " ", "plain"
    return None


def _render_escape(form: str, src: str, c: str) -> str:
    """c written in the same form (and width, hex case) as the escape src."""
    body = src[3:] if form == "html_hex" else src[1:]
    upper = any(ch in "ABCDEF" for ch in body) or (form.startswith("pct") and
                                                   not any(ch in "abcdef" for ch in body))
    if form == "json_u":
        s = "\\u%04x" % ord(c)
        return s.upper().replace("\\U", "\\u") if upper else s
    if form == "html_dec":
        width = len(src) - 2 - src.endswith(";")
        return "&#%0*d" % (width, ord(c)) + (";" if src.endswith(";") else "")
    if form == "html_hex":
        width = len(src) - 3 - src.endswith(";")
        h = "%0*x" % (width, ord(c))
        return "&#" + src[2] + (h.upper() if upper else h) + (";" if src.endswith(";") else "")
    if form in ("pct", "pct_utf8"):
        s = "".join("%%%02x" % b for b in c.encode("utf-8"))
        return s.upper() if upper else s
    return c  # json_pair, plain: the character itself (valid in JSON, HTML and URLs)


class _Esc:
    """One escape-decoding pass over a parent layer."""

    def __init__(self, parent, text: str, idx: list, src: list, shift: list, syntax: str):
        self.parent, self.text, self.idx, self.src, self.shift = parent, text, idx, src, shift
        self.depth = parent.depth + 1
        self.name = parent.name + "+" + syntax

    @classmethod
    def over(cls, parent, syntax: str, groups: frozenset, form: bool = False):
        """The parent's text with this syntax's escapes decoded, or None if it has none."""
        text = parent.text
        out, idx, src, shift = [], [], [], []
        last, n, extra = 0, 0, 0
        matches = (m for m in _ESC.finditer(text) if m.lastindex in groups)
        if form and syntax == "pct" and "+" in text:  # a form body: merge its "+"s in, in order
            matches = sorted([*matches, *_FORM_PLUS.finditer(text)], key=lambda m: m.start())
        for m in matches:
            dec = _decode_escape(m) if m.re is _ESC else (" ", "plain", m.end())
            if dec is None or m.start() < last:
                continue
            a, b = m.start(), dec[2]
            out.append(text[last:a])
            n += a - last
            out.append(dec[0])
            idx.append(n)
            src.append((a, b, dec[1], dec[0]))
            extra += b - a - 1
            shift.append(extra)
            n += 1
            last = b
        if not idx:
            return None
        out.append(text[last:])
        return cls(parent, "".join(out), idx, src, shift, syntax)

    def chars(self, i: int):
        """Parent unit range [a, b) of unit i."""
        k = bisect_right(self.idx, i) - 1
        if k >= 0 and self.idx[k] == i:
            return self.src[k][0], self.src[k][1]
        p = i + (self.shift[k] if k >= 0 else 0)
        return p, p + 1

    def render(self, i: int, c: str) -> str:
        k = bisect_right(self.idx, i) - 1
        if not (k >= 0 and self.idx[k] == i):
            p = i + (self.shift[k] if k >= 0 else 0)
            return self.parent.render(p, c)
        a, b, form, orig = self.src[k]
        s = _render_escape(form, self.parent.text[a:b], _same_width(orig, c))
        if len(s) == b - a:  # same width: each character keeps its own form below
            return "".join(self.parent.render(a + j, ch) for j, ch in enumerate(s))
        return s


def _root_span(layer, i: int, j: int):
    """Layer-0 character range of units i..j-1 of layer."""
    while not isinstance(layer, _Base):
        i = layer.chars(i)[0]
        j = layer.chars(j - 1)[1]
        layer = layer.parent
    return layer, i, j


# ---- building the views -----------------------------------------------------------------------
def needs_views(data: bytes, content_type: str = "") -> bool:
    """The cheap precheck: False when the raw view alone is complete."""
    if not data.isascii() or b"\0" in data:
        return True
    cs = _charset_of(content_type)
    if cs:
        codec, err = _resolve(cs)
        if err or not _ascii_compatible(codec):
            return True
    if _escapes_in(data):
        return True
    return "x-www-form-urlencoded" in (content_type or "").lower() and b"+" in data


def raw_view_suffices(parts) -> bool:
    """True when none of these byte strings (header names and values, read without a
    Content-Type) needs a view beyond its raw bytes: mask_views(part, "", m) is then
    m.mask(part) for each. Tested once over all of them joined: an escape, a NUL or a
    non-ASCII byte in any part is in the whole (the joint can only add false alarms)."""
    blob = b"\n".join(parts)
    return blob.isascii() and b"\0" not in blob and not _escapes_in(blob)


def _text_layers(data: bytes, content_type: str):
    """([layer-0 text views], undecodable code, detail)."""
    layers, code, detail = [], None, ""
    declared = _charset_of(content_type)
    seen = set()

    def add(codec: str, base: int, name: str, declared_here: bool):
        nonlocal code, detail
        end = len(data)
        if codec.startswith("utf-16"):
            end -= (end - base) % 2
        elif codec.startswith("utf-32"):
            end -= (end - base) % 4
        try:
            text = data[base:end].decode(codec, _errors(codec))
            ok = text.encode(codec, _errors(codec)) == data[base:end]
        except (UnicodeError, ValueError):
            ok = False
        if not ok:
            if declared_here and code is None:
                code, detail = CHARSET_ROUNDTRIP, f"the body does not read back as {name}"
            return
        seen.add(codec)
        layers.append(_Base("text:" + codec, data, codec, base, end, text))

    bom_codec, bom_len = _bom(data)
    if declared:
        codec, err = _resolve(declared)
        if err:
            code, detail = err, f"charset {declared!r}"
        else:
            if codec in ("utf-16", "utf-32"):  # byte order from the BOM or the NULs, else BE (RFC 2781)
                nul = _nul_pattern(data)
                if bom_codec and bom_codec.startswith(codec):
                    codec = bom_codec
                else:
                    codec = nul if nul and nul.startswith(codec) else codec + "-be"
            base = bom_len if bom_codec == codec else 0
            if not (data.isascii() and _ascii_compatible(codec)):
                add(codec, base, f"charset {declared}", True)
    if bom_codec and bom_codec not in seen:
        add(bom_codec, bom_len, f"its byte order mark ({bom_codec})", True)
    # Media that no workload reads as text are not sniffed for UTF-16/32.
    binary = (content_type or "").lower().lstrip().startswith(("image/", "audio/", "video/", "font/"))
    sniffed = _nul_pattern(data) if not bom_codec and not binary else None
    if sniffed and sniffed not in seen:
        add(sniffed, 0, sniffed, False)
    if not data.isascii() and not bom_codec and not sniffed:
        try:
            data.decode("utf-8")
            guess = "utf-8"
        except UnicodeDecodeError:
            guess = "cp1252"
        if guess not in seen:
            add(guess, 0, guess, False)
    return layers, code, detail


def _views(data: bytes, content_type: str):
    """([(name, folded bytes, layer)], code, detail); the raw view first."""
    raw = _Base("raw", data, None, 0, len(data), "")
    views = [("raw", data, raw)]
    if not needs_views(data, content_type):
        return views, None, ""
    texts, code, detail = _text_layers(data, content_type)
    primaries = list(texts)
    if not any(_ascii_compatible(t.codec) for t in texts):
        raw.text = data.decode("latin-1")
        primaries.append(raw)
    for t in texts:
        views.append((t.name, _fold(t.text), t))
    form = "x-www-form-urlencoded" in (content_type or "").lower()
    for layer in primaries:
        if not (_NEED_S.search(layer.text) or (form and "+" in layer.text)):
            continue
        for _ in range(MAX_DEPTH):
            changed = False
            for syntax, groups, need in _SYNTAXES:
                if need(layer.text) or (form and syntax == "pct" and "+" in layer.text):
                    nxt = _Esc.over(layer, syntax, groups, form)
                    if nxt is not None:
                        layer, changed = nxt, True
                        views.append((layer.name, _fold(layer.text), layer))
            if not changed:
                break
        else:  # every round decoded something: is there still more?
            if _NEED_S.search(layer.text) and code is None:
                code, detail = ESCAPE_DEPTH, f"escapes nested deeper than {MAX_DEPTH} levels"
    return views, code, detail


def _orig_span(layer, s: int, e: int):
    base, i, j = _root_span(layer, s, e)
    return base.off(i), base.off(j)


# ---- public API -------------------------------------------------------------------------------
_DEFAULT = Masker()
_PLAIN = Masker(sad=False)


def scan_views(data: bytes, content_type: str = "", masker: Masker | None = None) -> ViewScan:
    """Findings of every view, with their spans in the original bytes (deduplicated);
    never raises: an undecodable body is reported in ViewScan.undecodable."""
    data = bytes(data)
    m = masker or _DEFAULT
    views, code, detail = _views(data, content_type)
    found: dict = {}
    for name, vb, layer in views:
        for f in m._scan(vb, 0, len(vb)):
            s, e = (f[0], f[1]) if layer.depth == 0 and layer.codec is None else _orig_span(layer, f[0], f[1])
            key = (s, e, f[4])
            if key not in found:
                found[key] = ViewFinding(s, e, f[4], f[5][0] if f[5] else None, name)
    return ViewScan(tuple(sorted(found.values(), key=lambda f: (f.start, f.end))),
                    tuple(v[0] for v in views), code, detail)


def contains_pan_views(data: bytes, content_type: str = "") -> bool:
    """Outbound DLP: a PAN in any view (SAD not considered). Raises UndecodableBody
    when none is found but the body could not be read with confidence."""
    data = bytes(data)
    views, code, detail = _views(data, content_type)
    for _name, vb, _layer in views:
        if any(f[4] in PAN_KINDS for f in _PLAIN._scan(vb, 0, len(vb))):
            return True
    if code:
        raise UndecodableBody(code, detail)
    return False


def mask_views(data: bytes, content_type: str, masker: Masker) -> tuple[bytes, int]:
    """data with every finding of every view masked in its own representation,
    and the number of values masked. Raises UndecodableBody (module docstring)."""
    data = bytes(data)
    views, code, detail = _views(data, content_type)
    if code:
        raise UndecodableBody(code, detail)
    if len(views) == 1:
        return masker.mask(data)
    edits: list = []
    counted: list = []
    counted_sad: list = []  # the SAD values among counted
    for _name, vb, layer in views:
        finds = masker._scan(vb, 0, len(vb))
        if not finds:
            continue
        out, _ = masker._apply(vb, 0, len(vb), finds)
        raw = layer.depth == 0 and layer.codec is None
        sad = [f for f in finds if f[4] not in PAN_KINDS and vb[f[2]:f[3]].strip(b"*")]
        spans = [(f[0], f[1]) if raw else _orig_span(layer, f[0], f[1]) for f in _counted(finds) + sad]
        counted += spans
        counted_sad += spans[len(spans) - len(sad):]  # the SAD findings come last
        for f in finds:
            for k in range(f[2], f[3]):
                if out[k] != vb[k]:
                    if raw:
                        edits.append((k, k + 1, out[k:k + 1]))
                        continue
                    base, i, j = _root_span(layer, k, k + 1)
                    s = layer.render(k, chr(out[k]))
                    edits.append((base.off(i), base.off(j), base.encode(s)))
    if not edits:
        return data, Masked()
    edits.sort(key=lambda x: (x[0], -x[1]))
    parts, last, prev = [], 0, None
    for s, e, rep in edits:
        if prev is not None and s < prev[1]:
            if e <= prev[1]:  # inside (or equal to) an edit already made: that one covers it
                continue
            raise UndecodableBody(CONFLICTING_VIEWS, f"views disagree on bytes {s}-{prev[1]}")
        parts.append(data[last:s])
        parts.append(rep)
        last, prev = e, (s, e)
    parts.append(data[last:])
    total = _components(counted)
    return b"".join(parts), Masked(total, min(total, _components(counted_sad)))


def _components(spans: list) -> int:
    """Distinct values masked: spans of the same value found in several views overlap."""
    n, end = 0, -1
    for s, e in sorted(spans):
        if s >= end:
            n += 1
            end = e
        else:
            end = max(end, e)
    return n
