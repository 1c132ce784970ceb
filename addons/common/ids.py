"""Identifiers pangate generates (request ids, approval ids), shaped so no scrubber can take
them for a card number.

Why: every sink's blunt pass stars any Luhn-valid run of 13-19 digits, and random hex holds
one about once in 1,500 ids (13 decimal digits in a row, then Luhn). A starred request id in
the canonical decision line no longer finds its audit record. The records exempt ids under
their keys (sinks.scrubber.generated_id); free text, log lines and CLI output cannot, so
the ids are drawn to need no exemption: a letter at each end (no digits of a neighbour join
them) and never 12 decimal digits in a row (fewer than any card number has).
"""

from __future__ import annotations

import re
import secrets

_LETTERS = "abcdef"
_LONG_DIGITS = re.compile(r"[0-9]{12}")


def hex_id(length: int) -> str:
    """`length` (3 or more) lower-case hex characters, random but for the shape above."""
    if length < 3:
        raise ValueError("an id has 3 characters or more")
    while True:
        middle = secrets.token_hex((length - 1) // 2)[:length - 2]
        value = secrets.choice(_LETTERS) + middle + secrets.choice(_LETTERS)
        if not _LONG_DIGITS.search(value):  # about 1 draw in 300 is drawn again
            return value
