"""Reading the audit trail for reports: records of a period, in order, with a progress callback."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator

from pangate.audit.log import list_audit_files

_REL = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """`90d`, `12h`, `2w` ago, or a UTC date/time `2026-01-31[T12:00[:00]][Z]`; epoch seconds."""
    now = time.time() if now is None else now
    m = _REL.match(text or "")
    if m:
        return now - int(m.group(1)) * _UNIT[m.group(2)]
    t = text.strip().rstrip("Z")
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(t, fmt)) - time.timezone
        except ValueError:
            continue
    raise ValueError(f"--since {text!r}: give a period like 90d, 12h, 2w or a UTC date like 2026-01-31")


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def read(audit_dir: str, since: float, progress: Callable[[int, int], None] | None = None) -> Iterator[dict]:
    """Records at or after `since` (checkpoints left out); a torn last line is skipped."""
    if not os.path.isdir(audit_dir):
        raise ValueError(f"{audit_dir} is not an audit directory")
    files = list_audit_files(audit_dir)
    total = sum(os.path.getsize(f) for f in files)
    done, start = 0, iso(since)
    cutoff_day = start[:10].replace("-", "")
    for path in files:
        size = os.path.getsize(path)
        if os.path.basename(path)[6:14] < cutoff_day:  # audit-YYYYMMDD-NNNN: a whole day before the period
            done += size
            continue
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                done += len(raw)
                if progress is not None and lineno % 2000 == 0:
                    progress(done, total)
                if not raw.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(raw)
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: not a JSON audit record "
                                     "(`pangate audit verify` says what happened)") from None
                if rec.get("event") == "checkpoint" or str(rec.get("time", "")) < start:
                    continue
                yield rec
    if progress is not None:
        progress(total, total)


def identity_name(rec: dict) -> str | None:
    ident = rec.get("identity")
    if isinstance(ident, dict):
        return ident.get("name")
    return ident if isinstance(ident, str) else None
