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
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pangate.common.files import create_key_pair, write_atomic

log = logging.getLogger("pangate.audit.addon")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_signing_key(path: str) -> Ed25519PrivateKey:
    """Load the Ed25519 key at `path`, creating it (0600) and `<path>.pub` if missing.

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
    return create_key_pair(path)  # O_EXCL: a key made meanwhile by another process is never clobbered


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


def sign_file(path: str, key: Ed25519PrivateKey) -> dict:
    """Write `<path>.sig` (sha256, size, Ed25519 signature) for a finished recording."""
    digest, size = _file_digest(path)
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
    pub = load_public_key(public_key)
    if doc.get("key_id") != key_id(pub):
        return False, f"signed by key {doc.get('key_id')}, not {key_id(pub)}"
    try:
        pub.verify(base64.b64decode(doc.get("sig", "")),
                   _file_message(os.path.basename(path), size, digest))
    except (InvalidSignature, ValueError):
        return False, "bad signature"
    return True, "ok"
