"""A real SAML 2.0 IdP for tests: pysaml2's Server, with its own key, certificate and metadata.

Assertions are built by pysaml2's assertion constructor (the one its IdP uses
for authn responses) and signed by its xmlsec1 backend, so the verifier is
tested against what a standard IdP emits, not against output of the code under
test. `clock_offset` moves the IdP's clock (skew, expired and future
assertions); `hostile` helpers below then tamper with signed output the way
attackers do.
"""

from __future__ import annotations

import base64
import datetime
import shutil
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

warnings.filterwarnings("ignore", module="saml2")  # pysaml2 imports deprecated cipher modes

from saml2 import BINDING_HTTP_REDIRECT, xmldsig  # noqa: E402
from saml2.config import IdPConfig  # noqa: E402
from saml2.metadata import entity_descriptor  # noqa: E402
from saml2.saml import NAMEID_FORMAT_PERSISTENT, NameID  # noqa: E402
from saml2.server import Server  # noqa: E402

XMLSEC = shutil.which("xmlsec1")
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
SHA256 = (xmldsig.SIG_RSA_SHA256, xmldsig.DIGEST_SHA256)
SHA1 = (xmldsig.SIG_RSA_SHA1, xmldsig.DIGEST_SHA1)


def _key_and_cert(d: Path, cn: str):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (d / "idp.key").write_bytes(key_pem)
    (d / "idp.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_pem


class SamlIdp:
    """One IdP: entity id, signing key (idp.key), certificate and metadata (idp-metadata.xml) in workdir."""

    def __init__(self, workdir: Path, entity_id: str = "https://idp.example.test/saml", lifetime_minutes: int = 5):
        if XMLSEC is None:
            raise RuntimeError("xmlsec1 is needed to sign test assertions (apt-get install xmlsec1)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.entity_id, self.dir = entity_id, workdir
        self.key_pem = _key_and_cert(workdir, "test-idp " + workdir.name)
        self.conf = IdPConfig()
        self.conf.load({
            "entityid": entity_id, "xmlsec_binary": XMLSEC,
            "key_file": str(workdir / "idp.key"), "cert_file": str(workdir / "idp.crt"),
            "service": {"idp": {
                "endpoints": {"single_sign_on_service": [(entity_id + "/sso", BINDING_HTTP_REDIRECT)]},
                "policy": {"default": {"lifetime": {"minutes": lifetime_minutes}, "attribute_restrictions": None,
                                       "name_form": "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"}},
                "name_id_format": [NAMEID_FORMAT_PERSISTENT]}},
            "metadata": {}, "delete_tmpfiles": True})
        self.server = Server(config=self.conf)
        self.metadata_xml = str(entity_descriptor(self.conf))
        self.metadata_path = workdir / "idp-metadata.xml"
        self.metadata_path.write_text(self.metadata_xml)

    def response(self, name_id: str, *, audience: str, recipient: str, attributes: dict | None = None,
                 sign_assertion: bool = True, sign_response: bool = False, algs=SHA256) -> bytes:
        """A full authn Response, exactly as pysaml2's IdP makes it for an SP."""
        resp = self.server.create_authn_response(
            identity=attributes or {}, in_response_to=None, destination=recipient, sp_entity_id=audience,
            name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text=name_id),
            authn={"class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified"},
            sign_assertion=sign_assertion, sign_response=sign_response, sign_alg=algs[0], digest_alg=algs[1])
        return str(resp).encode()

    def assertion(self, name_id: str, *, audience: str, recipient: str, attributes: dict | None = None,
                  clock_offset: float = 0.0, lifetime: float | None = None, sign: bool = True, algs=SHA256,
                  issuer: str | None = None) -> bytes:
        """One Assertion (RFC 7522's unit), built by the IdP's assertion constructor and signed by it.

        clock_offset shifts every time in it (the IdP's clock); lifetime (seconds) replaces
        the policy's validity for both Conditions and the bearer confirmation."""
        srv = self.server
        ast = srv.setup_assertion(
            {"class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified"}, audience, None, recipient,
            NameID(format=NAMEID_FORMAT_PERSISTENT, text=name_id), None, srv._issuer(issuer), None,
            attributes or {}, True, False)
        now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=clock_offset)
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        end = now + datetime.timedelta(seconds=lifetime if lifetime is not None else 300)
        ast.issue_instant = now.strftime(fmt)
        ast.conditions.not_before = (now - datetime.timedelta(seconds=5)).strftime(fmt)
        ast.conditions.not_on_or_after = end.strftime(fmt)
        for sc in ast.subject.subject_confirmation:
            sc.subject_confirmation_data.not_on_or_after = end.strftime(fmt)
        for st in ast.authn_statement or []:
            st.authn_instant = now.strftime(fmt)
        if not sign:
            return ast.to_string()
        return srv.sign(ast, sign_alg=algs[0], digest_alg=algs[1]).encode()


    def signed_response_around(self, assertion: bytes, algs=SHA256) -> bytes:
        """A Response signed by the IdP around the given (e.g. unsigned) assertion."""
        from saml2 import samlp
        from saml2.s_utils import sid, success_status_factory
        from saml2.saml import assertion_from_string

        resp = samlp.Response(id=sid(), version="2.0", issue_instant=datetime.datetime.now(
            datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), status=success_status_factory(),
            issuer=self.server._issuer(), assertion=assertion_from_string(assertion.decode()))
        return self.server.sign(resp, sign_alg=algs[0], digest_alg=algs[1]).encode()


