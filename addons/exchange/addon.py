"""The token exchange endpoint: off unless `pangate_exchange_listen` is set.

Workloads whose identity comes as a SAML assertion (or an OIDC token) POST it
to https://HOST:PORT/token and get a short-lived pangate token to put in
Proxy-Authorization. The listener runs in its own threads (server.py); every
exchange is handled here on the proxy's event loop, with the current policy,
the revocation list and the audit trail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy import certs, ctx, exceptions

from pangate.chain.failsafe import Component
from pangate.common import events
from pangate.exchange.grant import ExchangeError, Exchanger, parse_request, revoked_reason
from pangate.exchange.server import ExchangeServer, is_loopback, json_answer, parse_listen
from pangate.identity.addon import identity_for, verifier_inputs
from pangate.identity.tokens import TokenVerifier

log = logging.getLogger("pangate")
OPTIONS = {"pangate_exchange_listen", "pangate_exchange_cert", "pangate_exchange_key", "pangate_token_signing_key"}
ANSWER_TIMEOUT = 30.0


class Exchange(Component):
    def __init__(self, store, revocations=None):
        self.store, self.revocations = store, revocations
        self.server: ExchangeServer | None = None
        self.exchanger: Exchanger | None = None
        self.verifier: TokenVerifier | None = None
        self._inputs = None
        self._loop: asyncio.AbstractEventLoop | None = None
        store.subscribe(self._policy_changed)

    def load(self, loader):
        loader.add_option("pangate_exchange_listen", str, "",
                          "Token exchange endpoint (RFC 7522 SAML bearer, RFC 8693 token exchange): PORT for "
                          "loopback or HOST:PORT. Empty: off.")
        loader.add_option("pangate_exchange_cert", str, "",
                          "PEM certificate (chain) of the exchange endpoint; its key in it or in "
                          "pangate_exchange_key. Empty: a certificate from the gateway's CA.")
        loader.add_option("pangate_exchange_key", str, "", "PEM private key for pangate_exchange_cert.")
        loader.add_option("pangate_token_signing_key", str, "",
                          "Ed25519 private key (from `pangate token keygen`) the exchange signs pangate tokens "
                          "with; the policy's pangate issuer must have its public key.")

    def configure(self, updated):
        if not OPTIONS & set(updated):
            return
        self._stop()
        opts = ctx.options
        if not opts.pangate_exchange_listen:
            return
        try:
            host, port = parse_listen(opts.pangate_exchange_listen)
        except ValueError as e:
            raise exceptions.OptionsError(f"pangate_exchange_listen: {e}") from None
        if not opts.pangate_token_signing_key:
            raise exceptions.OptionsError("pangate_exchange_listen needs pangate_token_signing_key")
        try:
            exchanger = Exchanger(os.path.expanduser(opts.pangate_token_signing_key))
            exchanger.issuer_for(self.store.policy)
            tls = self._tls(host, opts)
            server = ExchangeServer(host, port, tls, self._answer)
        except (ValueError, OSError, ssl.SSLError) as e:
            raise exceptions.OptionsError(f"pangate exchange: {e}") from None
        self.exchanger, self.server = exchanger, server.start()
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass  # running() sets it
        if not is_loopback(host):
            log.warning("pangate exchange listens on %s, beyond loopback: workloads there can exchange credentials",
                        host)
        log.info("pangate exchange listening at https://%s:%d/token", host, server.port)

    def running(self):
        self._loop = asyncio.get_running_loop()

    def done(self):
        self._stop()

    def _stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _policy_changed(self, policy) -> None:
        # Our own verifier over the same issuers (the replay cache is shared process-wide).
        issuers, _static, files = verifier_inputs(policy)
        if self.verifier is None or (issuers, files) != self._inputs:
            self.verifier = TokenVerifier(issuers)
            self._inputs = (issuers, files)

    def _tls(self, host: str, opts) -> ssl.SSLContext:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        if opts.pangate_exchange_cert:
            tls.load_cert_chain(opts.pangate_exchange_cert, opts.pangate_exchange_key or None)
            return tls
        # A certificate from the gateway's own CA, which workloads already trust for interception.
        store = certs.CertStore.from_store(os.path.expanduser(opts.confdir), "mitmproxy", opts.key_size)
        sans = [x509.DNSName("localhost")] if host == "localhost" else [x509.IPAddress(ipaddress.ip_address(host))]
        if host != "localhost" and is_loopback(host):
            sans.append(x509.DNSName("localhost"))
        entry = store.get_cert(host, sans)
        key = entry.privatekey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
        with tempfile.TemporaryDirectory(prefix="pangate-exchange-") as d:  # 0700; gone once loaded
            path = os.path.join(d, "endpoint.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(entry.cert.to_pem() + b"".join(c.to_pem() for c in entry.chain_certs) + key)
            tls.load_cert_chain(path)
        return tls

    # -- called on the listener's threads --
    def _answer(self, peer: str, headers, body: bytes):
        loop = self._loop
        if loop is None or loop.is_closed():
            return json_answer(503, {"error": "temporarily_unavailable", "code": "starting",
                                     "error_description": "the gateway is starting"})
        fut = asyncio.run_coroutine_threadsafe(self._exchange(peer, headers.get("Content-Type"), body), loop)
        try:
            return fut.result(ANSWER_TIMEOUT)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            return json_answer(503, {"error": "temporarily_unavailable", "code": "timeout",
                                     "error_description": "the exchange took too long"})

    # -- on the event loop --
    async def _exchange(self, peer: str, content_type: str | None, body: bytes):
        try:
            return await self._exchange_inner(peer, content_type, body)
        except Exception:  # fail closed, and say nothing about why beyond the log
            log.exception("pangate exchange failed")
            events.emit("token_exchange", outcome="refused", code="internal_error", client=peer)
            return json_answer(500, {"error": "server_error", "code": "internal_error",
                                     "error_description": "the exchange failed"})

    async def _exchange_inner(self, peer: str, content_type: str | None, body: bytes):
        policy, exchanger = self.store.policy, self.exchanger
        if policy is None or exchanger is None or self.verifier is None or not self.store.healthy:
            return self._refused(peer, None, ExchangeError("policy_unavailable", "no policy is loaded",
                                                           "temporarily_unavailable", 503))
        try:
            req = parse_request(content_type, body)
            pangate_issuer = exchanger.issuer_for(policy)
        except ExchangeError as e:
            return self._refused(peer, None, e)
        except ValueError as e:
            return self._refused(peer, None, ExchangeError("no_pangate_issuer", str(e), "server_error", 500))
        if self.revocations is not None and not self.revocations.healthy:
            return self._refused(peer, req, ExchangeError("revocations_unavailable", self.revocations.problem,
                                                          "temporarily_unavailable", 503))
        current = self.revocations.current if self.revocations is not None else None
        outcome = await exchanger.exchange(
            req, policy=policy, pangate_issuer=pangate_issuer, verifier=self.verifier, identity_for=identity_for,
            is_revoked=lambda name, ids: revoked_reason(current, name, ids), client=peer)
        self._record(outcome.record)
        return json_answer(outcome.status, outcome.body)

    def _refused(self, peer: str, req, e: ExchangeError):
        self._record({"outcome": "refused", "code": e.code, "client": peer,
                      "grant_type": None if req is None else req.grant_type.rsplit(":", 1)[-1]})
        return json_answer(e.status, {"error": e.error, "error_description": e.description, "code": e.code})

    @staticmethod
    def _record(record: dict) -> None:
        events.emit("token_exchange", **record)
        log.info("pangate exchange outcome=%s code=%s identity=%s issuer=%s client=%s", record.get("outcome"),
                 record.get("code"), record.get("identity"), record.get("issuer"), record.get("client"))
