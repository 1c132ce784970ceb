"""An independent at-rest scan: does any test card number or secret sit in what a gateway wrote?

Deliberately not the product's engine: it looks for the PANs the tests know
(every brand and length of the corpus, the demo upstream's, and every
Luhn-valid card number written in a test source), in every normalized form a
reader could recover — raw, UTF-16/32, JSON escapes, HTML/XML character
references, percent-encoding, other digit scripts, and any separators between
the digits — and for the secrets the tests inject, in their echo forms.
"""

from __future__ import annotations

import base64
import html
import json
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, unquote_plus

TESTS = Path(__file__).resolve().parent
_CANDIDATE = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
# What may stand between two digits of a PAN and still be read as one number.
_SEPARATORS = re.compile(r"[\s._/\\+\-\u00a0\u00ad\u200b-\u200d\u2060\ufeff*'\"]+")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\([\\/bfnrt\"])")
_JSON_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@lru_cache(maxsize=1)
def known_pans() -> frozenset[str]:
    from pan_corpus import FALSE_POSITIVES, corpus_pans

    from pangate.dev.demo_upstream import TEST_PANS

    harmless = {re.sub(r"\D", "", v) for v in FALSE_POSITIVES.values()}
    found = set(corpus_pans()) | set(TEST_PANS) | {"4111111111111111"}
    for src in TESTS.rglob("*.py"):
        for m in _CANDIDATE.finditer(src.read_text(errors="replace")):
            d = m.group().replace(" ", "").replace("-", "")
            if 13 <= len(d) <= 19 and d[0] in "23456" and luhn(d):
                found.add(d)
    return frozenset(p for p in found if p not in harmless and not any(p in h for h in harmless))


def _json_unescape(text: str) -> str:
    def one(m):
        if m.group(1):
            return chr(int(m.group(1), 16))
        c = m.group(2)
        return _JSON_SIMPLE.get(c, c)
    return _JSON_ESCAPE.sub(one, text)


def _fold_digits(text: str) -> str:
    return "".join(str(unicodedata.decimal(c)) if not c.isascii() and c.isdecimal() else c for c in text)


def views(data: bytes) -> list[str]:
    """Every text a reader could recover from data."""
    texts = [data.decode("utf-8", "replace"), data.decode("latin-1")]
    if b"\0" in data:
        for enc in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
            for skip in range(4 if "32" in enc else 2):
                texts.append(data[skip:].decode(enc, "replace"))
    out = []
    for t in texts:
        layer = {t, _json_unescape(t), html.unescape(t), unquote_plus(t), unquote(t)}
        layer |= {html.unescape(_json_unescape(x)) for x in list(layer)}
        layer |= {unquote_plus(x) for x in list(layer)}
        out += [_fold_digits(x) for x in layer]
    return out


def pans_in(data: bytes | str, pans: frozenset[str] | None = None) -> set[str]:
    """The known PANs that data holds in any recoverable form."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    pans = pans if pans is not None else known_pans()
    hits = set()
    for text in views(data):
        flat = _SEPARATORS.sub("", text)
        for run in re.finditer(r"\d{13,}", flat):
            r = run.group()
            for n in range(13, 20):
                for i in range(0, len(r) - n + 1):
                    if r[i:i + n] in pans:
                        hits.add(r[i:i + n])
    return hits


def secret_forms(secret: str) -> list[str]:
    raw = secret.encode()
    forms = {secret, secret.lower(), json.dumps(secret)[1:-1].replace("/", "\\/"),
             base64.b64encode(raw).decode().rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    return [f for f in forms if len(f) >= 6]


def secrets_in(data: bytes | str, secrets: list[str]) -> set[str]:
    if isinstance(data, bytes):
        data = data.decode("latin-1")
    lowered = [v.lower() for v in views(data.encode("latin-1", "replace"))]
    hits = set()
    for s in secrets:
        for f in secret_forms(s):
            if any(f.lower() in v for v in lowered):
                hits.add(s)
    return hits


def at_rest_files(workdir: Path) -> list[Path]:
    """What a gateway wrote under its work folder: audit trail, recordings, state, exports."""
    skip = {"policies.yaml"}
    return [p for p in workdir.rglob("*")
            if p.is_file() and p.name not in skip and not p.name.endswith((".key", ".pem"))]


def leaks(workdir: Path, log_text: str, secrets: list[str]) -> list[str]:
    """Where a known PAN or secret sits at rest: 'FILE: PAN…' lines (PANs shown masked)."""
    out = []
    sources = [("gateway output", log_text.encode("utf-8", "surrogatepass"))]
    sources += [(str(p.relative_to(workdir)), p.read_bytes()) for p in at_rest_files(workdir)]
    for name, data in sources:
        for pan in sorted(pans_in(data)):
            out.append(f"{name}: card number {pan[:6]}…{pan[-4:]}")
        for s in sorted(secrets_in(data, secrets)):
            out.append(f"{name}: secret {s[:3]}…")
    return out
