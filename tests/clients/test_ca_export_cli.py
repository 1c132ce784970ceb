"""`pangate ca export`: only the certificate ever leaves, and each recipe says what its client reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from pangate.cli import ca
from pangate.cli.main import main

VENV_BIN = Path(sys.executable).parent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["ca", "export", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_plain_export_is_the_certificate_only(capsys, confdir):
    rc, out, err = run(capsys, "--confdir", str(confdir))
    assert rc == 0 and not err
    assert out.startswith("-----BEGIN CERTIFICATE-----") and out.rstrip().endswith("-----END CERTIFICATE-----")
    assert "PRIVATE" not in out
    cert = x509.load_pem_x509_certificate(out.encode())
    on_disk = x509.load_pem_x509_certificate((confdir / ca.CA_FILE).read_bytes())
    assert cert == on_disk


def test_a_file_with_a_private_key_is_refused(capsys, tmp_path, confdir):
    # mitmproxy-ca.pem holds key + cert: a confdir whose cert file is that must not leak the key.
    (tmp_path / ca.CA_FILE).write_bytes((confdir / "mitmproxy-ca.pem").read_bytes())
    rc, out, err = run(capsys, "--confdir", str(tmp_path), "--client", "curl")
    assert rc == 2 and out == ""
    assert "private key" in err and "refusing" in err and "BEGIN" not in err


def test_missing_and_non_ca_certificates_are_explained(capsys, tmp_path, pki):
    rc, out, err = run(capsys, "--confdir", str(tmp_path))
    assert rc == 2 and out == "" and "no CA certificate at" in err and "--confdir" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    (tmp_path / ca.CA_FILE).write_bytes(Path(pki.cert).read_bytes())  # a leaf, not a CA
    rc, out, err = run(capsys, "--confdir", str(tmp_path))
    assert rc == 2 and "is not a CA certificate" in err
    (tmp_path / ca.CA_FILE).write_text("hello")
    rc, out, err = run(capsys, "--confdir", str(tmp_path))
    assert rc == 2 and "not a PEM certificate" in err


# What each client reads, as a user trying them finds it: the proxy variable and the trust setting.
EXPECTED = {
    "curl": ["export HTTPS_PROXY=", "CURL_CA_BUNDLE", "--cacert", "http_proxy only in lowercase"],
    "wget": ["export https_proxy=", "--ca-certificate=", "ONLY the lowercase https_proxy"],
    "requests": ["export HTTPS_PROXY=", "export REQUESTS_CA_BUNDLE="],
    "httpx": ["export HTTPS_PROXY=", "export SSL_CERT_FILE="],
    "urllib": ["export https_proxy=", "export SSL_CERT_FILE="],
    "node": ["before 24 ignores HTTPS_PROXY", "EnvHttpProxyAgent", "setGlobalDispatcher", "npm install undici",
             "export NODE_EXTRA_CA_CERTS=", "NODE_USE_ENV_PROXY"],
    "java": ["-Dhttp.nonProxyHosts= ", "-Djdk.http.auth.tunneling.disabledSchemes= ", "keytool -importcert",
             "-Dhttps.proxyHost=gw.internal", "-Dhttps.proxyPort=3128", "javax.net.ssl.trustStore="],
    "git": ["export HTTPS_PROXY=", "export GIT_SSL_CAINFO="],
    "debian": ["/usr/local/share/ca-certificates/pangate.crt", "update-ca-certificates", "apt-get install"],
    "alpine": ["/usr/local/share/ca-certificates/pangate.crt", "update-ca-certificates", "apk add"],
}


@pytest.mark.parametrize("client", ca.CLIENTS)
def test_each_recipe_names_its_variables(capsys, confdir, client):
    rc, out, err = run(capsys, "--confdir", str(confdir), "--client", client, "--proxy", "http://gw.internal:3128")
    assert rc == 0, err
    for needle in EXPECTED[client]:
        assert needle in out, (client, needle)
    assert "NO_PROXY" in out and "never a card-data destination" in out
    if client != "java":  # Java takes host and port as properties, the token from an Authenticator
        assert "${PANGATE_IDENTITY}:${PANGATE_TOKEN}@gw.internal:3128" in out
    assert out.count("-----BEGIN CERTIFICATE-----") == 1 and "PRIVATE" not in out
    # Valid bash, whatever the client (the e2e tests run the ones this machine has clients for).
    subprocess.run(["bash", "-n"], input=out, text=True, check=True)


def test_all_prints_every_recipe_once_with_one_certificate(capsys, confdir):
    rc, out, _ = run(capsys, "--confdir", str(confdir), "--client", "all")
    assert rc == 0 and out.count("-----BEGIN CERTIFICATE-----") == 1
    for client in ca.CLIENTS:
        assert EXPECTED[client][0] in out


def test_bad_proxy_and_url_are_refused(capsys, confdir):
    for bad in ("https://gw:8080", "http://user:pw@gw:8080", "http://gw:99999", "socks5://gw:1080"):
        rc, out, err = run(capsys, "--confdir", str(confdir), "--client", "curl", "--proxy", bad)
        assert rc == 2 and out == "" and "--proxy" in err, bad
    rc, out, err = run(capsys, "--confdir", str(confdir), "--client", "curl", "--url", "ftp://x/")
    assert rc == 2 and "--url" in err
    with pytest.raises(SystemExit):
        main(["ca", "export", "--client", "lynx"])


def test_ca_path_is_where_the_recipe_saves_it(capsys, confdir, tmp_path):
    target = tmp_path / "with space" / "ca.pem"
    target.parent.mkdir()
    rc, out, _ = run(capsys, "--confdir", str(confdir), "--client", "curl", "--ca-path", str(target))
    assert rc == 0
    head = out.split("\n# curl:")[0]  # the part that saves the certificate
    subprocess.run(["bash", "-euc", head], check=True, cwd=tmp_path)
    assert x509.load_pem_x509_certificate(target.read_bytes()) == x509.load_pem_x509_certificate(
        (confdir / ca.CA_FILE).read_bytes())


def test_the_command_does_not_load_mitmproxy():
    code = ("import sys; from pangate.cli.main import main; rc = main(['ca', 'export', '--confdir', '/nonexistent']); "
            "sys.exit(10 if any(m.startswith('mitmproxy') for m in sys.modules) else rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
