"""Compare the PAN engine with Microsoft Presidio's credit card recognizer on one corpus.

    .venv/bin/python scripts/compare_presidio.py [--python PRESIDIO_PYTHON]

Presidio is not a dependency of pangate: the script runs its recognizer in a
separate interpreter that has `presidio-analyzer` (make one with
`python3.12 -m venv /tmp/presidio && /tmp/presidio/bin/pip install presidio-analyzer`).
The corpus is the test corpus (tests/pan_corpus.py): every issuer-table brand
and length in every separator style, in text and JSON, plus the false-positive
families (timestamps, IMEIs, UUIDs, decimals, phone numbers, ...).
Reported: cards each finds, cards Presidio finds that the engine misses (the
target is zero), and detections on texts that hold no card (fewer is better).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pan_corpus import FALSE_POSITIVES, break_luhn, separator_styles, valid_pans  # noqa: E402

from pangate.pan.engine import find_pans  # noqa: E402

PRESIDIO = """
import json, sys
from presidio_analyzer.predefined_recognizers import CreditCardRecognizer
r = CreditCardRecognizer()
out = [[(x.start, x.end) for x in r.analyze(t, ["CREDIT_CARD"], None)] for t in json.load(sys.stdin)]
json.dump(out, sys.stdout)
"""


def corpus() -> tuple[list[str], list[str]]:
    """(texts that hold exactly one card, texts that hold none)."""
    cards, none = [], []
    for _brand, pan in valid_pans():
        for styled in set(separator_styles(pan).values()):
            cards += [f"card {styled} ok", json.dumps({"number": styled})]
        none.append(f"card {break_luhn(pan)} ok")  # Luhn-invalid: not a card
    none += list(FALSE_POSITIVES.values())
    return cards, none


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default="/tmp/presidio/bin/python", help="an interpreter with presidio-analyzer")
    args = ap.parse_args()
    cards, none = corpus()
    texts = cards + none
    try:
        res = subprocess.run([args.python, "-c", PRESIDIO], input=json.dumps(texts), capture_output=True,
                             text=True, check=True, timeout=600)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"cannot run Presidio with {args.python}: {e}\n(see this script's docstring)", file=sys.stderr)
        return 2
    theirs = json.loads(res.stdout)
    ours = [find_pans(t.encode()) for t in texts]
    n = len(cards)
    ours_hit = [bool(x) for x in ours[:n]]
    theirs_hit = [bool(x) for x in theirs[:n]]
    missed_vs_presidio = [cards[i] for i in range(n) if theirs_hit[i] and not ours_hit[i]]
    fp_ours = sum(bool(x) for x in ours[n:])
    fp_theirs = sum(bool(x) for x in theirs[n:])
    print(f"corpus: {n} texts with one card each, {len(none)} texts with none")
    print(f"cards found:           pangate {sum(ours_hit)}/{n}, presidio {sum(theirs_hit)}/{n}")
    print(f"found by presidio, missed by pangate: {len(missed_vs_presidio)}")
    for t in missed_vs_presidio[:10]:
        print(f"  {t[:80]}")
    print(f"false positives:       pangate {fp_ours}/{len(none)}, presidio {fp_theirs}/{len(none)}")
    return 0 if not missed_vs_presidio and fp_ours <= fp_theirs else 1


if __name__ == "__main__":
    sys.exit(main())
