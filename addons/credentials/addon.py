"""Credential custody: the backend credential is added here and nowhere else.

Workloads never hold it: the secret is read from the gateway's environment or
a file when the policy loads, injected into allowed requests for its
destination, stripped from anything the client sent, and redacted from
responses that echo it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy import ctx

from pangate.chain import veil
from pangate.policy.decide import destinations_for
from pangate.chain.context import FlowContext, refuse
from pangate.chain.failsafe import Component
from pangate.chain.wire import may_stream
from pangate.credentials.forms import Redactor
from pangate.credentials.kinds import CLIENT_CREDENTIAL_HEADERS, PLACEHOLDER, kind_of
from pangate.policy.model import Credential, Policy
from pangate.sinks.scrubber import SECRETS

log = logging.getLogger("pangate")
INJECTED = PLACEHOLDER
__all__ = ["CLIENT_CREDENTIAL_HEADERS", "INJECTED", "Credentials", "Secret", "ClientCert"]


@dataclass(frozen=True)
class Secret:
    credential: Credential
    value: str

    def __repr__(self) -> str:  # never let a secret reach a log line by accident
        return f"Secret({self.credential.type}, <redacted>)"

    @property
    def forms(self) -> tuple[str, ...]:
        """Every spelling of the secret that can come back (credentials.kinds: its kind's echo forms)."""
        return kind_of(self.credential).echo_forms(self.value)

    @property
    def redactor(self) -> Redactor:
        r = self.__dict__.get("_redactor")
        if r is None:  # built once per secret: a compiled alternation of every form
            r = Redactor(self.forms)
            object.__setattr__(self, "_redactor", r)
        return r


@dataclass(frozen=True)
class ClientCert:
    """A destination's mTLS client certificate and key, ready for OpenSSL."""

    credential: Credential
    cert: x509.Certificate
    key: object  # a cryptography private key

    def __repr__(self) -> str:
        return f"ClientCert({self.credential.file}, <key redacted>)"


def read_client_cert(cred: Credential) -> ClientCert:
    """The certificate (the first in its file) and private key of an mtls credential; ValueError says what is wrong."""
    try:
        with open(cred.file, "rb") as f:
            cert = x509.load_pem_x509_certificates(f.read())[0]
        with open(cred.key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise ValueError(f"cannot read {e.filename}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{cred.file} / {cred.key_file}: not a PEM certificate and unencrypted key "
                         f"({type(e).__name__})") from None
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ValueError(f"the key in {cred.key_file} does not belong to the certificate in {cred.file}")
    return ClientCert(cred, cert, key)


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

    sees_refused = frozenset({"responseheaders"})  # an echoed secret is redacted from any response

    def __init__(self, store):
        self.store = store
        self.secrets: dict[str, Secret] = {}
        self.client_certs: dict[str, ClientCert] = {}
        self.missing: dict[str, str] = {}  # destination -> why its secret is unavailable
        store.subscribe(self._policy_changed)

    def _policy_changed(self, policy: Policy) -> None:
        secrets, certs, missing = {}, {}, {}
        for dest in policy.destinations.values():
            cred = dest.credential
            if cred is None:
                continue
            try:
                if not kind_of(cred).sent:  # a client certificate: presented, not sent
                    certs[dest.name] = read_client_cert(cred)
                else:
                    secrets[dest.name] = Secret(cred, read_secret(cred))
            except ValueError as e:
                missing[dest.name] = str(e)
                log.error("pangate: no credential for destination %s: %s; its requests are refused", dest.name, e)
        self.secrets, self.client_certs, self.missing = secrets, certs, missing
        # Every sink (audit, recordings, logs, webhooks, export) redacts every echo form of these.
        SECRETS.replace(dict(_sink_secrets(secrets)))

    def running(self):
        veil.on_sent(self.scrub_sent)

    def done(self):
        veil.off_sent(self.scrub_sent)

    def scrub_sent(self, flow) -> None:
        """Once the request has left, the flow (and so mitmweb) keeps only a placeholder."""
        cred = FlowContext.of(flow).credential
        secret = self.secrets.get(cred["destination"]) if cred else None
        if secret is None:
            return
        kind_of(secret.credential).scrub(flow.request, secret.credential)

    def requestheaders(self, flow):
        # A streamed request's headers leave before `request`: inject now.
        if flow.request.stream or may_stream(flow):
            self.request(flow)

    def responseheaders(self, flow):
        """Headers echoing the credential, redacted before anything of the response leaves
        (a streamed body sends them right after this hook); ResponseMasking redacts the body."""
        secret = self.secret_sent(flow)
        if secret is not None and flow.response is not None:
            redact_fields(flow.response.headers, secret.redactor)
            if flow.response.trailers is not None:
                redact_fields(flow.response.trailers, secret.redactor)

    def secret_sent(self, flow) -> "Secret | None":
        dest = (FlowContext.of(flow).credential or {}).get("destination")
        return self.secrets.get(dest) if dest else None

    def request(self, flow):
        fc = FlowContext.of(flow)
        if fc.credential is not None:
            return
        dest = fc.destination
        if dest is None:
            return
        if dest in self.missing:
            refuse(flow, 503, "unavailable", f"the credential for {dest} is unavailable to the gateway",
                   "credential_unavailable")
            return
        if dest in self.client_certs:  # presented in the TLS handshake (tls_start_server)
            self._strip_client_credentials(flow, self.client_certs[dest].credential)
            fc.credential = {"destination": dest, "type": self.client_certs[dest].credential.type}
            return
        secret = self.secrets.get(dest)
        if secret is None:
            return
        self._strip_client_credentials(flow, secret.credential)
        self._inject(flow, secret)
        fc.credential = {"destination": dest, "type": secret.credential.type}

    def tls_start_server(self, tls_start) -> None:
        """Present the destination's client certificate to an upstream that asks for mTLS.

        Script addons run before mitmproxy's tlsconfig, so the connection is
        built by tlsconfig itself (its upstream verification unchanged) and
        the certificate added to this one connection only.
        """
        server = tls_start.conn
        if tls_start.ssl_conn is not None or not server.address or self.store.policy is None:
            return
        host, port = server.address[0], server.address[1]
        names = {d.name for d in destinations_for(self.store.policy, host, port, "https")}
        certs = {n: c for n, c in self.client_certs.items() if n in names}
        if not certs:
            return
        if len({c.credential for c in certs.values()}) > 1:
            # Without a certificate the mTLS upstream refuses the handshake: fail closed.
            log.error("pangate: %s:%s matches destinations with different client certificates (%s); none is sent",
                      host, port, ", ".join(sorted(certs)))
            return
        ctx.master.addons.get("tlsconfig").tls_start_server(tls_start)
        cert = next(iter(certs.values()))
        tls_start.ssl_conn.use_certificate(cert.cert)
        tls_start.ssl_conn.use_privatekey(cert.key)

    def _strip_client_credentials(self, flow, cred: Credential) -> None:
        kind_of(cred).strip(flow.request, cred)

    def _inject(self, flow, secret: Secret) -> None:
        kind_of(secret.credential).inject(flow.request, secret.credential, secret.value)



def _sink_secrets(secrets: dict[str, Secret]):
    """(name, (value, basic user)) for the sink registry; a basic credential ("user:password")
    also as its password with its user, so `user:password` in base64 is matched too."""
    for name, secret in secrets.items():
        yield name, (secret.value, None)
        if secret.credential.type == "basic" and ":" in secret.value:
            user, password = secret.value.split(":", 1)
            yield f"{name}#password", (password, user)


def redact_fields(headers, redactor: Redactor) -> bool:
    """Every header name and value with each form of the secret starred (same length); True if any was."""
    fields = tuple((redactor.data(k), redactor.data(v)) for k, v in headers.fields)
    if fields != headers.fields:
        headers.fields = fields
        return True
    return False
