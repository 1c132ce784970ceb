"""Content-Encoding decoding, incremental and bounded: a small body never becomes a big one unchecked.

A gateway that inflates what it is handed is a decompression-bomb amplifier:
1 MB of gzip can be 1 GB of zeros, and inflating it in one call stalls the
event loop and takes the memory with it. So every decoder here yields its
output in steps of at most _STEP bytes, and `Limits` stops a body as soon as
its decoded size passes `max_bytes`, or its ratio to the encoded size passes
`max_ratio` (checked once past `ratio_floor`, where small bodies with a high
ratio, such as a run of JSON spaces, are harmless).

Stacked encodings (`Content-Encoding: gzip, br`: gzip applied first, then br)
are decoded in reverse order of listing, as RFC 9110 8.4 says.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# Decoded output handed on per step: bounds memory on highly compressed input.
_STEP = 1 << 20


class DecodeError(ValueError):
    """The body cannot be decoded: unsupported, corrupt or truncated. `code` names which."""

    def __init__(self, message: str, code: str = "undecodable_body"):
        super().__init__(message)
        self.code = code


class DecodeLimit(DecodeError):
    """The decoded body would pass a limit (size or ratio)."""

    def __init__(self, message: str):
        super().__init__(message, "decoded_body_too_large")


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 256 << 20
    max_ratio: float = 200.0
    ratio_floor: int = 8 << 20

    def check(self, encoded: int, decoded: int) -> None:
        if decoded > self.max_bytes:
            raise DecodeLimit(f"the body decodes to more than {self.max_bytes >> 20} MiB")
        if decoded > self.ratio_floor and decoded > self.max_ratio * max(encoded, 1):
            raise DecodeLimit(f"the body decodes to over {self.max_ratio:g} times its encoded size")


UNLIMITED = Limits(max_bytes=1 << 62, max_ratio=float("inf"))


class _Zlib:
    def __init__(self, wbits: int | None):
        self.wbits = wbits  # None: deflate, zlib-wrapped or raw, decided on the first bytes
        self.d = zlib.decompressobj(wbits) if wbits is not None else None
        self.head = b""

    def __call__(self, data: bytes):
        if self.d is None:
            self.head += data
            if len(self.head) < 2:
                return
            b0, b1 = self.head[0], self.head[1]
            zlib_wrapped = b0 & 0x0F == 8 and (b0 << 8 | b1) % 31 == 0
            self.d = zlib.decompressobj(15 if zlib_wrapped else -15)
            data, self.head = self.head, b""
        d = self.d
        while data:
            out = d.decompress(data, _STEP)
            if out:
                yield out
            data = d.unconsumed_tail
            if d.eof and d.unused_data and self.wbits == 31:  # concatenated gzip members
                data, self.d = d.unused_data, zlib.decompressobj(31)
                d = self.d

    def end(self):
        if self.d is None:
            if self.head:
                raise ValueError("truncated deflate body")
            return
        tail = self.d.flush()
        if tail:
            yield tail
        if not self.d.eof:
            raise ValueError("truncated compressed body")


class _Brotli:
    def __init__(self):
        import brotli
        self.d = brotli.Decompressor()

    def __call__(self, data: bytes):
        # output_buffer_limit (brotli >= 1.1): at most one step out per call; then drain with b"".
        out = self.d.process(data, output_buffer_limit=_STEP)
        while True:
            if out:
                yield out
            if self.d.can_accept_more_data() or self.d.is_finished():
                return
            out = self.d.process(b"", output_buffer_limit=_STEP)

    def end(self):
        if not self.d.is_finished():
            raise ValueError("truncated brotli body")
        return ()


class _Zstd:
    def __init__(self):
        try:
            from compression import zstd
        except ImportError:
            from backports import zstd
        self.new = zstd.ZstdDecompressor
        self.d, self.open = self.new(), False

    def __call__(self, data: bytes):
        while data or (self.open and not self.d.needs_input and not self.d.eof):
            self.open = True
            out = self.d.decompress(data, _STEP)
            if out:
                yield out
            data = b""
            if self.d.eof:  # the next frame, if any
                data, self.d, self.open = self.d.unused_data, self.new(), False

    def end(self):
        if self.open:
            raise ValueError("truncated zstd body")
        return ()


class _Identity:
    def __call__(self, data: bytes):
        yield data

    def end(self):
        return ()


DECODERS = {"": _Identity, "identity": _Identity, "gzip": lambda: _Zlib(31), "x-gzip": lambda: _Zlib(31),
            "deflate": lambda: _Zlib(None), "br": _Brotli, "zstd": _Zstd}


def parse_encodings(content_encoding: str) -> list[str]:
    """The codings of a Content-Encoding value, in the order they were applied; DecodeError if unknown."""
    out = []
    for part in content_encoding.split(","):
        enc = part.strip().lower()
        if enc in ("", "identity"):
            continue
        if enc not in DECODERS:
            raise DecodeError(f"cannot decode Content-Encoding {enc!r}", "unsupported_encoding")
        out.append(enc)
    return out


class Decoder:
    """Incremental decoding of a (possibly stacked) Content-Encoding within Limits.

    feed(chunk) and end() return decoded bytes; DecodeError/DecodeLimit when it cannot go on.
    """

    def __init__(self, content_encoding: str = "", limits: Limits = UNLIMITED):
        self.stages = [DECODERS[e]() for e in reversed(parse_encodings(content_encoding))]
        self.limits = limits
        self.encoded = 0
        self.decoded = 0

    def _run(self, data: bytes, start: int) -> list[bytes]:
        """data through stages[start:], counted against the limits."""
        parts = [data] if data else []
        for i in range(start, len(self.stages)):
            st, nxt = self.stages[i], []
            try:
                for p in parts:
                    nxt.extend(st(p))
            except DecodeError:
                raise
            except Exception as e:  # zlib.error, brotli.error, zstd errors, ValueError
                raise DecodeError(f"the body is not valid {type(st).__name__.strip('_').lower()} "
                                  f"({type(e).__name__})") from None
            parts = nxt
        out = []
        for p in parts:
            self.decoded += len(p)
            self.limits.check(self.encoded, self.decoded)
            out.append(p)
        return out

    def feed(self, chunk: bytes) -> bytes:
        self.encoded += len(chunk)
        if not self.stages:
            self.decoded += len(chunk)
            return chunk
        return b"".join(self._run(chunk, 0))

    def end(self) -> bytes:
        if not self.stages:
            return b""
        # Flush stage by stage: what one stage flushes still goes through the later ones.
        out = []
        for i, st in enumerate(self.stages):
            try:
                tail = list(st.end())
            except Exception as e:
                raise DecodeError(f"the body is truncated or corrupt ({e})") from None
            for t in tail:
                out.extend(self._run(t, i + 1))
        return b"".join(out)


def decode(data: bytes, content_encoding: str, limits: Limits = UNLIMITED) -> bytes:
    """A whole body decoded within limits (run it off the event loop when it is large)."""
    d = Decoder(content_encoding, limits)
    out = [d.feed(data[i:i + _STEP]) for i in range(0, len(data), _STEP)] if data else []
    out.append(d.end())
    return b"".join(out)
