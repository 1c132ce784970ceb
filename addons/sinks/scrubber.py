"""One scrubber per sink: nothing raw reaches a file, a log line, an error body or a collector.

Data-path masking is the first wall. This is the second, and it is
structural: every sink (audit records, recordings, log output, refusal
bodies, webhooks, SIEM export, metrics labels) hands what it is about to write
to `SinkScrubber` at one choke point, so a new field cannot skip it. It
removes, in any string it is given:

- card numbers and SAD, in every form the PAN engine's normalized views read
  (escapes, entities, percent-encoding, other digit scripts, separators);
- every echo form of the credentials pangate injects (`SECRETS`, filled by the
  credentials stage on each policy load);
- bearer material: JWTs (OIDC and pangate tokens), and whatever follows
  `Bearer`/`Basic` or a Proxy-Authorization/Authorization header name.

It is deliberately blunter than the data path: a sink has no client waiting
for well-formed bytes, so when in doubt it stars out more.
"""

from __future__ import annotations

import json
import re
import threading

from pangate.credentials.forms import Redactor, any_in_lowered, echo_forms
from pangate.pan.engine import Masker, native_function

# Bearer material by shape. A JWT is three base64url parts, the first a JSON header ("eyJ").
_JWT = r"eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*"
_AUTH = r"(?i:\b(?:bearer|basic)\s+)[A-Za-z0-9+/._~=-]{8,}"
# "Authorization: x", authorization=x, ("authorization", "x"). Not the next member of a JSON
# object ("... no authorization", "code": ...): a value followed by `":` is a key, left alone,
# or scrubbing a serialized record or refusal body would break its JSON.
_VALUE = r"[^\s\"',;}\]]"
_AUTH_HEADER = (r"(?i:(?:proxy-)?authorization)[\"']?\s*[:=,]\s*[\"']?(?!" + _VALUE + r"{4,}[\"']\s*:)"
                + _VALUE + r"{4,}(?:\s+" + _VALUE + r"{8,})?")
TOKEN_TEXT = re.compile("|".join((_JWT, _AUTH_HEADER, _AUTH)))
TOKEN_DATA = re.compile(TOKEN_TEXT.pattern.encode())
REDACTED = "[redacted]"
# What must be in a string for TOKEN_TEXT or the PAN engine's SAD rules (its anchors) to find
# anything: the cheap test before the regexes, on the lower-cased string (substring tests:
# several times faster than even a literal alternation, over a whole body).
_TOKEN_WORDS = ("eyj", "bearer", "basic", "authorization")
_SAD_WORDS = ("cvv", "cvc", "cid", "csc", "pin", "track", "security")
_WORDS = {str: (_TOKEN_WORDS, _TOKEN_WORDS + _SAD_WORDS, _SAD_WORDS),
          bytes: tuple(tuple(w.encode() for w in ws) for ws in (_TOKEN_WORDS, _TOKEN_WORDS + _SAD_WORDS, _SAD_WORDS))}


def _words(low, which: int) -> tuple:
    return _WORDS[bytes if isinstance(low, (bytes, bytearray)) else str][which]


def _token_hint(low) -> bool:
    return any(w in low for w in _words(low, 0))


def _hint(low) -> bool:
    return any(w in low for w in _words(low, 1))


def _sad_hint(low) -> bool:
    return any(w in low for w in _words(low, 2))


_NATIVE_HINT_LEN = 256  # shorter values: lowering and a few `in` tests cost less than the call


def _data_hint(value, which: int) -> bool:
    """_hint / _token_hint (which 1 / 0) of value.lower(), for bytes; in one pass in C when long."""
    words = _WORDS[bytes][which]
    if len(value) > _NATIVE_HINT_LEN:
        return any_in_lowered(value, words)
    low = value.lower()
    return any(w in low for w in words)


# Fewer ASCII digits than this in an ASCII string: no card number in any form fits (a PAN has
# 12 digits at least, and every escape of a digit -- %34, \u0034, \x34, &#52;, &#x34; -- spells
# digits itself).
_MIN_DIGITS = 12
_DIGITS = b"0123456789"
LABEL_MAX = 64


