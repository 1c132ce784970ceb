"""PAN and SAD detection/masking engine (plain Python, no mitmproxy import).

The rules live in two modules: scan.py (finding card numbers: prefilter,
run classification, separator windows, Luhn, boundary rule, IIN table) and
sad.py (SAD fields and track data); kinds.py names what a finding is. This
module masks what they find: Masker (one buffer), StreamMasker (chunks),
URLs, the factory every caller builds its masker with (masker_from), and the
small helpers the addons use (find_pans, contains_pan, ...). views.py checks
the decoded views of a body (charsets, escapes) with the same Masker.

Two engines implement Masker.mask and the scan: this Python one, the
reference, and a native one (native.py loads _pannative.c, a C transcription
of the same rules handed the same tables), byte-identical by test
(tests/pan/test_native_diff.py). ENGINE says which one this process uses
("native" or "python") and ENGINE_DETAIL why; PANGATE_ENGINE=auto (default),
native or python chooses (native.py). A native call that raises is logged and
the call is redone by the Python engine, so a failure never passes data
unmasked.

Everything masks in place with the same byte length, which is what lets the
StreamMasker emit output as soon as it is sure nothing can still change it.

Stream-window invariant (StreamMasker)
--------------------------------------
Claim: for any split of a body into chunks, the concatenated output of
feed()...flush() and the final count equal Masker.mask(body).

It rests on locality: whether a finding exists, and where it starts, is
decided by bytes at most _CTX before its start and at most _LOOKAHEAD after
it. _LOOKAHEAD (256) is checked at import against the rules' own bounds:
scan.MAX_READ (a PAN window of at most 19 digits with gaps of up to
scan.MAX_GAP separator characters, plus the bytes the boundary rule reads
after it: 75) and sad.MAX_READ (a 48-byte SAD key, the key/value glue and
the first value byte: 88; track data up to its expiry date). A finding that
runs on further (a SAD value of up to 128 escaped characters, track
discretionary data) and is cut short by the end of the buffer reaches that
end, so it straddles the cut below and is decided again, whole, next round.
_CTX covers the boundary rule (2 bytes back), the SAD key walk-back (48
bytes) and a track finding starting 2 bytes before its PAN.

State carried across feed() calls, and nothing else:
  * _buf: the bytes not emitted yet, preceded by at most _CTX bytes already
    emitted, which are read-only context (never rewritten, never re-counted);
  * _base: where the unemitted bytes start in _buf;
  * count (and the on_pan callback, which only observes).

Each round scans _buf for findings starting in [_base, limit), limit =
len(_buf) - _LOOKAHEAD, so every such finding was decided on all the bytes
it depends on. The cut c starts at limit and moves left out of any finding
that straddles it, so no finding is ever split between two outputs; bytes
before c are emitted, and the next round starts at c with _CTX bytes of
context. A PAN split across chunks (or across the cut) is therefore always
found: it starts either before c, and was decided whole this round, or at or
after c, and is still in _buf, with its context, next round. Scanning a run
that straddles _base starts at the run's head inside the context (or, for a
run longer than the context, at the start of _buf, mid-group but before
_base, where no finding is taken); a window depends only on its own groups,
gaps and two neighbouring bytes, so the windows starting at or after _base
are the same as in the whole body.

Memory: the unemitted tail is at most _LOOKAHEAD bytes plus one finding
straddling the cut (~_CTX + _LOOKAHEAD + a finding in all). The only case
where equality can break is a chain of overlapping findings longer than
_MAX_PENDING (64 KiB), which is cut anyway so memory stays bounded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pangate.pan import native as _native

from pangate.pan.iin import lookup as _lookup
from pangate.pan.kinds import PAN_KINDS, Masked
from pangate.pan.sad import MAX_READ as _SAD_READ, SAD_NAMES  # noqa: F401  (SAD_NAMES re-exported)
from pangate.pan.scan import MAX_READ as _PAN_READ, Scanner, has_run as _has_run, luhn as _luhn

__all__ = [
    "ENGINE", "ENGINE_DETAIL", "Masker", "StreamMasker", "PanMatch", "find_pans", "contains_pan",
    "url_contains_pan", "url_view", "luhn_ok", "brand_of", "MODES", "masker_from",
]

# The mask modes, one list for the engine, the policy schema and the CLI.
MODES = ("bin6last4", "last4", "hmac")

_DIG = b"0123456789"
_STAR = bytes.maketrans(_DIG, b"*" * 10)

# Streaming (see "Stream-window invariant" above): every finding is decided by
# at most _CTX bytes before its start and ends, with the bytes its rules look
# at, within _LOOKAHEAD bytes of it.
_CTX = 64
_LOOKAHEAD = 256
assert _LOOKAHEAD >= max(_PAN_READ, _SAD_READ)
_MAX_PENDING = 1 << 16


def _native_failed(exc: BaseException) -> None:
    # The message names the exception only: never the data being masked. (logging,
    # like hashlib below, is imported when needed: `pangate mask` pays for its imports.)
    import logging
    logging.getLogger("pangate.pan").error(
        "pangate PAN engine: a native call failed (%s: %s); masked with the Python engine instead",
        type(exc).__name__, exc)


def masker_from(mode: str = "bin6last4", hmac_key_env: str | None = None, environ=None, *,
                sad: bool = True, strict_brand: bool = False) -> "Masker":
    """The one way callers build a Masker from settings (policy `settings.masking`,
    command-line overrides): mode, and for mode hmac the name of the environment
    variable holding the key, read from environ (default os.environ).

    Raises ValueError naming what is missing, so the gateway refuses to start
    and the CLI exits 2, instead of masking with a wrong or empty key.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mask mode {mode!r}; expected one of {', '.join(MODES)}")
    key = None
    if mode == "hmac":
        env = os.environ if environ is None else environ
        value = env.get(hmac_key_env) if hmac_key_env else None
        if not value:
            raise ValueError("masking mode hmac needs the key in an environment variable "
                             + (f"(${hmac_key_env} is not set)" if hmac_key_env else "(none named)"))
        key = value.encode()
        if len(key) < 16:
            raise ValueError(f"masking mode hmac needs a key of at least 16 bytes in ${hmac_key_env}")
    return Masker(mode=mode, hmac_key=key, sad=sad, strict_brand=strict_brand)


