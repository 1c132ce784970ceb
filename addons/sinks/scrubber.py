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

import re
import threading

from pangate.credentials.forms import Redactor, echo_forms
from pangate.pan.engine import Masker

# Bearer material by shape. A JWT is three base64url parts, the first a JSON header ("eyJ").
_JWT = r"eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*"
_AUTH = r"(?i:\b(?:bearer|basic)\s+)[A-Za-z0-9+/._~=-]{8,}"
_AUTH_HEADER = r"(?i:(?:proxy-)?authorization)[\"']?\s*[:=,]\s*[\"']?[^\s\"',;}\]]{4,}(?:\s+[^\s\"',;}\]]{8,})?"
TOKEN_TEXT = re.compile("|".join((_JWT, _AUTH_HEADER, _AUTH)))
TOKEN_DATA = re.compile(TOKEN_TEXT.pattern.encode())
REDACTED = "[redacted]"


class SecretRegistry:
    """The injected credentials' echo forms, replaced whole on each policy load (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[str, tuple[str, ...]] = {}
        self.redactor = Redactor()

    def replace(self, secrets: dict[str, tuple[str, str | None]]) -> None:
        """secrets: name -> (value, basic user or None)."""
        values = {name: echo_forms(v, user) for name, (v, user) in secrets.items() if v}
        with self._lock:
            self._values = values
            self.redactor = Redactor(f for forms in values.values() for f in forms)


SECRETS = SecretRegistry()


class SinkScrubber:
    """text(), data() and value() return what may be written; nothing else is ever written."""

    def __init__(self, masker: Masker | None = None, secrets: SecretRegistry = SECRETS):
        self.masker = masker or Masker(sad=True)
        self.secrets = secrets

    def text(self, value: str) -> str:
        if not value:
            return value
        value = self.secrets.redactor.text(value)
        value = TOKEN_TEXT.sub(REDACTED, value)
        return _mask_text(self.masker, value)

    def data(self, value: bytes) -> bytes:
        if not value:
            return value
        value = self.secrets.redactor.data(value)
        value = TOKEN_DATA.sub(REDACTED.encode(), value)
        return _mask_data(self.masker, value)

    def value(self, obj):
        """A JSON-like structure with every string and bytes scrubbed, keys included."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, (bytes, bytearray)):
            return self.data(bytes(obj))
        if isinstance(obj, dict):
            return {self.value(k) if isinstance(k, (str, bytes)) else k: self.value(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.value(v) for v in obj)
        return obj


# The blunt pass: digit groups joined by separators, in any digit script once folded.
_SEP = r"[ \t._/\\\-\u00a0\u00ad\u200b-\u200d\u2060\ufeff]{0,3}"
_RUN = re.compile(r"\d(?:" + _SEP + r"\d){12,}")
_GROUP = re.compile(r"\d+")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _blunt(value: str) -> str:
    """Stars out any Luhn-valid 13-19 digit number in the payment ranges (first digit 2-6).

    The data path is careful about glue and brands to leave order ids alone;
    a sink need not be: a record with an id partly starred loses nothing, a
    record with a card number breaks 3.4.1. Digits of any script count.
    """
    out = None
    for run in _RUN.finditer(value):
        groups = [(m.start() + run.start(), m.group()) for m in _GROUP.finditer(run.group())]
        folded = ["".join(str(int(c)) for c in g) for _, g in groups]
        for i in range(len(groups)):
            digits = ""
            for j in range(i, len(groups)):
                digits += folded[j]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and digits[0] in "23456" and _luhn(digits):
                    out = out if out is not None else list(value)
                    _star(out, groups[i:j + 1], len(digits))
    return value if out is None else "".join(out)


def _star(chars: list, groups, n: int) -> None:
    """Keep the first six and the last four digits of the n, star the rest."""
    k = 0
    for start, g in groups:
        for off in range(len(g)):
            if 6 <= k < n - 4:
                chars[start + off] = "*"
            k += 1


def _mask_text(masker: Masker, value: str) -> str:
    value = masker.mask_text(value)[0]
    return _blunt(value) if _RUN.search(value) else value


def _mask_data(masker: Masker, value: bytes) -> bytes:
    value = masker.mask(value)[0]
    text = value.decode("utf-8", "surrogateescape")
    return _blunt(text).encode("utf-8", "surrogateescape") if _RUN.search(text) else value


_DEFAULT: SinkScrubber | None = None


def default() -> SinkScrubber:
    """The process's scrubber (the policy's masking mode is irrelevant at rest: always masked)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = SinkScrubber()
    return _DEFAULT
