"""Masking a body the way its reader reads it: buffered whole, or as a stream. Pure (no mitmproxy).

A buffered body is masked in every normalized view (pan.views: charsets,
JSON/HTML/percent escapes, Unicode digits and separators) in one pass; a
body whose reading is undecidable raises views.UndecodableBody, which the
caller turns into a refusal with its code.

A streamed body (MaskStream) covers the same classes where it can, in
bounded memory:

- while everything seen so far is ASCII with no NUL and no escape (the
  views precheck, `needs_views`, run on each chunk with the tail of the
  previous one so an escape split across chunks is seen), the raw view is
  complete and the engine's StreamMasker masks it with its small lookahead
  (the common case: cheap, low latency);
- from the first chunk that needs views on (non-ASCII text, UTF-16/32,
  escapes; or from the start when the declared charset does not read ASCII
  as ASCII), the rest is masked in windows of STEP bytes with every view:
  each window is cut HOLD bytes before its end, moved left out of any
  finding and onto a character boundary (UTF-8 lead byte; a code unit of a
  UTF-16/32 body), so every finding is masked whole in one window. HOLD
  bounds the longest written form of a card number (19 digits as UTF-32 or
  as 8-byte HTML references with 6-byte separators is under 400 bytes) with
  a wide margin. Switching is sound because a raw-mode PAN spans at most
  scan.MAX_READ bytes, all still held back by the StreamMasker when the
  chunk that needs views arrives. Nothing here buffers a whole body: a
  streamed UTF-16 body is masked window by window, no cap needed. A window
  that cannot be read with confidence (a declared charset that does not
  round-trip, conflicting views) raises UndecodableBody: the caller cuts
  the stream with its code.

Views may change byte length (an Arabic-Indic digit becomes one `*`). A
streamed body that keeps its Content-Length (an identity body: the addon
keeps it) is masked with keep_length=True: a window whose masked form would
change length raises UndecodableBody("masked_length_changed") and the stream
is cut, rather than sent with a wrong length. Decoded bodies are sent
without Content-Length, so their length may change.
"""

from __future__ import annotations

from pangate.credentials.forms import Redactor
from pangate.pan.engine import Masker
from pangate.pan.views import (UndecodableBody, _bom, _charset_of, _nul_pattern, _resolve, mask_views, needs_views,
                               scan_views)

HOLD = 4096
STEP = 64 << 10
MAX_PENDING = 1 << 20  # a window with findings chained past this is cut anyway (bounded memory)
_ESC_TAIL = 40  # longest escape the precheck looks for (a named HTML reference) fits in it


def mask_body(masker: Masker, body: bytes, content_type: str = "") -> tuple[bytes, int]:
    """A decoded body masked in every view; raises UndecodableBody."""
    return mask_views(body, content_type, masker)


def mask_decoded(masker: Masker, body: bytes, content_type: str = "",
                 redactor: Redactor | None = None) -> tuple[bytes, int, bool]:
    """(masked body, values masked, whether an injected secret was starred); raises UndecodableBody."""
    redacted = redactor.data(body) if redactor else body
    out, n = mask_views(redacted, content_type, masker)
    return out, n, redacted != body


def _unit(data: bytes, content_type: str) -> int:
    """Code unit of a body for cutting it: 4 for UTF-32, 2 for UTF-16, 1 otherwise (UTF-8 boundaries)."""
    names = [_bom(data)[0] or "", _charset_of(content_type) or "", _nul_pattern(data) or ""]
    for name in names:
        if name:
            codec = _resolve(name)[0] or ""
            if codec.startswith("utf-32"):
                return 4
            if codec.startswith("utf-16"):
                return 2
    return 1


