"""Files pangate writes and key files it reads: one place for the careful way to do it.

- write_atomic: a reader (the gateway watching a file, a verifier, a restart)
  sees the old content or the new, never half of it, and the rename survives a
  crash.
- write_private: a private key is never briefly readable by others and never
  clobbers an existing one.
- Ed25519 key pairs (token signing, approvers, audit sealing) and their PEM files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


def _parent(path: str | os.PathLike) -> str:
    return os.path.dirname(os.path.abspath(path))


def _sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename (or creation) itself survives a crash
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Replace path with data whole: written to a temporary file beside it, synced, renamed."""
    path = os.fspath(path)
    directory = _parent(path)
    # mkstemp: a unique name (two writers never share a temporary file), created 0600.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_dir(directory)


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Create path (0600) holding data; FileExistsError if it exists. Missing folders are made (0700)."""
    path = os.fspath(path)
    try:
        os.makedirs(_parent(path), mode=0o700, exist_ok=True)
    except FileExistsError:  # a file where a folder should be; FileExistsError means "key exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), _parent(path)) from None
    # O_EXCL + explicit mode: the key is never briefly world-readable, never clobbered.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)  # ours (O_EXCL): a half-written key is worse than none
        raise
    _sync_dir(_parent(path))


def private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def create_key_pair(path: str | os.PathLike) -> ed25519.Ed25519PrivateKey:
    """A new Ed25519 key: private at path (0600, never overwriting one), public at path + '.pub'."""
    path = os.fspath(path)
    key = ed25519.Ed25519PrivateKey.generate()
    write_private(path, private_pem(key))
    write_atomic(path + ".pub", public_pem(key.public_key()), 0o644)
    return key


def read_public(path: str, what: str = "key") -> ed25519.Ed25519PublicKey:
    """The Ed25519 public key in a PEM file; ValueError names the file and the problem."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the {what} {path}: {e}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def read_private(path: str, what: str = "key", hint: str = "") -> ed25519.Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; ValueError names the file and the problem."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the {what} {path}: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key{hint}")
    return key


def keygen_command(path: str, note: str = "") -> int:
    """`pangate ... keygen`: make a key pair, never overwriting one."""
    path = os.path.expanduser(path)  # `--key=~/...` is not expanded by the shell
    try:
        create_key_pair(path)
    except FileExistsError:
        print(f"{path} exists; not overwritten", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cannot write the key {path}: {e.strerror}", file=sys.stderr)
        return 1
    pub = path + ".pub"
    print(f"private key: {path}\npublic key: {pub}" + (f"\n{note.format(pub=pub)}" if note else ""))
    return 0
