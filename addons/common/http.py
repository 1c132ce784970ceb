"""pangate's own outbound HTTP (JWKS and discovery, approval webhooks, SIEM collectors).

One stack, requests, configured one way:

- TLS is always verified: against the given CA file, else the system roots
  (the OpenSSL default paths, so SSL_CERT_FILE/SSL_CERT_DIR still apply, as
  they did for the ssl module); a request that turns verification off is refused.
- Nothing else is taken from the environment (trust_env off): no proxy (these
  calls go straight to their destination, never through a proxy that could be
  the gateway itself), no REQUESTS_CA_BUNDLE, no .netrc credentials.
- Every request has a timeout and follows no redirect unless the caller asks.
"""

from __future__ import annotations

import os
import ssl

import requests

DEFAULT_TIMEOUT = 10.0
RequestException = requests.RequestException


def system_roots() -> str | bool:
    """The system trust store as requests takes it (file or directory); True: requests' own bundle."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.capath):
        if candidate and os.path.exists(candidate):
            return candidate
    return True


class Session(requests.Session):
    def __init__(self, ca_file: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        super().__init__()
        if ca_file and not os.path.isfile(ca_file):
            raise ValueError(f"CA file {ca_file} does not exist")
        self.trust_env = False
        self.proxies = {}
        self.verify = ca_file or system_roots()
        self.timeout = timeout
        self.headers["User-Agent"] = "pangate"

    def request(self, method, url, **kw):
        if kw.get("verify") is False or self.verify is False:
            raise ValueError("pangate never turns TLS verification off")
        kw.setdefault("timeout", self.timeout)
        kw.setdefault("allow_redirects", False)
        return super().request(method, url, **kw)


def session(ca_file: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Session:
    """A session for one destination: verified against ca_file (or the system roots)."""
    return Session(ca_file, timeout)
