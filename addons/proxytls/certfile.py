"""The gateway's own server certificate for TLS on the proxy port: loading and checking it (pure)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def load_pem(path: str):
    """(certificate, private key) from one PEM file holding both; ValueError says what is wrong."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path} holds no PEM certificate") from None
    key = None
    start = data.find(b"-----BEGIN")
    while start != -1:
        end = data.find(b"-----END", start)
        end = data.find(b"-----", end + 8) + 5 if end != -1 else -1
        block = data[start:end + 1] if end > 0 else b""
        if b"PRIVATE KEY" in block.split(b"\n", 1)[0]:
            try:
                key = serialization.load_pem_private_key(block, password=None)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}: the private key cannot be loaded ({e})") from None
            break
        start = data.find(b"-----BEGIN", start + 10)
    if key is None:
        raise ValueError(f"{path} holds no (unencrypted) PEM private key next to the certificate")
    leaf = certs[0]
    if leaf.public_key().public_numbers() != key.public_key().public_numbers():
        raise ValueError(f"{path}: the private key does not belong to the first certificate")
    if len(certs) > 1:
        raise ValueError(f"{path}: give the server certificate and its key only (clients are given the "
                         "issuing CA with --proxy-cacert or their trust store)")
    return leaf, key