class MaskStream:
    """A decoded byte stream masked chunk by chunk (module docstring); feed() / flush() return bytes.

    flush() emits everything held (the end of the body, or a safe boundary such as the blank line
    ending a server-sent event); the stream may go on after it. `count` is the values masked;
    `echoed` whether the redactor starred a secret. With reveal=True the body is emitted as it is
    and only counted (raw view).
    """

    def __init__(self, masker: Masker, content_type: str = "", redactor: Redactor | None = None,
                 reveal: bool = False, keep_length: bool = False):
        self.m = masker
        self.keep_length = keep_length
        self.ctype = content_type
        self.red = redactor.stream() if redactor else None
        self.reveal = reveal
        self.sm = masker.stream()
        self.count = 0
        self.views = False
        self.held = b""  # raw mode: the bytes the StreamMasker has not emitted yet (as fed)
        self.last = b""  # raw mode: the last bytes fed, for escapes split across chunks
        self.pend = b""  # views mode: bytes not emitted yet
        self.offset = 0  # views mode: position of pend[0] in the body
        self.fed = 0
        self.unit = 1
        cs = _charset_of(content_type)
        if cs and needs_views(b"", content_type):  # unknown, stateful or not ASCII-compatible
            self._switch(b"")

    @property
    def echoed(self) -> bool:
        return bool(self.red is not None and self.red.hits)

    def feed(self, data: bytes) -> bytes:
        if self.red is not None:
            data = self.red.feed(data)
        return self._feed(data) if data else b""

    def flush(self) -> bytes:
        out = self._feed(self.red.flush()) if self.red is not None else b""
        if self.reveal or not self.views:
            tail = self.sm.flush()
            self.count += self.sm.count
            self.sm = self.m.stream()
            self.held = b""
            return out + (b"" if self.reveal else tail)
        return out + self._window(final=True)

    # -- raw mode
    def _feed(self, data: bytes) -> bytes:
        if self.reveal:
            self.sm.feed(data)
            return data
        if self.views:
            self.pend += data
            self.fed += len(data)
            return self._window(final=False) if len(self.pend) >= HOLD + STEP else b""
        if needs_views(self.last + data, self.ctype):
            return self._switch(data)
        self.last = (self.last + data)[-_ESC_TAIL:]
        out = self.sm.feed(data)
        self.fed += len(data)
        # Masking keeps length in the raw view: what is held is the tail of what was fed.
        held = len(self.held) + len(data) - len(out)
        self.held = (self.held + data)[len(self.held) + len(data) - held:] if held else b""
        return out

    def _switch(self, data: bytes) -> bytes:
        self.count += self.sm.count
        self.views, self.sm = True, None
        self.pend, self.held = self.held + data, b""
        self.offset = self.fed - (len(self.pend) - len(data))
        self.fed += len(data)
        self.unit = _unit(self.pend, self.ctype)
        return self._window(final=False) if len(self.pend) >= HOLD + STEP else b""

    # -- views mode
    def _aligned(self, cut: int) -> int:
        if self.unit > 1:
            return cut - (self.offset + cut) % self.unit
        while cut > 0 and 0x80 <= self.pend[cut] < 0xC0:  # a UTF-8 continuation byte
            cut -= 1
        return cut

    def _window(self, final: bool) -> bytes:
        pend = self.pend
        if not pend:
            return b""
        if final:
            cut = len(pend)
        else:
            finds = scan_views(pend, self.ctype, self.m).findings
            cut = len(pend) - HOLD
            for _ in range(8):  # out of findings, onto a character boundary; settles in a round or two
                before = cut
                for f in reversed(finds):
                    if f.start < cut < f.end:
                        cut = f.start
                cut = self._aligned(cut)
                if cut == before:
                    break
            if cut <= 0:
                if len(pend) < MAX_PENDING:
                    return b""
                cut = self._aligned(len(pend) - HOLD)
        region, self.pend = pend[:cut], pend[cut:]
        self.offset += cut
        out, n = mask_views(region, self.ctype, self.m)
        if self.keep_length and len(out) != len(region):
            raise UndecodableBody("masked_length_changed", "the masked body would not keep its Content-Length")
        self.count += n
        return out

    @property
    def total(self) -> int:
        """Values masked so far, the raw stream's included."""
        return self.count + (self.sm.count if self.sm is not None and not self.views else 0)
