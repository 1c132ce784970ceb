"""Which gateway instance this is: named in every audit record and on every flow it holds.

`pangate_instance` names it; otherwise a stable id is kept in the audit
directory (one chain per instance), made once from the host name and a
random suffix, so a restarted instance continues under the same name.
"""

from __future__ import annotations

import os
import re
import secrets
import socket

FILE = "instance-id"
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")


def valid(name: str) -> bool:
    return bool(_VALID.match(name))


def resolve(configured: str, audit_dir: str | None) -> str:
    """The instance id; ValueError if the configured one is not a plain name."""
    if configured:
        if not valid(configured):
            raise ValueError(f"pangate_instance {configured!r}: letters, digits and . _ : - only (up to 100)")
        return configured
    fallback = f"{socket.gethostname().split('.')[0] or 'gateway'}-{os.getpid()}"
    if not audit_dir:
        return fallback
    path = os.path.join(audit_dir, FILE)
    try:
        with open(path, encoding="utf-8") as f:
            name = f.readline().strip()
        if valid(name):
            return name
    except OSError:
        pass
    name = f"{socket.gethostname().split('.')[0] or 'gateway'}-{secrets.token_hex(3)}"
    if not valid(name):
        name = f"gateway-{secrets.token_hex(3)}"
    try:
        os.makedirs(audit_dir, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(name + "\n")
    except FileExistsError:
        return resolve("", audit_dir)  # another process made it first: use theirs
    except OSError:
        return fallback
    return name
