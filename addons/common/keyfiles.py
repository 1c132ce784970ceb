"""Ed25519 key files: read them with a clear error, make them from the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


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
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the {what} {path}: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key{hint}")
    return key


def keygen_command(path: str, note: str = "") -> int:
    """`pangate ... keygen`: make a key pair, never overwriting one."""
    from pangate.identity.tokens import keygen

    try:
        pub = keygen(path)
    except FileExistsError:
        print(f"{path} exists; not overwritten", file=sys.stderr)
        return 1
    print(f"private key: {path}\npublic key: {pub}" + (f"\n{note.format(pub=pub)}" if note else ""))
    return 0
