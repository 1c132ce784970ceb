"""Issuer (IIN/BIN) table used by the PAN engine to decide whether a Luhn-valid
digit string is plausibly a payment card number.

Sources (checked when this table was written):
  * ISO/IEC 7812-1 (major industry identifier, IIN structure, Luhn check digit).
  * Wikipedia, "Payment card number", section "Issuer identification number
    (IIN)" table: brand, IIN ranges and allowed lengths.
  * Brand-specific additions called out in the requirements issue
    (UnionPay 81xx, Maestro 50/56-58, Diners 14-19).

Why a table at all: Luhn alone accepts 1 in 10 random numbers, so 13-digit
millisecond timestamps, IMEIs and order ids would be masked constantly. Tying
each prefix to the lengths its brand actually issues removes most of those
(e.g. UATP starts with 1 but is only 15 digits, so 13-digit ms timestamps
never match; IMEIs are 15 digits and only Amex (34/37) and UATP issue 15).

Unknown brands (decision): the table is never complete (regional schemes,
legacy and newly issued ranges), and a PCI gateway that misses a live range
leaks cards. So a Luhn-valid number of 13, 14 or 16-19 digits whose first
digit is 2-6 (ISO/IEC 7812 major industry identifiers for banking and
financial cards) is a PAN even when no row names it: finding kind
PAN_UNKNOWN_BRAND, brand "unknown" (see unknown_brand()). Masker(strict_brand
=True) turns this off. What stays out, and why:
  * first digit 0, 1, 7, 8, 9: not payment MIIs; 13-digit millisecond and
    16/19-digit micro/nanosecond timestamps start with 1 until 2033/2286;
  * 15 digits: IMEIs are 15 Luhn-valid digits whose reporting body (35, 44,
    49, 86, ...) often starts with 2-6; the only 15-digit brand in use, Amex,
    has its own rows;
  * 12 digits and fewer, 20 and more: no scheme issues them (Maestro's 12 has
    its rows);
  * 20/21 followed by a valid YYMMDD: compact dates and date-stamped ids
    (20241128132000, 2024112800012345) are everywhere in API traffic, and no
    scheme issues 20xx/21xx;
  * Luhn-invalid numbers, and everything the boundary rule rejects (glued,
    decimal, UUID-like, E.164), exactly as for known brands.
This keeps the false-positive families of the test corpus untouched; its
cost is that a Luhn-valid order id or account number of a payment-looking
shape is masked, which is the side a gateway should err on.

Entries are (brand, first_prefix, last_prefix, lengths). Prefixes are inclusive
and may have different lengths from each other across rows; they are padded to
8 digits for comparison ("622126" -> "62212600".."62292599" etc.).
"""

from __future__ import annotations

R = range  # brevity in the table below

IIN_TABLE: list[tuple[str, str, str, tuple[int, ...]]] = [
    # brand            first      last       lengths
    ("visa",           "4",       "4",       (13, 16, 19)),
    ("mastercard",     "51",      "55",      (16,)),
    ("mastercard",     "2221",    "2720",    (16,)),
    ("amex",           "34",      "34",      (15,)),
    ("amex",           "37",      "37",      (15,)),
    ("discover",       "6011",    "6011",    tuple(R(16, 20))),
    ("discover",       "644",     "649",     tuple(R(16, 20))),
    ("discover",       "65",      "65",      tuple(R(16, 20))),
    # China UnionPay co-branded Discover range.
    ("discover",       "622126",  "622925",  tuple(R(16, 20))),
    # Diners Club International / Carte Blanche. Wikipedia lists 14-19 for
    # 36, 38-39, 300-305 and 3095.
    ("diners",         "36",      "36",      tuple(R(14, 20))),
    ("diners",         "300",     "305",     tuple(R(14, 20))),
    ("diners",         "3095",    "3095",    tuple(R(14, 20))),
    ("diners",         "38",      "39",      tuple(R(14, 20))),
    ("jcb",            "3528",    "3589",    tuple(R(16, 20))),
    # JCB's legacy ranges and siblings, still issued (Japan domestic,
    # co-branded): 3088-3094, 3096-3102, 3112-3120, 3158-3159, 3337-3349.
    ("jcb",            "3088",    "3094",    tuple(R(16, 20))),
    ("jcb",            "3096",    "3102",    tuple(R(16, 20))),
    ("jcb",            "3112",    "3120",    tuple(R(16, 20))),
    ("jcb",            "3158",    "3159",    tuple(R(16, 20))),
    ("jcb",            "3337",    "3349",    tuple(R(16, 20))),
    # China T-Union (transit): 31, 19 digits (after JCB 3112-3120 and 3158-3159).
    ("tunion",         "31",      "31",      (19,)),
    # Hipercard (Brazil): 606282 and 3841x, 13/16/19 (before RuPay 60, Diners 38).
    ("hipercard",      "606282",  "606282",  (13, 16, 19)),
    ("hipercard",      "3841",    "3841",    (13, 16, 19)),
    ("unionpay",       "62",      "62",      tuple(R(16, 20))),
    ("unionpay",       "81",      "81",      tuple(R(16, 20))),
    # Verve (Nigeria): 16, 18, 19.
    ("verve",          "506099",  "506198",  (16, 18, 19)),
    ("verve",          "507865",  "507964",  (16, 18, 19)),
    ("verve",          "650002",  "650027",  (16, 18, 19)),
    ("dankort",        "5019",    "5019",    (16,)),
    # Maestro: Wikipedia lists 5018, 5020, 5038, 5893, 6304, 6759, 6761-6763
    # (and Maestro UK 6759, 676770, 676774); the issue asks for the wider 50
    # and 56-58 ranges, which cover the 5xxx ones.
    ("maestro",        "50",      "50",      tuple(R(12, 20))),
    ("maestro",        "56",      "58",      tuple(R(12, 20))),
    ("maestro",        "6304",    "6304",    tuple(R(12, 20))),
    ("maestro",        "6759",    "6759",    tuple(R(12, 20))),
    ("maestro",        "6761",    "6763",    tuple(R(12, 20))),
    ("maestro",        "676770",  "676770",  tuple(R(12, 20))),
    ("maestro",        "676774",  "676774",  tuple(R(12, 20))),
    # Bancontact (Belgium, Maestro co-badged) 6703, and the rest of 67xx in
    # live use by Maestro and its predecessors (Laser 6706/6709/6771, Solo
    # 6767): the whole 6700-6799 block, at the 16-19 digits these issue (the
    # rows above keep Maestro's 12-15 for the ranges known to use them: a
    # 12-digit id starting 67 is far likelier than such a card). Solo/Switch
    # 6333-6334, 633110.
    ("bancontact",     "6703",    "6703",    tuple(R(16, 20))),
    ("maestro",        "67",      "67",      tuple(R(16, 20))),
    ("maestro",        "6333",    "6334",    (16, 18, 19)),
    ("maestro",        "633110",  "633110",  (16, 18, 19)),
    ("mir",            "2200",    "2204",    tuple(R(16, 20))),
    ("uatp",           "1",       "1",       (15,)),
    # RuPay (India): 60, 65, 81, 82, 508, 353, 356; 16 digits.
    ("rupay",          "60",      "60",      (16,)),
    ("rupay",          "82",      "82",      (16,)),
    ("rupay",          "508",     "508",     (16,)),
    ("rupay",          "353",     "353",     (16,)),
    ("rupay",          "356",     "356",     (16,)),
    # Troy (Turkey): 9792 and 65; 16 digits (65 is already Discover above).
    ("troy",           "9792",    "9792",    (16,)),
    ("interpayment",   "636",     "636",     tuple(R(16, 20))),
    ("instapayment",   "637",     "639",     (16,)),
    ("lankapay",       "357111",  "357111",  (16,)),
    ("ukrcard",        "60400100", "60420099", tuple(R(16, 20))),
    ("borica",         "2205",    "2205",    (16,)),
    ("humo",           "9860",    "9860",    (16,)),
    ("uzcard",         "8600",    "8600",    (16,)),
    ("uzcard",         "5614",    "5614",    (16,)),
    ("dinacard",       "9891",    "9891",    (16,)),
]


