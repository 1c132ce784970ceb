"""Every spelling in which an injected credential can come back, and one redactor for all of them.

An upstream that echoes what it received (a debug endpoint, an error page, a
request mirror) hands the workload the secret it must never hold, and not
always byte for byte: JSON writers escape `/` as `\\/`, URL writers
percent-encode (in upper or lower hex), frameworks lower-case header values,
and base64 shows up both for `user:pass` and for a token wrapped whole or
inside a larger base64 blob. So the redactor matches forms, not one string:

- the value as read, lower- and upper-cased (matched case-insensitively);
- JSON-escaped (`\\/`; `\\uXXXX` for every non-alphanumeric character, and
  for every character);
- percent-encoded (quote and quote_plus, and every byte as `%XX`; upper or
  lower hex: matched case-insensitively);
- base64 (standard and URL-safe, with or without padding) of the value and,
  for basic credentials, of `user:pass`; plus the stable middle of the value's
  base64 at each of the three alignments it can have inside a longer blob.

Forms shorter than MIN_FORM characters are not matched on their own: a
four-character "secret" would star out half of every body.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

from pangate.pan.engine import native_function

# any(n in value.lower() for n in needles) in one pass in C, where the native engine runs.
FOUND_FOLDED = native_function("found_folded")


def any_in_lowered(value, needles: tuple) -> bool:
    """any(n in value.lower() for n in needles) for bytes: one pass in C, without the lowered
    copy, where the native engine runs (needles lower-case, 2 bytes or more)."""
    if FOUND_FOLDED is not None:
        try:
            return FOUND_FOLDED(value, needles)
        except Exception:  # a native failure costs time, never a miss: the Python test decides
            pass
    low = value.lower()
    return any(n in low for n in needles)

MIN_FORM = 6
STARS = "*"


def _b64_cores(raw: bytes) -> list[str]:
    """The base64 text that raw always encodes to, whatever its offset inside a longer blob."""
    out = []
    for lead in range(3):
        enc = base64.b64encode(b"\0" * lead + raw).decode()
        # Characters touched by the lead bytes, and a final partial group, vary with the neighbours.
        start = (lead * 8 + 5) // 6
        end = (len(enc.rstrip("=")) * 6 - ((3 - (lead + len(raw)) % 3) % 3) * 8) // 6
        core = enc[start:end]
        out += [core, core.replace("+", "-").replace("/", "_")]
    return out


def echo_forms(value: str, basic_user: str | None = None) -> tuple[str, ...]:
    """The spellings of value worth redacting (longest first, so a longer form wins over its parts)."""
    if not value:
        return ()
    raw = value.encode()
    forms = {value, value.lower(), value.upper()}
    forms.add(json.dumps(value)[1:-1].replace("/", "\\/"))
    forms.add("".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in value))
    forms.add("".join(f"\\u{ord(c):04x}" for c in value))
    forms.add(quote(value, safe=""))
    forms.add(quote_plus(value))
    forms.add("".join(f"%{b:02X}" for b in raw))
    for blob in (raw, f"{basic_user}:{value}".encode() if basic_user is not None else None):
        if blob is None:
            continue
        std = base64.b64encode(blob).decode()
        forms.update({std, std.rstrip("="), base64.urlsafe_b64encode(blob).decode().rstrip("=")})
    forms.update(_b64_cores(raw))
    return tuple(sorted((f for f in forms if len(f) >= MIN_FORM), key=len, reverse=True))


_PIECE = 8  # length of the pieces a long value is searched for (a form shorter is its own piece)


def _cover(forms) -> tuple:
    """Few pieces such that every form contains one: for each form, its piece that most forms
    share (one count over all pieces; built on the event loop at a policy load, so linear)."""
    grams = {f: sorted({f[i:i + _PIECE] for i in range(max(len(f) - _PIECE, 0) + 1)}) for f in forms}
    shared: dict = {}
    for gs in grams.values():
        for g in gs:
            shared[g] = shared.get(g, 0) + 1
    return tuple(sorted({max(gs, key=shared.__getitem__) for gs in grams.values()}))


class _Probe:
    """Whether any of a set of lower-cased forms occurs in a lower-cased value: a necessary
    condition for the redactor's regex to match, at a fraction of its cost.

    A short value (most header names and values) is tested by its MIN_FORM-long windows
    against the forms' first MIN_FORM characters: a form found at i starts with the window at
    i. A long one is searched for a few short pieces that, together, lie inside every form
    (finding a form's piece is necessary for finding the form): one pass per piece instead of
    one per form, over a whole body."""

    SHORT = 256
    KEPT = 4096  # short values remembered as holding no form (header values repeat), then forgotten

    def __init__(self, forms):
        forms = sorted(set(forms), key=len)
        self.misses: set = set()
        self.heads = frozenset(f[:MIN_FORM] for f in forms)
        self.needles = _cover(forms)
        self._native = (self.needles if FOUND_FOLDED is not None
                        and all(isinstance(n, bytes) and len(n) >= 2 for n in self.needles) else None)

    def found_in_data(self, value) -> bool:
        """found_in(value.lower()) for bytes, without the lowered copy of a long value where C runs."""
        if self._native is not None and len(value) > self.SHORT:
            return any_in_lowered(value, self._native)
        return self.found_in(value.lower())

    def found_in(self, low) -> bool:
        if len(low) > self.SHORT:
            return any(f in low for f in self.needles)
        if low in self.misses:
            return False
        heads = self.heads
        if any(low[i:i + MIN_FORM] in heads for i in range(len(low) - MIN_FORM + 1)):
            return True
        if len(self.misses) >= self.KEPT:
            self.misses.clear()
        self.misses.add(low)
        return False


class Redactor:
    """Replaces every form of the registered secrets with stars of the same length.

    Same length keeps Content-Length, JSON string framing and byte offsets valid.
    Matching is case-insensitive: percent-encoding hex case and lower-cased
    echoes are both common.
    """

    def __init__(self, forms=()):
        self.forms = tuple(sorted({f for f in forms if len(f) >= MIN_FORM}, key=len, reverse=True))
        self.longest = max((len(f) for f in self.forms), default=0)
        # The regexes are compiled when a probe first finds something (about 20 ms for one
        # secret's forms): a policy load builds redactors on the event loop.
        self._alt = "|".join(re.escape(f) for f in self.forms) if self.forms else None
        self._compiled: tuple | None = None
        # A first look before the regex, which is slow (IGNORECASE alternation: hundreds of
        # microseconds per KB) and runs on every string a recording stores. ASCII-lowered
        # substring tests find exactly what the regex can match in ASCII text and in bytes
        # (bytes IGNORECASE folds ASCII only). Unicode folding (`ſ` matches `s`, `K` matches
        # `k`) is left to the regex: non-ASCII text, or a non-ASCII form, always takes it.
        self._probe_text = _Probe({f.lower() for f in self.forms}) if all(map(str.isascii, self.forms)) else None
        self._probe_data = _Probe({f.encode().lower() for f in self.forms})

    def __bool__(self) -> bool:
        return bool(self.forms)

    def _regexes(self) -> tuple:
        if self._compiled is None:  # two threads may both compile: the same patterns either way
            self._compiled = (re.compile(self._alt, re.IGNORECASE), re.compile(self._alt.encode(), re.IGNORECASE))
        return self._compiled

    def may_match_text(self, value: str) -> bool:
        """False only when text() would return value unchanged (a cheap test)."""
        if self._alt is None:
            return False
        if self._probe_text is None or not value.isascii():
            return True
        return self._probe_text.found_in(value.lower())

    def may_match_data(self, value: bytes) -> bool:
        """False only when data() would return value unchanged (a cheap test)."""
        return self._alt is not None and self._probe_data.found_in_data(value)

    def text(self, value: str) -> str:
        if self._alt is None or not value or not self.may_match_text(value):
            return value
        return self._regexes()[0].sub(lambda m: STARS * len(m.group()), value)

    def data(self, value: bytes) -> bytes:
        if self._alt is None or not value or not self.may_match_data(value):
            return value
        return self._regexes()[1].sub(lambda m: b"*" * len(m.group()), value)

    def stream(self) -> "StreamRedactor":
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a byte stream chunk by chunk, holding back what could start a form split across chunks."""

    def __init__(self, redactor: Redactor):
        self.r = redactor
        self.keep = max(redactor.longest - 1, 0)
        self.pending = b""
        self.hits = 0  # forms starred so far

    def _redact(self, data: bytes) -> bytes:
        out = self.r.data(data)
        if out != data:
            self.hits += 1
        return out

    def feed(self, chunk: bytes) -> bytes:
        if not self.r:
            return chunk
        buf = self._redact(self.pending + chunk)
        if len(buf) <= self.keep:
            self.pending = buf
            return b""
        cut = len(buf) - self.keep
        self.pending = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        out, self.pending = self._redact(self.pending), b""
        return out
