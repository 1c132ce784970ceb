"""Finding kinds of the PAN engine, named once (plain Python, no imports).

Every finding the engine produces is a tuple
``(start, end, mask_start, mask_end, kind, info)`` whose ``kind`` is one of
the constants below. Two masking actions follow from the kind:

* a PAN kind (``PAN``, ``PAN_UNKNOWN_BRAND``) keeps the digits the mask mode
  allows (first 6 and/or last 4) and rewrites the others, separators stay;
  info = (brand, digits);
* every other kind (SAD) stars ``mask_start:mask_end`` entirely; info is None
  for a SAD field value and (brand label, None) for track data, which names
  the card brand of the PAN it contains.

The values are plain interned strings, not an Enum: the masking hot path
compares kinds per finding and an Enum member's hash/eq would run Python code
there. ``Kind`` groups them for readers and for ``Kind.ALL``.
"""

from __future__ import annotations

__all__ = ["Kind", "PAN", "PAN_UNKNOWN_BRAND", "CVC", "PIN", "TRACK_FIELD", "TRACK1", "TRACK2",
           "PAN_KINDS", "SAD_KINDS", "is_pan", "Masked"]

# A card number whose IIN table row names its brand.
PAN = "pan"
# A Luhn-valid 13-19 digit number with a payment MII (first digit 2-6) that no
# IIN row names: masked unless the masker is strict about brands (see iin.py).
PAN_UNKNOWN_BRAND = "pan_unknown_brand"
# The value of a card security code field (cvv, cvc, cvv2, cid, csc, securityCode, ...).
CVC = "cvc"
# The value of a PIN or PIN block field.
PIN = "pin"
# The value of a field named for track data (track1, track2, trackData, ...).
TRACK_FIELD = "track_field"
# Magnetic-stripe track 1 (``%B PAN ^ NAME ^ YYMM ...``).
TRACK1 = "track1"
# Track 2 (``;PAN=YYMM...``) and its ISO 8583 field-35 equivalent without sentinels.
TRACK2 = "track2"

PAN_KINDS = (PAN, PAN_UNKNOWN_BRAND)
SAD_KINDS = (CVC, PIN, TRACK_FIELD, TRACK1, TRACK2)


def is_pan(kind: str) -> bool:
    """True for the kinds masked digit by digit (PANs), False for starred SAD."""
    return kind in PAN_KINDS


class Kind:
    """Namespace of the finding kinds (the same strings as the module constants)."""
    PAN = PAN
    PAN_UNKNOWN_BRAND = PAN_UNKNOWN_BRAND
    CVC = CVC
    PIN = PIN
    TRACK_FIELD = TRACK_FIELD
    TRACK1 = TRACK1
    TRACK2 = TRACK2
    ALL = PAN_KINDS + SAD_KINDS


class Masked(int):
    """A count of values masked that also knows how many of them were SAD (`.sad`); the rest are
    card numbers. It is the int every masking call has always returned, so callers that only
    add counts need no change: adding two keeps both parts (a plain int added counts as card
    numbers), and `0 + Masked` is a Masked too (int subclasses take the reflected sum)."""

    def __new__(cls, total: int = 0, sad: int = 0):
        self = super().__new__(cls, total)
        self.sad = sad
        return self

    @property
    def pans(self) -> int:
        return int(self) - self.sad

    def __add__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        return Masked(int(self) + int(other), self.sad + getattr(other, "sad", 0))

    __radd__ = __add__

    def __str__(self) -> str:  # printed and formatted as the plain count
        return int.__repr__(self)

    def __repr__(self) -> str:
        return f"Masked({int(self)}, sad={self.sad})"