# Identifiers pangate and mitmproxy generate (uuid4 hex request ids, connection and flow uuids,
# approval ids, policy digests): random hex whose digits line up as a Luhn-valid number about
# once in a thousand, and starring one would lose the way to find its record or flow. Exempt
# only under these keys and only in exactly the generated shape, with a letter in it (an
# all-digit value is scrubbed like any other).
_HEX_ID = re.compile(r"(?=[0-9]*[a-f])[0-9a-f]{20}")
_UUID = re.compile(r"(?=[0-9-]*[a-f])[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_APPROVAL_ID = re.compile(r"apr_(?=[0-9]*[a-f])[0-9a-f]{16}")
_SHA256 = re.compile(r"(?=[0-9]*[a-f])[0-9a-f]{64}")
_KEY_ID = re.compile(r"(?=[0-9]*[a-f])[0-9a-f]{16}")
_ED25519_SIG = re.compile(r"[A-Za-z0-9+/]{86}==")  # base64 of 64 bytes
_ID_OR_APPROVAL = re.compile(f"{_UUID.pattern}|{_APPROVAL_ID.pattern}")
GENERATED_IDS = {"request_id": _HEX_ID, "replayed_from": _HEX_ID, "connection": _UUID, "id": _ID_OR_APPROVAL,
                 "approval_id": _APPROVAL_ID, "policy": _SHA256, "digest": _SHA256, "previous": _SHA256,
                 # the audit chain's own fields: a copy of a line (export, stdout) must still verify
                 "prev": _SHA256, "head": _SHA256, "last_removed_hash": _SHA256, "key_id": _KEY_ID,
                 "sig": _ED25519_SIG}


def generated_id(key, value: str) -> bool:
    """True when value, under key, is an identifier in exactly the shape pangate or mitmproxy makes."""
    shape = GENERATED_IDS.get(key)
    return shape is not None and shape.fullmatch(value) is not None


class SecretRegistry:
    """The injected credentials' echo forms, replaced whole on each policy load (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[str, tuple[str, ...]] = {}
        self.redactor = Redactor()  # replaced whole: a reader takes it once per value
        self.generation = 0  # bumped on each replace(): what was clean before may not be now

    def replace(self, secrets: dict[str, tuple[str, str | None]]) -> None:
        """secrets: name -> (value, basic user or None)."""
        values = {name: echo_forms(v, user) for name, (v, user) in secrets.items() if v}
        with self._lock:
            self._values = values
            self.redactor = Redactor(f for forms in values.values() for f in forms)
            self.generation += 1


SECRETS = SecretRegistry()
_JSON_LINE_MAX = 1 << 20  # larger "JSON" lines are scrubbed as text
_CLEAN_MAX = 4096  # short strings known clean under the current secrets (records repeat a small vocabulary)
_CLEAN_LEN = 256


class SinkScrubber:
    """text(), data() and value() return what may be written; nothing else is ever written."""

    def __init__(self, masker: Masker | None = None, secrets: SecretRegistry = SECRETS):
        self.masker = masker or Masker(sad=True)
        self.secrets = secrets
        self._clean: set[str] = set()
        self._clean_gen = -1

    def known_clean(self) -> set[str]:
        """Strings already found to need nothing under the current secrets (a hot loop may test
        membership itself before calling text()). Emptied when the secrets change."""
        gen = self.secrets.generation
        if gen != self._clean_gen:
            self._clean = set()
            self._clean_gen = gen
        return self._clean

    def text(self, value: str) -> str:
        if not value:
            return value
        clean = self.known_clean()
        if value in clean:
            return value
        original = value
        ascii_ = value.isascii()
        low = value.lower() if ascii_ else ""
        redactor = self.secrets.redactor
        if redactor.may_match_text(value):
            value = redactor.text(value)
            ascii_ = value.isascii()
            low = value.lower() if ascii_ else ""
        if not (ascii_ and len(value) - len(value.encode("ascii").translate(None, _DIGITS)) < _MIN_DIGITS
                and not _hint(low)):
            if not ascii_ or _token_hint(low):
                value = TOKEN_TEXT.sub(REDACTED, value)
            value = _mask_text(self.masker, value)
        if len(value) <= _CLEAN_LEN and value == original:
            if len(clean) >= _CLEAN_MAX:
                clean.clear()
            clean.add(value)
        return value

    def data(self, value: bytes) -> bytes:
        if not value:
            return value
        redactor = self.secrets.redactor
        if redactor.may_match_data(value):
            value = redactor.data(value)
        ascii_ = value.isascii()
        if ascii_ and len(value) - len(value.translate(None, _DIGITS)) < _MIN_DIGITS and not _data_hint(value, 1):
            return value
        if not ascii_ or _data_hint(value, 0):
            value = TOKEN_DATA.sub(REDACTED.encode(), value)
        return _mask_data(self.masker, value)

    def value(self, obj, key=None):
        """A JSON-like structure with every string and bytes scrubbed, keys included; an
        identifier pangate or mitmproxy generated is kept under its key (generated_id), as in
        the audit trail: a policy digest's hex can line up as a Luhn-valid number."""
        if isinstance(obj, str):
            return obj if key is not None and generated_id(key, obj) else self.text(obj)
        if isinstance(obj, (bytes, bytearray)):
            return self.data(bytes(obj))
        if isinstance(obj, dict):
            return {self.value(k) if isinstance(k, (str, bytes)) else k: self.value(v, k) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.value(v) for v in obj)
        return obj

    def line(self, value: str) -> str:
        """One output line. A JSON object (an exported audit record, say) is scrubbed value by
        value, so it stays JSON and its generated ids and chain hashes keep their shape; it is
        re-serialized only if something changed. Anything else is scrubbed as text."""
        body = value.rstrip("\r\n")
        if body.startswith("{") and body.endswith("}") and len(body) < _JSON_LINE_MAX:
            try:
                obj = json.loads(body)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                clean = self._json(obj, None)
                if clean == obj:
                    return value
                return json.dumps(clean, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + value[len(body):]
        return self.text(value)

    def line_data(self, value: bytes) -> bytes:
        """line() for bytes (undecodable bytes are kept as they were, and scrubbed as data)."""
        if value.lstrip()[:1] == b"{":
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                return self.data(value)
            out = self.line(text)
            return value if out is text else out.encode("utf-8")
        return self.data(value)

    def _json(self, obj, key):
        if isinstance(obj, str):
            return obj if key is not None and generated_id(key, obj) else self.text(obj)
        if isinstance(obj, dict):
            return {self.text(k): self._json(v, k) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._json(v, None) for v in obj]
        return obj

    def label(self, value, limit: int = LABEL_MAX) -> str:
        """A metrics label value: scrubbed first (a cut must not leave a partial card number
        readable), then bounded in length and free of control characters."""
        text = self.text(value if isinstance(value, str) else str(value))
        text = _CONTROL.sub("?", text)
        return text if len(text) <= limit else text[:max(limit - 1, 0)] + "\u2026"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# The blunt pass: digit groups joined by separators, in any digit script once folded. NUL joins
# the digits of UTF-16/32 text read as bytes; `+` is a form-encoded space.
_SEPCHARS = "\\s._/\\\\+*'\"\\-\\x00\\u00a0\\u00ad\\u200b-\\u200d\\u2060\\ufeff"
_SEP = "[" + _SEPCHARS + "]{0,4}"
_RUN = re.compile(r"\d(?:" + _SEP + r"\d){12,}")
_GROUP = re.compile(r"\d+")
# A cheap necessary condition for _RUN (one character class, no backtracking).
_CANDIDATE = re.compile(r"[\d" + _SEPCHARS + r"]{13,}")
# The PAN engine looks no further than 12 bytes in a row of digits, spaces and dashes (scan._Z12).
_ENGINE_RUN = re.compile(r"[0-9 \-]{12}")
# Escaped digits: JSON/Python \uXXXX and \xXX, HTML/XML character references, percent-encoding.
_ESCAPES = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|&#[xX]([0-9a-fA-F]{1,6});?|&#([0-9]{1,7});?"
                      r"|%([0-9a-fA-F]{2})")
_ESCAPE_LEAD = re.compile(r"[\\&%]")
# A stretch that may spell a number once unescaped (also layered: %26%2352%3B, \u0026#52;).
_CLUSTER = re.compile(r"[0-9A-Fa-fuUxX#;&%" + _SEPCHARS + r"]{15,}")
_LAYERS = 3


# The stretches _CANDIDATE and _CLUSTER find, located in ASCII text without running them over
# the whole string (each costs tens of milliseconds per MB of digit-rich text): the text's
# bytes are translated to a mark per character class ("d" in it, "." not), then found with
# bytes.find. Tables derived from the patterns' own classes, so the two cannot drift.
def _class_table(pattern: re.Pattern) -> bytes:
    cls = re.compile(pattern.pattern.rsplit("{", 1)[0])
    return bytes(0x64 if cls.fullmatch(chr(b)) else 0x2E for b in range(128)) + b"." * 128


_CANDIDATE_MARKS = _class_table(_CANDIDATE)
_CLUSTER_MARKS = _class_table(_CLUSTER)
_CANDIDATE_LEN = 13
_ASCII_SEPS = "".join(chr(b) for b in range(128) if _CANDIDATE_MARKS[b] == 0x64 and not chr(b).isdigit())
_CLUSTER_LEN = 15


def _stretches(value: str, pattern: re.Pattern, marks: bytes, least: int) -> list[tuple[int, int]]:
    """(start, end) of each maximal stretch of `least`+ characters of pattern's class: what
    pattern.finditer(value) spans."""
    if not value.isascii():
        return [m.span() for m in pattern.finditer(value)]
    text = value.encode("ascii").translate(marks)
    run, spans, pos = b"d" * least, [], 0
    # The first run of `least` marks after a non-member (or the start) begins its stretch.
    while (i := text.find(run, pos)) >= 0:
        j = text.find(b".", i)
        pos = j = len(text) if j < 0 else j
        spans.append((i, j))
    return spans


def _candidates(value: str) -> list[tuple[int, int]]:
    return _stretches(value, _CANDIDATE, _CANDIDATE_MARKS, _CANDIDATE_LEN)


def _clusters_with_escapes(value: str) -> list[tuple[int, int]]:
    """The _CLUSTER stretches that hold an escape lead (the others decode to themselves)."""
    return [(a, b) for a, b in _stretches(value, _CLUSTER, _CLUSTER_MARKS, _CLUSTER_LEN)
            if _ESCAPE_LEAD.search(value, a, b)]


# Luhn over a string of ASCII digits without a Python-level loop: the digit sum of a string
# is the byte sum of its encoding less 48 per character; a doubled digit's digit sum is what
# _DOUBLED translates it to.
_DOUBLED = str.maketrans("0123456789", "0246813579")


def _luhn(digits: str) -> bool:
    odd, even = digits[-1::-2], digits[-2::-2].translate(_DOUBLED)
    return (sum(odd.encode()) + sum(even.encode()) - 48 * len(digits)) % 10 == 0


def _ascii_digits(group: str) -> str:
    return group if group.isascii() else "".join(str(int(c)) for c in group)


def _card_digits(value: str, spans: list | None = None) -> list[int]:
    """Positions of the digits to star: of every Luhn-valid 13-19 digit number in the payment
    ranges (first digit 2-6), all but the first six and the last four.

    The data path is careful about glue and brands to leave order ids alone;
    a sink need not be: a record with an id partly starred loses nothing, a
    record with a card number breaks 3.4.1. Digits of any script count.
    """
    out: list[int] = []
    for a, b in _candidates(value) if spans is None else spans:
        stretch = value[a:b]
        bare = stretch.strip(_ASCII_SEPS)
        if bare.isascii() and bare.isdigit():
            # One group of ASCII digits (a timestamp, an id, a bare card number): the common
            # case, and the only candidate in it is the whole group (what _RUN would match).
            if 13 <= len(bare) <= 19 and bare[0] in "23456" and _luhn(bare):
                base = a + len(stretch) - len(stretch.lstrip(_ASCII_SEPS))
                out.extend(range(base + 6, base + len(bare) - 4))
            continue
        for run in _RUN.finditer(value, a, b):
            _run_stars(run, out)
    return out


# The blunt pass over ASCII text in C (pan/_pannative.c blunt_stars): over a digit-rich 1 MB
# body the per-run Python work below is most of the second wall's cost. Only where the process
# runs the native engine, so a PANGATE_ENGINE=python run exercises the Python pass end to end.
_NATIVE_STARS = native_function("blunt_stars")
_ASCII_SEPS_BYTES = _ASCII_SEPS.encode("ascii")


def _card_stars(value: str) -> list[int]:
    """The positions _card_digits(value) returns (in any order), in C for ASCII text."""
    if _NATIVE_STARS is not None and value.isascii():
        try:
            ranges = _NATIVE_STARS(value.encode("ascii"), _ASCII_SEPS_BYTES)
        except Exception:  # a native failure costs time, never a star: the Python pass decides
            ranges = None
        if ranges is not None:
            return [p for a, b in ranges for p in range(a, b)]
    spans = _candidates(value)
    return _card_digits(value, spans) if spans else []


def _run_stars(run: re.Match, out: list[int]) -> None:
    text, base = run.group(), run.start()
    groups = [(m.start() + base, m.group()) for m in _GROUP.finditer(text)]
    folded = [_ascii_digits(g) for _, g in groups]
    for i in range(len(groups)):
        digits = ""
        for j in range(i, len(groups)):
            digits += folded[j]
            if len(digits) > 19:
                break
            if len(digits) >= 13 and digits[0] in "23456" and _luhn(digits):
                k = 0
                for start, g in groups[i:j + 1]:
                    for off in range(len(g)):
                        if 6 <= k < len(digits) - 4:
                            out.append(start + off)
                        k += 1


def _blunt(value: str) -> str:
    """value with every card number found by the blunt pass starred (raw, then unescaped)."""
    stars = _card_stars(value)
    if "\\" in value or "&" in value or "%" in value:  # _ESCAPE_LEAD, without a regex over it all
        for start, end in _clusters_with_escapes(value):
            for a, b in _escaped_cards(value[start:end]):
                stars.extend(range(start + a, start + b))
    if not stars:
        return value
    # Rebuilt from slices: a list of every character of a 1 MB body costs more than the scan.
    out, pos = [], 0
    for p in sorted(set(stars)):
        out.append(value[pos:p])
        out.append("*")
        pos = p + 1
    out.append(value[pos:])
    return "".join(out)


def _unescape(s: str) -> tuple[str, list[tuple[int, int]]]:
    """s with one layer of escapes decoded, and for each character the span of s it came from."""
    chars: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _ESCAPES.finditer(s):
        for i in range(pos, m.start()):
            chars.append(s[i])
            spans.append((i, i + 1))
        g = m.lastindex
        code = int(m.group(g), 10 if g == 4 else 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            for i in range(m.start(), m.end()):
                chars.append(s[i])
                spans.append((i, i + 1))
        else:
            chars.append(chr(code))
            spans.append(m.span())
        pos = m.end()
    for i in range(pos, len(s)):
        chars.append(s[i])
        spans.append((i, i + 1))
    return "".join(chars), spans


def _escaped_cards(cluster: str) -> list[tuple[int, int]]:
    """Spans of cluster (escapes whole) to star: the digits the blunt pass stars once decoded."""
    if not _ESCAPE_LEAD.search(cluster):
        return []
    view, spans = cluster, [(i, i + 1) for i in range(len(cluster))]
    out: list[tuple[int, int]] = []
    for _ in range(_LAYERS):
        decoded, inner = _unescape(view)
        if decoded == view:
            break
        spans = [(spans[a][0], spans[b - 1][1]) for a, b in inner]
        view = decoded
        if _RUN.search(view):
            out += [spans[p] for p in _card_digits(view)]
        if not _ESCAPE_LEAD.search(view):
            break
    return out


def _mask_text(masker: Masker, value: str) -> str:
    if not value.isascii() or _ENGINE_RUN.search(value) or _sad_hint(value.lower()):
        value = masker.mask_text(value)[0]
    return _blunt(value)


def _mask_data(masker: Masker, value: bytes) -> bytes:
    value = masker.mask(value)[0]
    text = value.decode("utf-8", "surrogateescape")
    out = _blunt(text)
    return value if out is text else out.encode("utf-8", "surrogateescape")


_DEFAULT: SinkScrubber | None = None


def default() -> SinkScrubber:
    """The process's scrubber (the policy's masking mode is irrelevant at rest: always masked)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = SinkScrubber()
    return _DEFAULT
