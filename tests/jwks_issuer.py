"""In-process OIDC issuer for tests: HTTPS on 127.0.0.1 with a throwaway CA.

Serves ``/.well-known/openid-configuration`` and ``/jwks.json``, mints tokens and
lets tests rotate keys or break things on purpose. Nothing here is for production.

    with JwksIssuer() as idp:                       # starts the server, stops on exit
        cfg = idp.issuer_config(name="idp")         # pangate.policy.model.Issuer (uses idp.ca_file)
        tok = idp.mint(sub="svc-a", alg="ES256")     # signed with the current ES256 key
        new_kid = idp.rotate("RS256")                # fresh key published, old one withdrawn
        idp.hits["/jwks.json"]                       # how many times a path was fetched

API
    JwksIssuer(audience="pangate", algs=("RS256", "ES256", "EdDSA"), tls=True)
      .start() / .stop() / context manager
      .base_url, .issuer (the "iss" value == base_url), .discovery_url, .jwks_uri
      .ca_file       PEM of the test CA (pass as Issuer.ca_file or requests verify=)
      .hits          collections.Counter of request paths served
      .status        HTTP status to answer with (set 503 to simulate an outage)
      .delay         seconds to wait before answering (a slow IdP); 0 by default
      .add_key(alg, kid=None, publish=True) -> kid
      .rotate(alg) -> kid           new key for alg becomes current; old keys of alg unpublished
      .unpublish(kid)
      .current_kid(alg) -> kid      key mint() uses by default for alg
      .jwks() -> dict               the JWKS currently served
      .write_jwks(path) -> path     same JWKS as a file (air-gapped mode)
      .mint(alg="RS256", kid=None, now=None, ttl=300, headers=None, **claims) -> str
            defaults iss/aud/sub/iat/nbf/exp/jti; a claim passed as None is omitted;
            kid=None uses current_kid(alg); kid="" omits the kid header.
      .mint_none(**claims) -> str   alg "none", empty signature
      .mint_hs256_confused(kid=None, **claims) -> str
            HS256 whose HMAC secret is the RSA public key PEM (classic alg confusion).
      .issuer_config(name="idp", **overrides) -> Issuer
"""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import secrets
import shutil
import ssl
import tempfile
import threading
import time
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks.json"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _new_key(alg: str):
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "ES512":
        return ec.generate_private_key(ec.SECP521R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported test alg {alg}")


def _public_jwk(private_key, alg: str, kid: str) -> dict:
    algo = {"RS": RSAAlgorithm, "PS": RSAAlgorithm, "ES": ECAlgorithm, "Ed": OKPAlgorithm}[alg[:2]]
    jwk = algo.to_jwk(private_key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig", alg=alg)
    return jwk


def _make_tls(tmpdir: Path) -> tuple[str, ssl.SSLContext]:
    """Throwaway CA + server cert for 127.0.0.1/localhost. Returns (ca_file, server context)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pangate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_file = tmpdir / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    (tmpdir / "server.pem").write_bytes(cert.public_bytes(pem))
    (tmpdir / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmpdir / "server.pem", tmpdir / "server.key")
    return str(ca_file), ctx


class JwksIssuer:
    def __init__(self, audience: str = "pangate", algs=("RS256", "ES256", "EdDSA"), tls: bool = True):
        self.audience = audience
        self.tls = tls
        self.hits: collections.Counter = collections.Counter()
        self.status = 200
        self.delay = 0.0
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, object]] = {}  # kid -> (alg, private key)
        self._published: list[str] = []
        self._current: dict[str, str] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="pangate-idp-"))
        self.ca_file: str | None = None
        self._server = None
        for alg in algs:
            self.add_key(alg)

    # -- server lifecycle --
    def start(self) -> "JwksIssuer":
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                with issuer._lock:
                    issuer.hits[path] += 1
                if issuer.delay:
                    time.sleep(issuer.delay)
                if issuer.status != 200:
                    body, code = b"{}", issuer.status
                elif path == DISCOVERY_PATH:
                    body, code = json.dumps(issuer.discovery()).encode(), 200
                elif path == JWKS_PATH:
                    body, code = json.dumps(issuer.jwks()).encode(), 200
                else:
                    body, code = b"{}", 404
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep pytest output quiet
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls:
            self.ca_file, ctx = _make_tls(self._tmp)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def base_url(self) -> str:
        if not self._server:
            raise RuntimeError("JwksIssuer not started")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def issuer(self) -> str:
        return self.base_url

    @property
    def discovery_url(self) -> str:
        return self.base_url + DISCOVERY_PATH

    @property
    def jwks_uri(self) -> str:
        return self.base_url + JWKS_PATH

    def discovery(self) -> dict:
        return {"issuer": self.issuer, "jwks_uri": self.jwks_uri,
                "id_token_signing_alg_values_supported": sorted({a for a, _ in self._keys.values()})}

    # -- keys --
    def add_key(self, alg: str, kid: str | None = None, publish: bool = True) -> str:
        kid = kid or f"{alg.lower()}-{secrets.token_hex(4)}"
        with self._lock:
            self._keys[kid] = (alg, _new_key(alg))
            if publish:
                self._published.append(kid)
                self._current[alg] = kid
        return kid

    def rotate(self, alg: str) -> str:
        old = [k for k in self._published if self._keys[k][0] == alg]
        kid = self.add_key(alg)
        for k in old:
            self.unpublish(k)
        return kid

    def unpublish(self, kid: str) -> None:
        with self._lock:
            if kid in self._published:
                self._published.remove(kid)

    def current_kid(self, alg: str) -> str:
        return self._current[alg]

    def jwks(self) -> dict:
        with self._lock:
            return {"keys": [_public_jwk(self._keys[k][1], self._keys[k][0], k) for k in self._published]}

    def write_jwks(self, path) -> str:
        Path(path).write_text(json.dumps(self.jwks()))
        return str(path)

    # -- tokens --
    def _claims(self, now: float | None, ttl: float, claims: dict) -> dict:
        now = int(time.time() if now is None else now)
        base = {"iss": self.issuer if self._server else "https://idp.test", "aud": self.audience,
                "sub": "svc-test", "iat": now, "nbf": now, "exp": now + int(ttl),
                "jti": secrets.token_hex(8)}
        base.update(claims)
        return {k: v for k, v in base.items() if v is not None}

    def mint(self, alg: str = "RS256", kid: str | None = None, now: float | None = None,
             ttl: float = 300, headers: dict | None = None, **claims) -> str:
        kid = self.current_kid(alg) if kid is None else kid
        key_kid = kid or self.current_kid(alg)
        key_alg, key = self._keys[key_kid]
        hdr = dict(headers or {})
        if kid:
            hdr["kid"] = kid
        return jwt.encode(self._claims(now, ttl, claims), key, algorithm=key_alg, headers=hdr)

    @staticmethod
    def _compact(header: dict, payload: dict, sign) -> str:
        signing_input = (_b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(payload).encode()))
        return signing_input + "." + _b64url(sign(signing_input.encode()))

    def mint_none(self, now: float | None = None, ttl: float = 300, **claims) -> str:
        return self._compact({"alg": "none", "typ": "JWT"}, self._claims(now, ttl, claims), lambda _: b"")

    def mint_hs256_confused(self, kid: str | None = None, now: float | None = None,
                            ttl: float = 300, **claims) -> str:
        # Built by hand: PyJWT rightly refuses a PEM public key as an HMAC secret.
        kid = kid or self.current_kid("RS256")
        secret = self._keys[kid][1].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return self._compact({"alg": "HS256", "typ": "JWT", "kid": kid}, self._claims(now, ttl, claims),
                             lambda m: hmac.new(secret, m, hashlib.sha256).digest())

    def issuer_config(self, name: str = "idp", **overrides):
        from pangate.policy.model import Issuer
        kw = dict(name=name, type="oidc", issuer=self.issuer, audience=self.audience,
                  discovery_url=self.discovery_url, ca_file=self.ca_file)
        if any(overrides.get(k) for k in ("jwks_uri", "jwks_file", "public_key_file")):
            kw["discovery_url"] = None  # Issuer wants exactly one key source
        kw.update(overrides)
        return Issuer(**kw)
