"""Bounded, incremental Content-Encoding decoding (pure): stacked codings, chunking, caps."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
from backports import zstd
from hypothesis import given, settings
from hypothesis import strategies as st

from pangate.masking.decoders import DecodeError, DecodeLimit, Decoder, Limits, decode, parse_encodings

ENC = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress, "zstd": zstd.compress,
       "raw-deflate": lambda b: zlib.compress(b)[2:-4]}


def encode(data: bytes, codings: list[str]) -> bytes:
    for c in codings:
        data = ENC[c](data)
    return data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), codings=st.lists(st.sampled_from(["gzip", "deflate", "br", "zstd"]),
                                                       max_size=3), cut=st.integers(1, 97))
def test_stacked_codings_decode_in_any_chunking(data, codings, cut):
    body = encode(data, codings)
    d = Decoder(", ".join(codings))
    out = b"".join(d.feed(body[i:i + cut]) for i in range(0, len(body), cut)) + d.end()
    assert out == data


def test_gzip_then_br_as_listed():
    assert decode(brotli.compress(gzip.compress(b"4111")), "gzip, br") == b"4111"
    assert decode(zlib.compress(b"x")[2:-4], "deflate") == b"x"  # raw deflate, as some servers send


@pytest.mark.parametrize("value", ["compress", "gzip, lzma", "xz"])
def test_unknown_coding_is_a_precise_error(value):
    with pytest.raises(DecodeError) as e:
        parse_encodings(value)
    assert e.value.code == "unsupported_encoding"


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd", "deflate"])
def test_truncated_or_corrupt_body_is_an_error(coding):
    body = encode(b"hello world " * 1000, [coding])
    with pytest.raises(DecodeError):
        decode(body[: len(body) // 2], coding)
    with pytest.raises(DecodeError):
        decode(b"\x00garbage" + body, coding)


def _bomb(coding: str, size: int) -> bytes:
    if coding == "gzip":
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = bytes(1 << 20)
        return b"".join(c.compress(zeros) for _ in range(size >> 20)) + c.flush()
    return ENC[coding](bytes(size))


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_a_bomb_stops_at_the_cap_without_inflating_it(coding):
    bomb = _bomb(coding, 64 << 20)
    limits = Limits(max_bytes=16 << 20, max_ratio=1e9)
    d = Decoder(coding, limits)
    with pytest.raises(DecodeLimit) as e:
        d.feed(bomb)
        d.end()
    assert e.value.code == "decoded_body_too_large"
    assert d.decoded <= (16 << 20) + (4 << 20)  # stopped within a step or two of the cap


def test_ratio_cap_applies_past_its_floor_only():
    spaces = gzip.compress(b" " * (1 << 20))  # ~1000:1, but small: harmless
    assert len(decode(spaces, "gzip", Limits(max_ratio=10, ratio_floor=2 << 20))) == 1 << 20
    with pytest.raises(DecodeLimit):
        decode(gzip.compress(bytes(8 << 20)), "gzip", Limits(max_ratio=10, ratio_floor=2 << 20))