def b64url(xml: bytes) -> str:
    return base64.urlsafe_b64encode(xml).decode().rstrip("=")


def assertion_from_response(response: bytes) -> bytes:
    """The Assertion element of a Response, standalone (exclusive c14n keeps its signature valid)."""
    root = etree.fromstring(response)
    return etree.tostring(root.find(f"{{{SAML}}}Assertion"))


# ------------------------------------------------------------------ hostile variants

def comment_in_nameid(assertion: bytes, at: int) -> bytes:
    """Insert an XML comment into the NameID text: exclusive c14n drops it, the signature still holds."""
    root = etree.fromstring(assertion)
    nid = root.find(f".//{{{SAML}}}NameID")
    text = nid.text
    nid.text = text[:at]
    comment = etree.Comment("")
    comment.tail = text[at:]
    nid.append(comment)
    return etree.tostring(root)


def wrap_with_injected(signed: bytes, evil_name_id: str) -> bytes:
    """The classic XSW: a Response whose first assertion is an unsigned forgery, the signed one after it."""
    good = etree.fromstring(signed)
    evil = etree.fromstring(signed)
    evil.set("ID", "_evil" + good.get("ID"))
    sig = evil.find("{http://www.w3.org/2000/09/xmldsig#}Signature")
    evil.remove(sig)
    evil.find(f".//{{{SAML}}}NameID").text = evil_name_id
    resp = etree.Element("{urn:oasis:names:tc:SAML:2.0:protocol}Response",
                         nsmap={"samlp": "urn:oasis:names:tc:SAML:2.0:protocol", "saml": SAML})
    resp.set("ID", "_resp1")
    resp.set("Version", "2.0")
    resp.set("IssueInstant", good.get("IssueInstant"))
    status = etree.SubElement(resp, "{urn:oasis:names:tc:SAML:2.0:protocol}Status")
    etree.SubElement(status, "{urn:oasis:names:tc:SAML:2.0:protocol}StatusCode",
                     Value="urn:oasis:names:tc:SAML:2.0:status:Success")
    resp.append(evil)
    resp.append(good)
    return etree.tostring(resp)


def wrap_signed_inside(signed: bytes, evil_name_id: str) -> bytes:
    """XSW variant: the forged assertion is the root and carries the original signature, the signed
    original hidden inside the signature's Object, where an ID lookup still finds it."""
    good = etree.fromstring(signed)
    evil = etree.fromstring(signed)
    evil.set("ID", "_evil" + good.get("ID"))
    evil.find(f".//{{{SAML}}}NameID").text = evil_name_id
    sig = evil.find("{http://www.w3.org/2000/09/xmldsig#}Signature")
    obj = etree.SubElement(sig, "{http://www.w3.org/2000/09/xmldsig#}Object")
    good.remove(good.find("{http://www.w3.org/2000/09/xmldsig#}Signature"))
    obj.append(good)
    return etree.tostring(evil)


def tamper_name_id(signed: bytes, evil_name_id: str) -> bytes:
    root = etree.fromstring(signed)
    root.find(f".//{{{SAML}}}NameID").text = evil_name_id
    return etree.tostring(root)
