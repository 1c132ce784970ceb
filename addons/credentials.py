"""Credential custody: the backend credential is added here and nowhere else.

Workloads never hold it: the secret is read from the gateway's environment or
a file when the policy loads, injected into allowed requests for its
destination, stripped from anything the client sent, and redacted from
responses that echo it.
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass

from .failsafe import Component, meta, refuse, refused
from .policy import Credential, Policy

log = logging.getLogger("pangate")
CLIENT_CREDENTIAL_HEADERS = ("Authorization", "Cookie", "X-Api-Key", "Api-Key")


@dataclass(frozen=True)
class Secret:
    credential: Credential
    value: str

    def __repr__(self) -> str:  # never let a secret reach a log line by accident
        return f"Secret({self.credential.type}, <redacted>)"


def read_secret(cred: Credential, environ=os.environ) -> str:
    """The credential's value from its env variable or file; ValueError says which is missing."""
    if cred.env:
        value = environ.get(cred.env)
        if not value:
            raise ValueError(f"environment variable {cred.env} is not set")
        return value
    try:
        with open(cred.file, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as e:
        raise ValueError(f"cannot read {cred.file}: {e.strerror}") from None
    if not value:
        raise ValueError(f"{cred.file} is empty")
    return value


class Credentials(Component):
    """Injects each destination's credential into allowed requests."""

    def __init__(self, store):
        self.store = store
        self.secrets: dict[str, Secret] = {}
        self.missing: dict[str, str] = {}  # destination -> why its secret is unavailable
        store.subscribe(self._policy_changed)

    def _policy_changed(self, policy: Policy) -> None:
        secrets, missing = {}, {}
        for dest in policy.destinations.values():
            cred = dest.credential
            if cred is None or cred.type == "mtls":
                continue
            try:
                secrets[dest.name] = Secret(cred, read_secret(cred))
            except ValueError as e:
                missing[dest.name] = str(e)
                log.error("pangate: no credential for destination %s: %s; its requests are refused", dest.name, e)
        self.secrets, self.missing = secrets, missing

    def request(self, flow):
        if refused(flow):
            return
        dest = (meta(flow).get("decision") or {}).get("destination")
        if dest is None:
            return
        if dest in self.missing:
            refuse(flow, 503, "unavailable", f"the credential for {dest} is unavailable to the gateway",
                   "credential_unavailable")
            return
        secret = self.secrets.get(dest)
        if secret is None:
            return
        self._strip_client_credentials(flow, secret.credential)
        self._inject(flow, secret)
        meta(flow)["credential"] = {"destination": dest, "type": secret.credential.type}

    def _strip_client_credentials(self, flow, cred: Credential) -> None:
        headers = flow.request.headers
        for name in CLIENT_CREDENTIAL_HEADERS + ((cred.name,) if cred.type == "header" else ()):
            headers.pop(name, None)
        if cred.type == "query":
            flow.request.query.pop(cred.name, None)

    def _inject(self, flow, secret: Secret) -> None:
        cred, value = secret.credential, secret.value
        if cred.type == "header":
            flow.request.headers[cred.name] = value
        elif cred.type == "bearer":
            flow.request.headers[cred.name or "Authorization"] = f"Bearer {value}"
        elif cred.type == "basic":
            flow.request.headers[cred.name or "Authorization"] = "Basic " + base64.b64encode(value.encode()).decode()
        elif cred.type == "query":
            flow.request.query[cred.name] = value

    def response(self, flow):
        """A backend that echoes the credential must not hand it to the workload."""
        dest = (meta(flow).get("credential") or {}).get("destination")
        secret = self.secrets.get(dest) if dest else None
        if secret is None or flow.response is None:
            return
        needle = secret.value.encode()
        for k, v in list(flow.response.headers.items(multi=True)):
            if secret.value in v:
                flow.response.headers.set_all(k, [x.replace(secret.value, "*" * len(secret.value))
                                                  for x in flow.response.headers.get_all(k)])
        body = flow.response.get_content(strict=True)
        if body and needle in body:
            flow.response.set_content(body.replace(needle, b"*" * len(needle)))
            meta(flow)["credential"]["echo_redacted"] = True
