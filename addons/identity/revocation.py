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
import tempfile
import time
from dataclasses import dataclass, field

from mitmproxy import ctx, exceptions

from pangate.common import events
from pangate.chain.failsafe import Component
from pangate.common.periodic import Periodic, file_stamp

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
        fd, tmp = tempfile.mkstemp(prefix=".revocations-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(current.to_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def entry(reason: str | None) -> dict:
    return {"at": round(time.time(), 3), "reason": reason or "revoked by an operator"}


class Revocations(Periodic, Component):
    """Loads `pangate_revocations`, reloads it on change, and answers is_revoked()."""

    _had_file = False  # once a list was read, a missing file is a failure, not "nothing revoked"

    def __init__(self):
        self.current = RevocationList()
        self._stamp = None
        self.problem_code = "revocations_unavailable"

    def load(self, loader):
        loader.add_option("pangate_revocations", str, DEFAULT_PATH,
                          "Revoked identities and token ids (written by `pangate revoke`), reloaded on change.")

    def configure(self, updated):
        if "pangate_revocations" in updated:
            try:
                self._load(ctx.options.pangate_revocations, announce=False)
            except ValueError as e:
                raise exceptions.OptionsError(f"pangate revocations: {e}") from None

    def is_revoked(self, caller) -> str | None:
        """Why the caller's identity or token is revoked, or None."""
        lst = self.current
        hit = lst.identities.get(caller.identity)
        if hit is not None:
            return f"identity {caller.identity!r} is revoked: {hit.get('reason', 'revoked')}"
        jti = caller.principal.token_id
        if jti and jti in lst.jtis:
            return f"this token (id {jti}) is revoked: {lst.jtis[jti].get('reason', 'revoked')}"
        return None

    def _load(self, path: str, announce: bool = True) -> None:
        stamp = file_stamp(path)
        if stamp is None and self._had_file:
            # A list that existed and vanished would silently lift every revocation.
            raise ValueError(f"{path} disappeared")
        self._had_file = self._had_file or stamp is not None  # even if it does not parse
        new = read(path)
        old, self.current, self._stamp = self.current, new, stamp
        self.healthy, self.problem = True, ""
        log.info("pangate revocation list loaded from %s: %d identities, %d token ids",
                 path, len(new.identities), len(new.jtis))
        if not announce:
            return
        # Held flows (approvals) subscribe to these and end the revoked ones.
        for name in new.identities.keys() - old.identities.keys():
            events.emit("revoked", alert=True, identity=name, jti=None, reason=new.identities[name].get("reason"))
        for jti in new.jtis.keys() - old.jtis.keys():
            events.emit("revoked", alert=True, identity=None, jti=jti, reason=new.jtis[jti].get("reason"))
        for name in old.identities.keys() - new.identities.keys():
            events.emit("unrevoked", identity=name, jti=None)
        for jti in old.jtis.keys() - new.jtis.keys():
            events.emit("unrevoked", identity=None, jti=jti)

    async def tick(self):
        try:
            self.poll()
        except Exception as e:  # the watcher must outlive any surprise: fail closed, keep watching
            self.healthy, self._stamp = False, None
            self.problem = f"the revocation list could not be checked ({type(e).__name__})"
            log.exception("pangate revocation watcher")

    def poll(self) -> None:
        """Reload the list if its file changed."""
        path = ctx.options.pangate_revocations
        stamp = file_stamp(path)
        if stamp == self._stamp:
            return
        try:
            self._load(path)
        except ValueError as e:
            # An unreadable list may hide a revocation: refuse all traffic until it reads again.
            self._stamp = stamp
            self.healthy = False
            self.problem = f"the revocation list cannot be read ({e}); requests are refused until it can"
            log.error("pangate %s", self.problem)
            events.emit("revocations_rejected", alert=True, path=path, error=str(e))


