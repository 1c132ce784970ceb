"""HTTPS_PROXY=https://: TLS between the workload and the gateway, with real curl and requests;
plain proxy requests refused when TLS to the proxy is required."""

from __future__ import annotations

import http.client
import os
import subprocess

import pytest
import requests

from pangate.dev.pki import make_ca, make_leaf

from conftest import json_body

CLEAN = {k: v for k, v in os.environ.items()
         if k not in ("CURL_CA_BUNDLE", "SSL_CERT_FILE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                      "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE")}


@pytest.fixture(scope="module")
def own_cert(tmp_path_factory):
    """The gateway's own server certificate (one PEM: cert + key), from a CA of its own."""
    d = tmp_path_factory.mktemp("proxy-cert")
    ca = make_ca(str(d), "gateway-server-ca")
    cert, key = make_leaf(ca, str(d), ["127.0.0.1", "localhost"], "gateway")
    pem = d / "gateway.pem"
    pem.write_bytes(open(cert, "rb").read() + open(key, "rb").read())
    return ca[0], str(pem)


@pytest.fixture(scope="module")
def strict(start_gateway, own_cert):
    return start_gateway(options={"pangate_require_proxy_tls": "true", "pangate_proxy_cert": own_cert[1]})


def _curl(proxy, proxy_ca, ca, url, user=None):
    cmd = ["curl", "-sS", "--max-time", "20", "--proxy", proxy, "--cacert", ca, "-w", "\n%{http_code}"]
    if proxy_ca:
        cmd += ["--proxy-cacert", proxy_ca]
    if user:
        cmd += ["--proxy-user", user]
    r = subprocess.run(cmd + [url], capture_output=True, text=True, env=CLEAN, timeout=30)
    body, _, code = r.stdout.rpartition("\n")
    return code, body, r.stderr


def _requests(proxy, verify, url):
    s = requests.Session()
    s.trust_env = False
    s.verify = verify
    s.proxies = {"https": proxy, "http": proxy}
    return s.get(url, timeout=20)


def test_curl_over_an_https_proxy_with_the_gateway_ca(gateway, upstream, mint):
    url = f"https://localhost:{upstream.port}/v1/charges"
    code, body, err = _curl(f"https://127.0.0.1:{gateway.port}", gateway.ca_cert, gateway.ca_cert, url,
                            f"reader:{mint('reader')}")
    assert code == "200", (body, err)


def test_requests_over_an_https_proxy(gateway, upstream, mint):
    # urllib3 2 speaks TLS to an https:// proxy, verified with the same bundle as the destination.
    r = _requests(f"https://reader:{mint('reader')}@127.0.0.1:{gateway.port}", gateway.ca_cert,
                  f"https://localhost:{upstream.port}/v1/charges")
    assert r.status_code == 200, r.text


def test_own_certificate_and_plain_http_refused_when_required(strict, upstream, mint, own_cert, tmp_path):
    url = f"https://localhost:{upstream.port}/v1/charges"
    token = mint("reader")
    # The gateway presents its own certificate: trusted through its own CA, not the interception CA.
    code, body, err = _curl(f"https://127.0.0.1:{strict.port}", own_cert[0], strict.ca_cert, url, f"reader:{token}")
    assert code == "200", (body, err)
    code, _, err = _curl(f"https://127.0.0.1:{strict.port}", strict.ca_cert, strict.ca_cert, url, f"reader:{token}")
    assert code != "200" and "certificate" in err.lower()
    # requests verifies the proxy and the destination with one bundle: both CAs in it.
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(open(own_cert[0], "rb").read() + open(strict.ca_cert, "rb").read())
    assert _requests(f"https://reader:{token}@127.0.0.1:{strict.port}", str(bundle), url).status_code == 200

    # A plain-HTTP CONNECT carrying a token: refused, the token called exposed, no challenge to resend it.
    conn = http.client.HTTPConnection("127.0.0.1", strict.port, timeout=15)
    conn.request("CONNECT", f"localhost:{upstream.port}", headers={"Host": f"localhost:{upstream.port}",
                                                                   "Proxy-Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    doc = json_body(resp.read())
    conn.close()
    assert resp.status == 407 and doc["code"] == "proxy_tls_required"
    assert "HTTPS_PROXY=https://" in doc["reason"] and "exposed" in doc["reason"]
    assert resp.getheader("Proxy-Authenticate") is None
    # ... and a plain absolute-form request with one.
    code, body, _ = _curl(f"http://127.0.0.1:{strict.port}", None, strict.ca_cert,
                          f"http://localhost:{upstream.port}/v1/charges", f"reader:{token}")
    assert code == "407" and json_body(body.encode())["code"] == "proxy_tls_required"
    assert strict.log.wait_for(r"ALERT token_in_clear")
