"""Reusable PAN/SAD corpus builders (used by test_pan.py, CLI and e2e tests).

Everything is generated from IIN prefixes with a computed Luhn check digit,
so the corpus follows the issuer table instead of a hand-copied list.
"""

from __future__ import annotations

import random

from pangate.pan.iin import IIN_TABLE


def luhn_digit(body: str) -> str:
    """Check digit that makes body+digit Luhn-valid."""
    total = 0
    for k, ch in enumerate(reversed(body)):
        d = int(ch)
        if k % 2 == 0:  # these get doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def make_pan(prefix: str, length: int, rng: random.Random | None = None) -> str:
    rng = rng or random.Random(hash((prefix, length)) & 0xFFFF)
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + luhn_digit(body)


def break_luhn(pan: str) -> str:
    """Same PAN with a wrong check digit."""
    return pan[:-1] + str((int(pan[-1]) + 1) % 10)


def valid_pans(rng: random.Random | None = None) -> list[tuple[str, str]]:
    """(brand, pan) for every IIN table row x every allowed length, both range ends."""
    rng = rng or random.Random(7812)
    out = []
    for brand, first, last, lengths in IIN_TABLE:
        for prefix in {first, last}:
            for n in lengths:
                out.append((brand, make_pan(prefix, n, rng)))
    return out


def group(pan: str, sizes: tuple[int, ...], sep: str = " ") -> str:
    parts, k = [], 0
    for size in sizes:
        parts.append(pan[k:k + size])
        k += size
    if k < len(pan):
        parts.append(pan[k:])
    return sep.join(p for p in parts if p)


def separator_styles(pan: str) -> dict[str, str]:
    """Every way the issue asks us to recognise a PAN being written."""
    return {
        "none": pan,
        "spaces4": group(pan, (4, 4, 4, 4), " "),
        "dashes4": group(pan, (4, 4, 4, 4), "-"),
        "amex465": group(pan, (4, 6, 5), " "),
        "amex465dash": group(pan, (4, 6, 5), "-"),
        "mixed": group(pan, (4,), " ")[:5] + group(pan[4:], (4, 4), "-").replace("-", " ", 1)
        if len(pan) > 12 else pan,
    }


def in_formats(value: str, key: str = "card") -> dict[str, str]:
    """A value embedded in each container format the gateway sees."""
    return {
        "text": f"Paid with {value} today.",
        "json_str": f'{{"{key}": "{value}", "amount": 12.5}}',
        "json_num": f'{{"{key}": {value}, "amount": 12.5}}' if value.isdigit() else f'{{"{key}": "{value}"}}',
        "html": f"<td class=\"c\">{value}</td>",
        "xml": f"<{key}>{value}</{key}>",
        "csv": f"1,Jane,{value},12/27\n",
        "form": f"a=1&{key}={value}&b=2",
    }


# Harmless numbers that must never be masked.
FALSE_POSITIVES = {
    "ms_timestamp": '{"ts": 1732800000000}',
    "ms_timestamp_text": "at 1732812345678 ms",
    "us_timestamp": "1732800000000123",
    "unix_time": '{"created": 1732800000}',
    "imei": "IMEI 356938035643809",      # Luhn-valid 15 digits starting 35
    "imei_86": "imei=861234567890126",
    "uuid": "550e8400-e29b-41d4-a716-446655440000",
    "uuid_digits": "id 12345678-1234-4111-1111-411111111111",
    "decimal_after": "4111111111111111.25",
    "decimal_before": "0.4111111111111111",
    "decimal_mid": "123.4111111111111111",
    "long_run_20": "41111111111111111111",
    "long_run_32": "4111111111111111" * 2,
    "glued_letter_left": "a4111111111111111",
    "glued_letter_right": "4111111111111111z",
    "hex_id": "0x4111111111111111",
    "phone_e164": "+44 20 7946 0958",
    "phone_us": "+1 (415) 555-2671",
    "phone_plus_12": "+582125551230",
    "order_id": "order 2024112800012345",
    "iso_date": "2024-11-28T13:20:00Z 2024-11-28",
    "amount": '{"amount": 1234567.89}',
}


def dense_csv_rows(n: int, rng: random.Random | None = None) -> list[tuple[str, str]]:
    """(row, pan) with one PAN per CSV row."""
    rng = rng or random.Random(1)
    pans = [p for _, p in valid_pans(rng) if len(p) in (15, 16)]
    rows = []
    for k in range(n):
        pan = rng.choice(pans)
        rows.append((f"{k},Jane Doe,{pan},12/27,{rng.randrange(10000) / 100}", pan))
    return rows


# ---- carriers: one document per content type, for end-to-end and CLI tests ----------------
def corpus_pans() -> list[str]:
    """Every brand and length, one PAN each (the IIN table's first prefix)."""
    seen, out = set(), []
    for brand, pan in valid_pans(random.Random(3)):
        if (brand, len(pan)) not in seen:
            seen.add((brand, len(pan)))
            out.append(pan)
    return out


def styled(pans: list[str]) -> list[str]:
    """Each PAN written in a rotating separator style (all styles appear)."""
    out = []
    for k, pan in enumerate(pans):
        styles = list(separator_styles(pan).values())
        out.append(styles[k % len(styles)])
    return out


def carrier_docs() -> dict[str, tuple[str, bytes]]:
    """name -> (content type, body) with every brand/length/style, plus the false-positive families."""
    pans = corpus_pans()
    written = styled(pans)
    harmless = list(FALSE_POSITIVES.values())
    text = "\n".join(f"line {k}: card {w} ok" for k, w in enumerate(written)) + "\n" + "\n".join(harmless)
    rows = "\n".join(f"{k},Jane,{w},12/27" for k, w in enumerate(written))
    json_doc = ("{\"cards\": [" + ", ".join(f'{{"n": "{w}", "raw": {p}}}' for w, p in zip(written, pans))
                + "], \"harmless\": [" + ", ".join('"%s"' % h.replace('"', "'") for h in harmless) + "]}")
    html = "<table>" + "".join(f"<tr><td>{w}</td></tr>" for w in written) + "</table><p>" + \
        " ".join(harmless).replace("<", "&lt;") + "</p>"
    xml = "<cards>" + "".join(f"<card><pan>{w}</pan></card>" for w in written) + "</cards>"
    form = "&".join(f"c{k}={w.replace(' ', '+')}" for k, w in enumerate(written)) + \
        "&p=" + "%20".join(["4111", "1111", "1111", "1111"]) + "&ts=1732800000000"
    boundary = "pgbnd7812"
    multipart = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"c{k}\"\r\n\r\n{w}\r\n"
                        for k, w in enumerate(written)) + f"--{boundary}--\r\n"
    return {
        "text": ("text/plain; charset=utf-8", text.encode()),
        "json": ("application/json", json_doc.encode()),
        "html": ("text/html", html.encode()),
        "xml": ("application/xml", xml.encode()),
        "csv": ("text/csv", rows.encode()),
        "form": ("application/x-www-form-urlencoded", form.encode()),
        "multipart": (f"multipart/form-data; boundary={boundary}", multipart.encode()),
    }


def raw_pans_in(data: bytes | str, pans: list[str] | None = None) -> list[str]:
    """Which of the corpus PANs appear raw (digits only, separators removed)."""
    if isinstance(data, bytes):
        data = data.decode("latin-1")
    flat = data.replace(" ", "").replace("-", "").replace("+", "").replace("%20", "")
    return [p for p in (pans or corpus_pans()) if p in flat]
