"""Audit signing keys and signed digests of finished files (session recordings).

Plain module, no mitmproxy dependency. Kept apart from the writer so the
verifier and the recorder need only this and not the whole log machinery.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pangate.common.files import create_key_pair, write_atomic

log = logging.getLogger("pangate.audit.addon")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class SigningKeyMissing(ValueError):
    """The signing key is gone while a trail it sealed exists: starting would break the evidence."""


def has_audit_trail(directory: str | None) -> bool:
    if not directory:
        return False
    from pangate.audit.log import FILE_RE  # the writer imports this module: import late
    try:
        return any(FILE_RE.match(n) for n in os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return False


def missing_key_message(path: str, audit_dir: str) -> str:
    return (f"audit signing key {path} is missing but {audit_dir} holds an audit trail it sealed; "
            f"restore the key, or rotate on purpose: pangate audit rotate-key --key {path} "
            f"--audit-dir {audit_dir} --lost --reason TEXT")


def load_or_create_signing_key(path: str, audit_dir: str | None = None) -> Ed25519PrivateKey:
    """Load the Ed25519 key at `path`, creating it (0600) and `<path>.pub` if missing.

    A key is created only for a new trail: when `audit_dir` already holds audit
    files, a missing key raises SigningKeyMissing instead. A fresh key would
    overwrite `<path>.pub` and seal the continued chain with a key nothing links
    to the old one, so the whole trail would fail verification with either key.
    Replacing a key is `pangate audit rotate-key`, which records the change.

    Keep it outside the audit dir: whoever can rewrite the logs must not also hold
    the key that seals them."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        mode = os.stat(path).st_mode
        if mode & 0o077:
            log.warning("audit signing key %s was readable by others; tightening to 0600", path)
            os.chmod(path, 0o600)
        return serialization.load_pem_private_key(data, password=None)
    except FileNotFoundError:
        pass
    if has_audit_trail(audit_dir):
        raise SigningKeyMissing(missing_key_message(path, audit_dir))
    return create_key_pair(path)  # O_EXCL: a key made meanwhile by another process is never clobbered


def public_raw(public_key: Ed25519PublicKey) -> str:
    """The 32 raw bytes of a public key, base64: how key_rotation records carry the new key."""
    return base64.b64encode(public_key.public_bytes(serialization.Encoding.Raw,
                                                    serialization.PublicFormat.Raw)).decode()


def retired_pub_path(key_path: str, kid: str) -> str:
    """Where rotation keeps a retired public key: `<key>.<key id>.pub`, beside `<key>.pub`."""
    return f"{key_path}.{kid}.pub"


def load_keyring(paths) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id from the given files (or key objects), plus the retired public keys
    that rotation keeps beside each file (`<key>.<key id>.pub` next to `<key>.pub`)."""
    ring: dict[str, Ed25519PublicKey] = {}
    for src in paths:
        pub = load_public_key(src)
        ring[key_id(pub)] = pub
        if isinstance(src, (str, os.PathLike)) and os.fspath(src).endswith(".pub"):
            base = os.path.basename(os.fspath(src))[:-4]
            folder = os.path.dirname(os.path.abspath(src))
            for name in sorted(os.listdir(folder)):
                m = re.fullmatch(re.escape(base) + r"\.([0-9a-f]{16})\.pub", name)
                if m:
                    old = load_public_key(os.path.join(folder, name))
                    if key_id(old) == m.group(1):  # a file misnamed is not trusted under another id
                        ring[m.group(1)] = old
    return ring


def load_public_key(src) -> Ed25519PublicKey:
    """Accept a key object, a private key, PEM bytes, 32 raw bytes, or a path."""
    if isinstance(src, Ed25519PublicKey):
        return src
    if isinstance(src, Ed25519PrivateKey):
        return src.public_key()
    data = src
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            data = f.read()
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    if b"PRIVATE KEY" in data:
        return serialization.load_pem_private_key(data, password=None).public_key()
    return serialization.load_pem_public_key(data)


def _file_digest(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _file_message(name: str, size: int, digest: str) -> bytes:
    return f"pangate-file-digest/1\nname={name}\nsize={size}\nsha256={digest}\n".encode()


def sign_file(path: str, key: Ed25519PrivateKey, written: tuple[str, int] | None = None) -> dict:
    """Write `<path>.sig` (sha256, size, Ed25519 signature) for a finished recording.

    `written` is (sha256 hex, size) of what the writer wrote, kept as it wrote, so a rotation
    does not read the file back; without it the file is read (a file found at start-up). A
    file changed behind the writer's back then fails verification instead of being signed."""
    digest, size = written or _file_digest(path)
    name = os.path.basename(path)
    doc = {"file": name, "size": size, "sha256": digest, "alg": "ed25519",
           "key_id": key_id(key.public_key()),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "sig": base64.b64encode(key.sign(_file_message(name, size, digest))).decode()}
    write_atomic(path + ".sig", json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    return doc


def verify_file(path: str, public_key) -> tuple[bool, str]:
    try:
        with open(path + ".sig", "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return False, "missing .sig file"
    except ValueError as e:
        return False, f"unreadable .sig: {e}"
    try:
        digest, size = _file_digest(path)
    except FileNotFoundError:
        return False, "file missing (signature present)"
    if size != doc.get("size") or digest != doc.get("sha256"):
        return False, "content changed since signing (sha256/size mismatch)"
    if isinstance(public_key, dict):  # a keyring: the key the signature names
        pub = public_key.get(doc.get("key_id"))
        if pub is None:
            return False, f"signed by key {doc.get('key_id')}, which is not among the known keys"
    else:
        pub = load_public_key(public_key)
    if doc.get("key_id") != key_id(pub):
        return False, f"signed by key {doc.get('key_id')}, not {key_id(pub)}"
    try:
        pub.verify(base64.b64decode(doc.get("sig", "")),
                   _file_message(os.path.basename(path), size, digest))
    except (InvalidSignature, ValueError):
        return False, "bad signature"
    return True, "ok"
