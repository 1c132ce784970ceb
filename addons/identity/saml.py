"""SAML 2.0 bearer assertions as machine identity: verified the way attacks on SAML demand.

Plain module, no mitmproxy import. The XML signature is checked by signxml
(lxml-based, maintained, and built around "see what is signed": verify()
returns the canonical bytes each reference covers, re-parsed, with comments
cut out). Everything pangate reads from an assertion — issuer, subject, times,
audience, recipient, attributes — is read from that returned signed copy, never
by searching the document that came in again. On top of the library:

- The document is parsed without DTDs, entities or network; one carrying a
  DOCTYPE, a comment or a processing instruction is refused before any crypto
  (comments inside NameID truncated subjects in several SAML libraries).
- Exactly one Assertion may be in the document, and its own enveloped
  signature must cover it: a signed Response around an unsigned assertion, a
  second injected assertion, a reference to another element or duplicate IDs
  are all refused (signature wrapping).
- The signing certificate must be one from the IdP's metadata; the signature
  and every digest must use algorithms the policy allows (no SHA-1 by default).
- Conditions (NotBefore, NotOnOrAfter, AudienceRestriction) and a bearer
  SubjectConfirmationData (NotOnOrAfter, Recipient) are required and checked
  against an injectable clock with the issuer's leeway.
- Each assertion ID is accepted once while it is valid (replay.py).

Nothing here logs or echoes the assertion; messages are fixed strings and ids.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from pangate.identity.replay import ReplayCache, ReplayCacheFull, shared
from pangate.policy.model import NAMEID, Issuer

log = logging.getLogger("pangate.identity.saml")

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"saml": SAML, "samlp": SAMLP, "md": MD, "ds": DS}
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"

MAX_ASSERTION_BYTES = 256 * 1024  # real assertions are a few KiB; caps parse and c14n work
MAX_METADATA_BYTES = 2 * 1024 * 1024
MAX_CERTS = 8

SIGNATURE_URIS = {
    "rsa-sha256": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "rsa-sha384": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "rsa-sha512": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    "ecdsa-sha256": "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
    "ecdsa-sha384": "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
    "ecdsa-sha512": "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
    "rsa-sha1": "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
}
DIGEST_URIS = {
    "sha256": "http://www.w3.org/2001/04/xmlenc#sha256",
    "sha384": "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "sha512": "http://www.w3.org/2001/04/xmlenc#sha512",
    "sha1": "http://www.w3.org/2000/09/xmldsig#sha1",
}
_KNOWN_CONDITIONS = {f"{{{SAML}}}AudienceRestriction", f"{{{SAML}}}OneTimeUse", f"{{{SAML}}}ProxyRestriction"}
_B64 = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")


class SamlError(Exception):
    """Refused. ``reason`` is a short machine code; str() never holds the assertion."""

    def __init__(self, reason: str, message: str | None = None):
        self.reason = reason
        super().__init__(message or reason.replace("_", " "))


class MetadataNeeded(Exception):
    """verify() needs a (blocking) metadata fetch first."""


class MetadataError(Exception):
    """Metadata could not be fetched or parsed; any cached metadata is left in place."""


def _parser() -> etree.XMLParser:
    # No DTD loading, no entity expansion, no network, no huge trees. Comments and
    # PIs are kept (not silently dropped) so that their presence can be refused.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=False, remove_pis=False)


def parse_xml(data: bytes, what: str = "assertion", limit: int = MAX_ASSERTION_BYTES) -> etree._Element:
    """A hardened parse; SamlError('malformed') for anything but one plain XML document."""
    if not isinstance(data, bytes) or not data or len(data) > limit:
        raise SamlError("malformed", f"{what} is empty or too large")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError:
        raise SamlError("malformed", f"{what} is not well-formed XML") from None
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise SamlError("malformed", f"{what} carries a DTD, which is refused")
    if any(isinstance(n, etree._Entity) for n in root.iter()):
        raise SamlError("malformed", f"{what} carries entities, which are refused")
    return root


# --------------------------------------------------------------------- token shapes

def decode_assertion(text: str) -> bytes:
    """base64url (RFC 7522; standard base64 accepted too), padded or not -> the XML bytes."""
    if not isinstance(text, str) or not text or len(text) > MAX_ASSERTION_BYTES * 4 // 3 + 4 \
            or not _B64.match(text):
        raise SamlError("malformed", "assertion is not base64url")
    raw = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        data = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SamlError("malformed", "assertion is not base64url") from None
    if not data.lstrip().startswith(b"<"):
        raise SamlError("malformed", "assertion is not XML")
    return data


def looks_like_saml(token: str) -> bool:
    """Cheap shape test for a proxy password: base64 of something that starts with '<'."""
    if not isinstance(token, str) or token.count(".") == 2 or len(token) < 16 or not _B64.match(token):
        return False
    head = token[:16].replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(head, validate=True).lstrip().startswith(b"<")
    except (binascii.Error, ValueError):
        return False


def peek_issuer(root: etree._Element) -> str | None:
    """The assertion's Issuer as written, UNVERIFIED: only to pick which issuer's keys to check with."""
    assertion = root if root.tag == f"{{{SAML}}}Assertion" else root.find(f"{{{SAML}}}Assertion")
    node = assertion.find(f"{{{SAML}}}Issuer") if assertion is not None else None
    if node is None:  # e.g. a Response holding an EncryptedAssertion: let its issuer refuse it
        node = root.find(f"{{{SAML}}}Issuer")
    if node is None or node.text is None:
        return None
    return node.text.strip()


# --------------------------------------------------------------------- metadata

@dataclass(frozen=True)
class Metadata:
    entity_id: str
    certs: tuple[x509.Certificate, ...]
    valid_until: float | None = None


def parse_metadata(data: bytes, entity_id: str, now: float | None = None) -> Metadata:
    """The IdP's signing certificates from its SAML metadata (EntityDescriptor or EntitiesDescriptor)."""
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataError("metadata document too large")
    try:
        root = parse_xml(data, "metadata", MAX_METADATA_BYTES)
    except SamlError as e:
        raise MetadataError(str(e)) from None
    if root.tag == f"{{{MD}}}EntityDescriptor":
        candidates = [root]
    elif root.tag == f"{{{MD}}}EntitiesDescriptor":
        candidates = root.findall(f".//{{{MD}}}EntityDescriptor")
    else:
        raise MetadataError("not SAML metadata (no EntityDescriptor)")
    found = [e for e in candidates if e.get("entityID") == entity_id]
    if len(found) != 1:
        raise MetadataError(f"metadata has no single EntityDescriptor for entityID {entity_id!r}")
    entity = found[0]
    valid_until = _valid_until(root, entity)
    if valid_until is not None and now is not None and valid_until <= now:
        raise MetadataError(f"metadata for {entity_id!r} expired (validUntil)")
    certs = []
    for idp in entity.findall(f"{{{MD}}}IDPSSODescriptor"):
        for kd in idp.findall(f"{{{MD}}}KeyDescriptor"):
            if kd.get("use", "signing") != "signing":
                continue
            for node in kd.findall(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate"):
                try:
                    der = base64.b64decode("".join((node.text or "").split()), validate=True)
                    certs.append(x509.load_der_x509_certificate(der))
                except (binascii.Error, ValueError):
                    log.warning("skipping an unparsable certificate in the metadata of %s", entity_id)
    if not certs:
        raise MetadataError(f"metadata for {entity_id!r} has no IdP signing certificate")
    return Metadata(entity_id, tuple(certs[:MAX_CERTS]), valid_until)


def _valid_until(*nodes) -> float | None:
    out = None
    for n in nodes:
        v = n.get("validUntil")
        if v:
            try:
                t = _instant(v)
            except SamlError:
                raise MetadataError("metadata validUntil is not a date") from None
            out = t if out is None else min(out, t)
    return out


def fetch_metadata(url: str, *, ca_file: str | None = None, timeout: float = 5.0) -> bytes:
    """https only, TLS verified (system roots or ca_file), no redirects, size cap."""
    from pangate.common import http

    if not url.startswith("https://"):
        raise MetadataError("refusing to fetch metadata over plain http")
    try:
        client = http.session(ca_file, timeout)
    except ValueError as exc:
        raise MetadataError(str(exc)) from None
    try:
        with client, client.get(url, stream=True, headers={"Accept": "application/samlmetadata+xml, "
                                                                     "application/xml"}) as resp:
            if resp.status_code != 200:
                raise MetadataError(f"HTTP {resp.status_code} from {url}")
            body = b""
            for chunk in resp.iter_content(65536):
                body += chunk
                if len(body) > MAX_METADATA_BYTES:
                    raise MetadataError(f"metadata too large at {url}")
        return body
    except http.RequestException as exc:
        raise MetadataError(f"metadata fetch failed for {url}: {type(exc).__name__}") from exc


# --------------------------------------------------------------------- verified result

@dataclass(frozen=True)
class Assertion:
    """What a verified assertion says, read from the signed copy only."""

    id: str
    issuer: str  # the IdP entityID
    name_id: str
    name_id_format: str | None
    attributes: dict = field(default_factory=dict, hash=False, compare=False)  # name -> tuple of values
    expires_at: float = 0.0  # the earliest NotOnOrAfter that applies
    subject: str = ""  # mapped by the issuer's policy
    claims: dict = field(default_factory=dict, hash=False, compare=False)  # mapped by the issuer's policy


def _instant(value: str | None) -> float:
    """xs:dateTime in UTC (SAML core 1.3.3) -> epoch seconds."""
    if not value:
        raise SamlError("malformed", "missing time")
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise SamlError("malformed", "malformed time") from None
    if dt.tzinfo is None or dt.utcoffset() != timedelta(0):
        raise SamlError("malformed", "SAML times must be UTC")
    return dt.timestamp()


def _text(node) -> str:
    return "".join(node.itertext()).strip() if node is not None else ""


class SamlIssuerVerifier:
    """Verifies assertions of one SAML issuer (policy entry) with its metadata's certificates.

    Same event-loop rule as TokenVerifier: verify() does no I/O and raises
    MetadataNeeded when a fetch is due; refresh() does the blocking fetch.
    """

    def __init__(self, cfg: Issuer, fetch: Callable[..., bytes] = fetch_metadata,
                 clock: Callable[[], float] = time.time, replay: ReplayCache | None = None):
        if cfg.type != "saml":
            raise ValueError(f"issuer {cfg.name} is not a saml issuer")
        self.cfg, self._fetch, self._clock = cfg, fetch, clock
        self.replay = replay if replay is not None else shared()
        self.metadata: Metadata | None = None  # replaced whole, never mutated
        self.fetched_at = 0.0
        self.last_attempt: float | None = None
        self.in_flight = False
        self._lock = threading.Lock()
        self._sig_uris = {SIGNATURE_URIS[a] for a in cfg.algorithms}
        self._digest_uris = {DIGEST_URIS[d] for d in cfg.digest_algorithms}
        if not cfg.remote:
            self.refresh(force=True)  # a local file: errors surface when the policy loads

    # -- metadata (blocking) --
    def refresh(self, force: bool = False) -> bool:
        cfg = self.cfg
        with self._lock:
            now = self._clock()
            if not force and self.last_attempt is not None and now - self.last_attempt < cfg.refresh_interval:
                return False
            self.last_attempt = now
            self.in_flight = True
            try:
                if cfg.metadata_file:
                    try:
                        with open(cfg.metadata_file, "rb") as f:
                            data = f.read(MAX_METADATA_BYTES + 1)
                    except OSError as e:
                        raise MetadataError(f"cannot read the metadata of {cfg.name}: {e.strerror}") from None
                else:
                    try:
                        data = self._fetch(cfg.metadata_url, ca_file=cfg.ca_file)
                    except MetadataError:
                        raise
                    except Exception as exc:  # injected fetchers may raise anything
                        raise MetadataError(f"metadata fetch for {cfg.name} failed: {type(exc).__name__}") from exc
                self.metadata = parse_metadata(data, cfg.issuer, now)
                self.fetched_at = now
            finally:
                self.in_flight = False
            return True

    def _certs(self) -> tuple[x509.Certificate, ...]:
        cfg, md, now = self.cfg, self.metadata, self._clock()
        may_refresh = cfg.remote and (self.in_flight or self.last_attempt is None
                                      or now - self.last_attempt >= cfg.refresh_interval)
        if md is None:
            if may_refresh:
                raise MetadataNeeded()
            raise SamlError("keys_unavailable", f"no metadata loaded for issuer {cfg.name}")
        expired = md.valid_until is not None and md.valid_until <= now
        if may_refresh and (expired or now - self.fetched_at >= cfg.jwks_max_age):
            raise MetadataNeeded()  # stale: pick up certificate rotations and removals
        if expired:
            raise SamlError("keys_unavailable", f"the metadata of issuer {cfg.name} has expired")
        return md.certs

    # -- verification (pure CPU) --
    def verify(self, root: etree._Element) -> Assertion:
        """Verify a parsed Assertion (or a Response holding one). Raises SamlError or MetadataNeeded."""
        assertion = self._structure(root)
        signature = self._signature_of(assertion)
        certs = self._certs()
        signed = self._check_signature(root, assertion, signature, certs)
        result = self._read(signed)
        self._consume(result)
        return result

    def _structure(self, root: etree._Element) -> etree._Element:
        if root.xpath("//comment() | //processing-instruction()"):
            # IdPs do not write comments into assertions; canonicalization drops them from
            # the signed bytes, and libraries reading text nodes around them read a different
            # subject than the one signed. Nothing good comes with one: refused.
            raise SamlError("xml_comment", "the assertion document carries XML comments or processing instructions")
        if root.xpath("//saml:EncryptedAssertion | //saml:EncryptedID | //saml:EncryptedAttribute", namespaces=NS):
            raise SamlError("encrypted_assertion", "encrypted assertions are not supported: the IdP must sign, "
                                                   "not encrypt, assertions for pangate")
        assertions = root.xpath("//saml:Assertion", namespaces=NS)
        if len(assertions) != 1:
            raise SamlError("multiple_assertions" if assertions else "malformed",
                            "the document must hold exactly one Assertion" if assertions else "no Assertion found")
        ids = [v for el in root.iter() if isinstance(el.tag, str) for k, v in el.attrib.items()
               if k in ("ID", "Id", "id")]
        if len(ids) != len(set(ids)):
            raise SamlError("duplicate_id", "the document has duplicate ID attributes")
        assertion = assertions[0]
        if root.tag == f"{{{SAMLP}}}Response":
            if assertion.getparent() is not root:
                raise SamlError("multiple_assertions", "the Assertion is not where a Response holds it")
            status = root.find(f"{{{SAMLP}}}Status/{{{SAMLP}}}StatusCode")
            if status is None or status.get("Value") != SUCCESS:
                raise SamlError("idp_refused", "the IdP's Response status is not Success")
        elif root is not assertion:
            raise SamlError("malformed", "expected a SAML Assertion or Response")
        return assertion

    def _signature_of(self, assertion: etree._Element) -> etree._Element:
        sigs = assertion.findall(f"{{{DS}}}Signature")
        if not sigs:
            # A signed Response does not make its assertion signed: only the assertion's
            # own signature is accepted, so the assertion can never be swapped inside it.
            raise SamlError("unsigned_assertion", "the assertion itself is not signed")
        if len(sigs) != 1:
            raise SamlError("bad_signature", "the assertion has more than one signature")
        sig = sigs[0]
        method = sig.find(f"{{{DS}}}SignedInfo/{{{DS}}}SignatureMethod")
        if method is None or method.get("Algorithm") not in self._sig_uris:
            raise SamlError("alg_not_allowed", f"signature algorithm not allowed for issuer {self.cfg.name}")
        digests = sig.findall(f"{{{DS}}}SignedInfo/{{{DS}}}Reference/{{{DS}}}DigestMethod")
        if not digests or any(d.get("Algorithm") not in self._digest_uris for d in digests):
            raise SamlError("alg_not_allowed", f"digest algorithm not allowed for issuer {self.cfg.name}")
        return sig

    def _check_signature(self, root, assertion, signature, certs) -> etree._Element:
        from signxml import DigestAlgorithm, SignatureConfiguration, SignatureMethod, XMLVerifier

        embedded = signature.findall(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate")
        if embedded:
            # The signature names its certificate: it must be one the metadata trusts.
            try:
                ders = {base64.b64decode("".join((n.text or "").split()), validate=True) for n in embedded}
            except (binascii.Error, ValueError):
                raise SamlError("malformed", "unreadable certificate in the signature") from None
            candidates = [c for c in certs if c.public_bytes(Encoding.DER) in ders]
            if not candidates:
                raise SamlError("unknown_key", "the assertion is signed by a key not in the metadata "
                                               f"of {self.cfg.name}")
        else:
            candidates = list(certs)
        location = "./" if root is assertion else f"./{{{SAML}}}Assertion/"
        data = etree.tostring(root)
        last: Exception | None = None
        for cert in candidates[:MAX_CERTS]:
            # Metadata is the trust anchor; the certificate's own dates carry no meaning
            # there (SAML metadata interoperability profile), so check at a time it is valid.
            now = datetime.fromtimestamp(self._clock(), timezone.utc)
            at = min(max(now, cert.not_valid_before_utc + timedelta(seconds=1)),
                     cert.not_valid_after_utc - timedelta(seconds=1))
            config = SignatureConfiguration(
                location=location, expect_references=1, verification_time=at,
                signature_methods=frozenset(SignatureMethod(u) for u in self._sig_uris),
                digest_algorithms=frozenset(DigestAlgorithm(u) for u in self._digest_uris))
            try:
                result = XMLVerifier().verify(data, x509_cert=cert, parser=_parser(), id_attribute="ID",
                                              expect_config=config)
                break
            except Exception as e:  # whatever the library raises (schema, digest, key type): not verified
                last = e
        else:
            log.info("saml signature refused for issuer %s: %s", self.cfg.name, type(last).__name__)
            raise SamlError("bad_signature", f"the assertion signature does not verify for issuer {self.cfg.name}")
        signed = result.signed_xml
        ref = result.signature_xml.find(f"{{{DS}}}SignedInfo/{{{DS}}}Reference")
        want = assertion.get("ID")
        # What was signed must be this very assertion, enveloping its signature.
        if (signed is None or signed.tag != f"{{{SAML}}}Assertion" or not want or signed.get("ID") != want
                or ref is None or ref.get("URI") != f"#{want}"):
            raise SamlError("signature_wrapping", "the signature does not cover the assertion it is in")
        return signed

    def _read(self, a: etree._Element) -> Assertion:
        """Read and check the signed assertion; nothing from the unsigned document is used."""
        cfg, now, leeway = self.cfg, self._clock(), self.cfg.leeway
        if a.get("Version") != "2.0":
            raise SamlError("malformed", "not a SAML 2.0 assertion")
        aid = a.get("ID")
        issuer = _text(a.find(f"{{{SAML}}}Issuer"))
        if issuer != cfg.issuer:
            raise SamlError("bad_issuer", f"the assertion is not from issuer {cfg.name}")
        if _instant(a.get("IssueInstant")) > now + leeway:
            raise SamlError("not_yet_valid", "the assertion was issued in the future")
        subject = a.find(f"{{{SAML}}}Subject")
        name_ids = subject.findall(f"{{{SAML}}}NameID") if subject is not None else []
        if len(name_ids) != 1 or len(name_ids[0]) or not _text(name_ids[0]):
            raise SamlError("malformed", "the assertion needs exactly one plain NameID")
        name_id = _text(name_ids[0])

        conditions = a.findall(f"{{{SAML}}}Conditions")
        if len(conditions) != 1:
            raise SamlError("malformed", "the assertion needs one Conditions element")
        cond = conditions[0]
        ends = []
        if cond.get("NotBefore") is not None and _instant(cond.get("NotBefore")) > now + leeway:
            raise SamlError("not_yet_valid", "the assertion is not valid yet (NotBefore)")
        if cond.get("NotOnOrAfter") is not None:
            ends.append(_instant(cond.get("NotOnOrAfter")))
            if ends[-1] <= now - leeway:
                raise SamlError("expired", "the assertion has expired (NotOnOrAfter)")
        for c in cond:
            if isinstance(c.tag, str) and c.tag not in _KNOWN_CONDITIONS:
                raise SamlError("unknown_condition", "the assertion has a condition pangate does not understand")
        restrictions = cond.findall(f"{{{SAML}}}AudienceRestriction")
        if not restrictions:
            raise SamlError("bad_audience", "the assertion has no AudienceRestriction")
        for r in restrictions:  # each restriction is a condition of its own: all must hold
            if not any(_text(x) in cfg.audience for x in r.findall(f"{{{SAML}}}Audience")):
                raise SamlError("bad_audience", f"the assertion is not for audience {cfg.audience[0]!r}")

        ends.append(self._bearer(subject, now, leeway))
        values: dict[str, tuple[str, ...]] = {}
        for attr in a.findall(f"{{{SAML}}}AttributeStatement/{{{SAML}}}Attribute"):
            name = attr.get("Name")
            if name:
                values[name] = values.get(name, ()) + tuple(_text(v) for v in attr.findall(f"{{{SAML}}}AttributeValue"))
        fmt = name_ids[0].get("Format")
        mapped_subject, claims = self._map(name_id, values)
        return Assertion(aid, issuer, name_id, fmt, values, min(ends), mapped_subject, claims)

    def _bearer(self, subject, now: float, leeway: float) -> float:
        """The expiry of the first bearer confirmation that holds; the precise refusal otherwise."""
        confirmations = [sc for sc in subject.findall(f"{{{SAML}}}SubjectConfirmation")
                         if sc.get("Method") == BEARER]
        if not confirmations:
            raise SamlError("no_bearer_confirmation", "the assertion has no bearer SubjectConfirmation")
        problem = None
        for sc in confirmations:
            data = sc.find(f"{{{SAML}}}SubjectConfirmationData")
            if data is None or data.get("NotOnOrAfter") is None or data.get("Recipient") is None:
                problem = problem or SamlError("malformed", "bearer SubjectConfirmationData needs NotOnOrAfter "
                                                            "and Recipient")
                continue
            if data.get("Recipient") not in self.cfg.recipients:
                problem = problem or SamlError("bad_recipient", "the assertion is for another recipient")
                continue
            if data.get("NotBefore") is not None and _instant(data.get("NotBefore")) > now + leeway:
                problem = problem or SamlError("not_yet_valid", "the subject confirmation is not valid yet")
                continue
            end = _instant(data.get("NotOnOrAfter"))
            if end <= now - leeway:
                problem = problem or SamlError("expired", "the subject confirmation has expired")
                continue
            return end
        raise problem

    def _map(self, name_id: str, values: dict) -> tuple[str, dict]:
        cfg = self.cfg

        def source(name: str):
            if name == NAMEID:
                return name_id
            got = values.get(name)
            if not got:
                return None
            return got[0] if len(got) == 1 else got  # many values: a tuple, matched by no plain claim

        subject = source(cfg.subject_from)
        if not isinstance(subject, str) or not subject:
            raise SamlError("unmapped_subject", f"the assertion has no single {cfg.subject_from!r} for the subject")
        claims = {"nameid": name_id}
        for claim, src in cfg.claim_map:
            v = source(src)
            if v is not None:
                claims[claim] = v
        return subject, claims

    def _consume(self, a: Assertion) -> None:
        try:
            fresh = self.replay.first_use(f"{self.cfg.name}|{a.id}", a.expires_at + self.cfg.leeway)
        except ReplayCacheFull:
            raise SamlError("replay_cache_full", "too many live assertions: try again later") from None
        if not fresh:
            raise SamlError("replayed", "this assertion was already used")

