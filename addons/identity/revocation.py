"""Instant revocation: identities and token ids the gateway refuses, kept in a file.

`pangate revoke` writes the list atomically (var/revocations.json by default);
the gateway watches it like the policy, so a revocation reaches the next
request of every open tunnel within a poll, and survives restarts. Nothing is
exposed on the network for it: whoever may write the file may revoke.

The file holds names and token ids, never a token.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field

from pangate.common.files import write_atomic

log = logging.getLogger("pangate")
DEFAULT_PATH = "var/revocations.json"
_NAME = re.compile(r"^[\w.:@/+=-]{1,200}$", re.ASCII)  # names and JWT ids: no spaces or controls


@dataclass(frozen=True)
class RevocationList:
    identities: dict = field(default_factory=dict)  # name -> {"at": epoch, "reason": str}
    jtis: dict = field(default_factory=dict)  # token id -> {"at": epoch, "reason": str}

    def to_json(self) -> str:
        return json.dumps({"version": 1, "identities": self.identities, "jtis": self.jtis}, indent=1, sort_keys=True)


def parse(text: str, path: str) -> RevocationList:
    """The list in text; ValueError names the file and the problem."""
    try:
        doc = json.loads(text) if text.strip() else {"version": 1}
    except ValueError as e:
        raise ValueError(f"{path}: not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ValueError(f"{path}: expected an object with version 1")
    out = {}
    for key in ("identities", "jtis"):
        entries = doc.get(key, {})
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            raise ValueError(f"{path}: {key} must map names to objects")
        out[key] = entries
    return RevocationList(out["identities"], out["jtis"])


def read(path: str) -> RevocationList:
    """The list at path; a missing file is an empty list."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read(), path)
    except FileNotFoundError:
        return RevocationList()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None


@contextlib.contextmanager
def editing(path: str):
    """Read-modify-write the list under a lock, replacing the file atomically.

    Yields a RevocationList whose dicts the caller changes in place. The
    gateway never sees a half-written file: it is renamed into place whole.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two operators revoking at once both land
        current = read(path)
        yield current
        write_atomic(path, (current.to_json() + "\n").encode(), 0o644)


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def entry(reason: str | None) -> dict:
    return {"at": round(time.time(), 3), "reason": reason or "revoked by an operator"}