def luhn_ok(digits: bytes | str) -> bool:
    """Luhn (ISO/IEC 7812-1 annex) check of a digits-only string."""
    if isinstance(digits, str):
        digits = digits.encode("ascii", "replace")
    if not digits.isdigit() or not digits.isascii():
        return False
    return _luhn(digits)


def brand_of(digits: bytes | str) -> str | None:
    """Card brand for a digits-only PAN (prefix and length; Luhn not checked)."""
    if isinstance(digits, str):
        digits = digits.encode("ascii", "replace")
    return _lookup(digits) if digits.isdigit() and digits.isascii() else None


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

    def __init__(self, mode: str = "bin6last4", hmac_key: bytes | None = None, sad: bool = True,
                 strict_brand: bool = False, engine: str | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown mask mode {mode!r}; expected one of {MODES}")
        if mode == "hmac" and (not hmac_key or len(hmac_key) < 16):
            raise ValueError("hmac mode needs hmac_key of at least 16 bytes")
        self.mode = mode
        self.sad = sad
        self._key = bytes(hmac_key) if hmac_key else None
        self.strict_brand = strict_brand
        self._pyscan = Scanner(mode == "bin6last4", sad, strict_brand=strict_brand).scan
        # engine: None = the process's choice (ENGINE); "python" / "native" for
        # one masker (the differential tests run both side by side).
        want = ENGINE if engine is None else engine
        if want not in ("native", "python"):
            raise ValueError(f"unknown PAN engine {engine!r}; expected native or python")
        self._native = None
        if want == "native" and mode == "hmac" and engine is None:
            why = _native.hmac_self_check(_reference)
            if why:  # the process chose native: this masker falls back, and says so
                _native_failed(RuntimeError(why))
                want = "python"
        if want == "native":
            self._native = _native.engine_for(bin6=mode == "bin6last4", sad_=sad, strict_brand=strict_brand,
                                              hmac_key=self._key if mode == "hmac" else None)
        self.engine = want

    # ---- public API -------------------------------------------------
    def mask(self, data: bytes) -> tuple[bytes, int]:
        data = bytes(data) if not isinstance(data, bytes) else data
        nat = self._native
        if nat is not None:
            try:
                out, n, sad = nat.mask(data, 0, len(data))
                return out, Masked(n, sad)
            except Exception as e:
                _native_failed(e)
        finds = self._pyscan(data, 0, len(data))
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
        """Findings with base <= start < stop (scan.Scanner.scan), from the engine in use."""
        nat = self._native
        if nat is not None:
            try:
                return nat.scan(buf, base, stop)
            except Exception as e:
                _native_failed(e)
        return self._pyscan(buf, base, stop)

    def _apply(self, buf: bytes, base: int, c: int, finds) -> tuple[bytes, int]:
        """Mask buf[base:c] with findings (all inside it); returns (bytes, count).

        PAN masks only ever write their masked span, and star spans are
        written last, so overlapping findings combine as a union.
        """
        if not finds:
            return (buf if base == 0 and c == len(buf) else buf[base:c]), Masked()
        count = len(_counted(finds))
        # Common case, disjoint masked spans: one join of slices, no
        # bytearray copy and per-finding slice assignment.
        out, last, zc, hmac_mode = [], base, 0, self.mode == "hmac"
        for s, e, ms, me, kind, info in finds:
            if ms < last:
                zc = sum(1 for f in finds if f[4] not in PAN_KINDS and buf[f[2]:f[3]].strip(b"*"))
                return self._apply_overlapping(buf, base, c, finds), Masked(count + zc, zc)
            out.append(buf[last:ms])
            if kind in PAN_KINDS:
                out.append(self._token(buf[ms:me], info[1]) if hmac_mode else buf[ms:me].translate(_STAR))
            else:
                if buf[ms:me].strip(b"*"):
                    zc += 1
                out.append(b"*" * (me - ms))
            last = me
        out.append(buf[last:c])
        return b"".join(out), Masked(count + zc, zc)

    def _apply_overlapping(self, buf: bytes, base: int, c: int, finds) -> bytes:
        out = bytearray(buf[base:c])
        for s, e, ms, me, kind, info in finds:
            if kind not in PAN_KINDS:
                continue
            if self.mode == "hmac":
                out[ms - base:me - base] = self._token(buf[ms:me], info[1])
            else:
                out[ms - base:me - base] = buf[ms:me].translate(_STAR)
        for s, e, ms, me, kind, info in finds:
            if kind not in PAN_KINDS:
                out[ms - base:me - base] = b"*" * (me - ms)
        return bytes(out)

    def _token(self, span: bytes, digits: bytes) -> bytes:
        import hashlib
        import hmac as _hmac
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
    zspans = [(f[0], f[1]) for f in finds if f[4] not in PAN_KINDS]
    out, last_end = [], -1
    if not zspans:  # the common case, PANs only
        for f in finds:
            if f[0] >= last_end:
                out.append(f)
                last_end = f[1]
        return out
    for f in finds:
        s, e = f[0], f[1]
        if f[4] in PAN_KINDS and s >= last_end and not any(zs <= s and e <= ze for zs, ze in zspans):
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
        nat = self._m._native
        if nat is not None and self._on_pan is None:
            # The same round in one native call: scan, cut, mask. False: the cut
            # had to be forced (see _MAX_PENDING), done below as the reference does.
            try:
                r = nat.stream_round(buf, base, limit, _MAX_PENDING)
            except Exception as e:
                _native_failed(e)
                r = False
            if r is None:
                self._buf = buf
                return b""
            if r is not False:
                out, n, c, sad = r
                self.count += Masked(n, sad)
                keep = max(0, c - _CTX)
                self._buf, self._base = buf[keep:], c - keep
                return out
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
        nat = self._m._native
        if nat is not None and self._on_pan is None:
            try:
                out, n, sad = nat.mask(buf, base, len(buf))
                self.count += Masked(n, sad)
                self._buf, self._base = b"", 0
                return out
            except Exception as e:
                _native_failed(e)
        finds = self._m._scan(buf, base, len(buf))
        out, n = self._m._apply(buf, base, len(buf), finds)
        self.count += n
        self._report(out, base, finds)
        self._buf, self._base = b"", 0
        return out

    def _report(self, out: bytes, base: int, finds) -> None:
        if self._on_pan is not None and finds:
            # PANs, and track data (a SAD span that names its card brand)
            for f in sorted(_counted(finds) + [f for f in finds if f[4] not in PAN_KINDS and f[5]]):
                self._on_pan(out, f[0] - base, f[1] - base, f[5][0])


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


# ---- which engine ---------------------------------------------------------
def _reference(mode: str, key: bytes | None) -> Masker:
    return Masker(mode, key, engine="python")


ENGINE, ENGINE_DETAIL = _native.choose(_reference)


def native_function(name: str):
    """One of the native extension's helpers (pan/_pannative.c), where this process runs the
    native engine; else None and the caller keeps its Python code (the reference)."""
    return getattr(_native._MOD, name, None) if ENGINE == "native" else None

_DEFAULT = Masker()
_PLAIN = Masker(sad=False)


def find_pans(data: bytes) -> list[PanMatch]:
    """Every PAN in data (overlapping windows included), masked bin6last4."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    out = []
    for s, e, ms, me, kind, info in _PLAIN._scan(data, 0, len(data)):
        if kind in PAN_KINDS:
            masked = data[s:ms] + data[ms:me].translate(_STAR) + data[me:e]
            out.append(PanMatch(s, e, info[0], masked.decode("ascii"), len(info[1])))
    return out


def contains_pan(data: bytes) -> bool:
    """Fast yes/no for outbound DLP (PANs only, SAD not considered)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    nat = _PLAIN._native
    if nat is not None:
        try:
            return nat.has_pan(data)
        except Exception as e:
            _native_failed(e)
    if not _has_run(data):
        return False
    return any(f[4] in PAN_KINDS for f in _PLAIN._pyscan(data, 0, len(data)))


def url_contains_pan(url: str) -> bool:
    return contains_pan(_url_view(url))


def url_view(url: str) -> bytes:
    """A URL or form body as a server decodes it (%xx, `+`), one byte per original token."""
    return _url_view(url)