def _build_index(table):
    """Index by the first two digits so a lookup touches only a few rows.

    Rows keep table order, which is the labelling priority: the global
    networks first (so 3530 is "jcb", not RuPay 353), and a co-branded or
    regional range is listed before the broader range it sits in (Discover
    622126-622925 before UnionPay 62, Verve/Dankort before Maestro 50). Each value is
    (low8, high8, length_bitmask, brand) with byte strings, because the engine
    works on bytes and comparing equal-length digit strings lexicographically
    is the same as comparing them numerically.
    """
    index: dict[bytes, list[tuple[bytes, bytes, int, str]]] = {}
    for brand, first, last, lengths in table:
        lo = first.ljust(8, "0").encode()
        hi = last.ljust(8, "9").encode()
        mask = 0
        for n in lengths:
            mask |= 1 << n
        for p2 in range(int(lo[:2]), int(hi[:2]) + 1):
            index.setdefault(b"%02d" % p2, []).append((lo, hi, mask, brand))
    return index


IIN_INDEX = _build_index(IIN_TABLE)


def lookup(digits: bytes) -> str | None:
    """Brand whose IIN range and allowed lengths fit `digits` (ASCII bytes)."""
    rows = IIN_INDEX.get(digits[:2])
    if rows:
        n = len(digits)
        p8 = digits[:8]
        for lo, hi, mask, brand in rows:
            # p8 may be shorter than 8 only for inputs < 8 digits, which no
            # brand allows; the length mask rejects those first.
            if (mask >> n) & 1 and lo[: len(p8)] <= p8 <= hi[: len(p8)]:
                return brand
    return None


# Allowed-length bitmask per first two digits (union over brands): the
# engine's one-dict-lookup prefilter before any per-candidate work.
LENGTHS_BY_PREFIX2: dict[bytes, int] = {
    k: _or for k, rows in IIN_INDEX.items() for _or in [0]
}
for _k, _rows in IIN_INDEX.items():
    for _lo, _hi, _mask, _brand in _rows:
        LENGTHS_BY_PREFIX2[_k] |= _mask


# Unknown-brand rule (module docstring): lengths as a bitmask, and the test.
UNKNOWN_BRAND_LENGTHS = sum(1 << n for n in (13, 14, 16, 17, 18, 19))


def unknown_brand(digits: bytes) -> bool:
    """True if a Luhn-valid number that no row names is still masked as a PAN
    (Luhn is the caller's check): payment MII 2-6, 13/14/16-19 digits, not
    20/21 + a valid YYMMDD date."""
    if not (UNKNOWN_BRAND_LENGTHS >> len(digits)) & 1 or not 50 <= digits[0] <= 54:
        return False
    if digits[:2] in (b"20", b"21"):
        mm, dd = int(digits[4:6]), int(digits[6:8])
        if 1 <= mm <= 12 and 1 <= dd <= 31:
            return False
    return True
