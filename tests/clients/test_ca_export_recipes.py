"""The `pangate ca export --client X` recipes, run exactly as printed, through a real gateway.

Each recipe is written to a file and run by bash in an empty directory, with an
environment stripped of every proxy and CA variable the machine sets: whatever
makes the call work must come from the recipe. The upstream's certificate is
from another CA, so a call that bypassed the gateway fails TLS, and the card
numbers come back masked only through it.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
STRIPPED = {"REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
            "GIT_SSL_CAINFO", "NODE_OPTIONS", "NODE_USE_ENV_PROXY", "JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS"}
MASKED = "424242******4242"


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in STRIPPED and not k.lower().endswith("_proxy")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # python3 = the venv's (requests, httpx)
    return {**env, **extra}


def export(confdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "pangate"), "ca", "export", "--confdir", str(confdir), *args],
                          capture_output=True, text=True, timeout=30)


def run_recipe(gw, upstream, mint, client: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    url = f"https://localhost:{upstream.port}/v1/charges"
    res = export(gw.confdir, "--client", client, "--proxy", gw.proxy_url, "--url", url)
    assert res.returncode == 0, res.stderr
    script = cwd / f"{client}-recipe.sh"
    script.write_text(res.stdout)
    return subprocess.run(["bash", "-euo", "pipefail", str(script)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=clean_env(PANGATE_IDENTITY="reader", PANGATE_TOKEN=mint("reader")))


def assert_200_through_gateway(res: subprocess.CompletedProcess) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    # The examples print "HTTP <status>" last; wget -S prints the status line on stderr.
    assert any(re.search(r"^\s*HTTP(/1\.1)? 200\b", stream, re.M) for stream in (res.stdout, res.stderr)), out[-3000:]
    assert MASKED in res.stdout and "4242424242424242" not in res.stdout, res.stdout[-2000:]


def need(tool: str) -> None:
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed")


@pytest.mark.parametrize("client", ["curl", "requests", "httpx", "urllib", "wget"])
def test_recipe_gets_200_through_the_gateway(gateway, upstream, mint, tmp_path, client):
    if client in ("curl", "wget"):
        need(client)
    if client == "httpx":
        pytest.importorskip("httpx")
    assert_200_through_gateway(run_recipe(gateway, upstream, mint, client, tmp_path))


def test_without_the_recipe_the_same_call_fails(gateway, upstream, mint, tmp_path):
    """The control: the recipe is what makes it work (no trust, no proxy: no 200)."""
    need("curl")
    url = f"https://localhost:{upstream.port}/v1/charges"
    res = subprocess.run(["curl", "-sS", "--proxy", gateway.proxy_url, "--proxy-user", f"reader:{mint('reader')}",
                          "-w", "\nHTTP %{http_code}\n", url], cwd=tmp_path, capture_output=True, text=True,
                         timeout=30, env=clean_env())
    assert res.returncode != 0 and "HTTP 200" not in res.stdout


@pytest.fixture(scope="module")
def undici_dir(tmp_path_factory) -> Path:
    """undici from the npm registry: Node 20's fetch runs on undici but does not export EnvHttpProxyAgent."""
    need("node")
    need("npm")
    d = tmp_path_factory.mktemp("node-recipe")
    env = clean_env(npm_config_update_notifier="false")
    try:
        res = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "undici@7"], cwd=d,
                             capture_output=True, text=True, timeout=180, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install undici@7 timed out: the npm registry is not reachable from here")
    if res.returncode != 0 or not (d / "node_modules" / "undici").is_dir():
        pytest.skip(f"npm install undici@7 failed (registry unreachable?): {(res.stderr or res.stdout)[-300:]}")
    return d


def test_node_recipe_gets_200_through_the_gateway(gateway, upstream, mint, undici_dir):
    assert_200_through_gateway(run_recipe(gateway, upstream, mint, "node", undici_dir))


def test_node_without_the_agent_goes_direct(gateway, upstream, undici_dir):
    """Why the recipe needs undici: Node 20's fetch ignores HTTPS_PROXY (so it meets the upstream's own
    certificate, which NODE_EXTRA_CA_CERTS=the gateway CA does not vouch for)."""
    major = int(subprocess.run(["node", "-p", "process.versions.node.split('.')[0]"], capture_output=True,
                               text=True).stdout.strip() or 0)
    if major >= 24:
        pytest.skip("Node 24+ may honour HTTPS_PROXY itself")
    js = (f'fetch("https://localhost:{upstream.port}/v1/charges").then(r => console.log("HTTP", r.status), '
          'e => { console.log("FAILED", String(e.cause && e.cause.code)); })')
    res = subprocess.run(["node", "-e", js], cwd=undici_dir, capture_output=True, text=True, timeout=60,
                         env=clean_env(HTTPS_PROXY=gateway.proxy_url, NODE_EXTRA_CA_CERTS=gateway.ca_cert))
    assert "FAILED" in res.stdout and "HTTP" not in res.stdout, res.stdout + res.stderr


class BearerChallengeFirst(AssertionError):
    """Java's HttpClient answers only the first scheme of the first Proxy-Authenticate header:
    the gateway sends one header per scheme, Basic first, and this says so if that breaks."""


def proxy_authenticate_headers(gw, target: str) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
    conn.request("CONNECT", target, headers={"Host": target})
    resp = conn.getresponse()
    values = resp.headers.get_all("Proxy-Authenticate") or []
    conn.close()
    return values


def test_java_recipe_gets_200_through_the_gateway(gateway, upstream, mint, tmp_path):
    need("java")
    need("keytool")
    res = run_recipe(gateway, upstream, mint, "java", tmp_path, timeout=180)
    assert (tmp_path / "pangate-truststore.p12").is_file(), res.stderr
    if re.search(r"^HTTP 407\b", res.stdout, re.M):
        challenges = proxy_authenticate_headers(gateway, f"localhost:{upstream.port}")
        if not challenges or not challenges[0].lower().startswith("basic"):
            raise BearerChallengeFirst(f"Java got 407; the gateway's challenges: {challenges}")
    assert_200_through_gateway(res)


URLCONNECTION_CHECK = """import java.io.*;
import java.net.*;

public class PangateCheck {
    public static void main(String[] args) throws Exception {
        Authenticator.setDefault(new Authenticator() {
            @Override protected PasswordAuthentication getPasswordAuthentication() {
                if (getRequestorType() != RequestorType.PROXY) return null;
                return new PasswordAuthentication(System.getenv("PANGATE_IDENTITY"),
                                                  System.getenv("PANGATE_TOKEN").toCharArray());
            }
        });
        HttpURLConnection c = (HttpURLConnection) URI.create(args[0]).toURL().openConnection();
        int status = c.getResponseCode();
        try (InputStream in = status < 400 ? c.getInputStream() : c.getErrorStream()) {
            if (in != null) System.out.println(new String(in.readAllBytes(), "UTF-8"));
        }
        System.out.println("HTTP " + status);
    }
}
"""


def test_java_recipe_flags_serve_httpurlconnection_too(gateway, upstream, mint, tmp_path):
    """The recipe's system properties (empty nonProxyHosts and tunneling.disabledSchemes), with
    HttpURLConnection and Authenticator.setDefault in place of HttpClient, as its comment says."""
    need("java")
    need("keytool")
    url = f"https://localhost:{upstream.port}/v1/charges"
    res = export(gateway.confdir, "--client", "java", "--proxy", gateway.proxy_url, "--url", url)
    assert res.returncode == 0, res.stderr
    head, rest = res.stdout.split("cat > PangateCheck.java <<'JAVA'\n", 1)
    _, tail = rest.split("\nJAVA\n", 1)
    assert "-Djdk.http.auth.tunneling.disabledSchemes=" in tail and "-Dhttp.nonProxyHosts=" in tail
    script = tmp_path / "java-urlconnection.sh"
    script.write_text(head + "cat > PangateCheck.java <<'JAVA'\n" + URLCONNECTION_CHECK + "JAVA\n" + tail)
    out = subprocess.run(["bash", "-euo", "pipefail", str(script)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=180, env=clean_env(PANGATE_IDENTITY="reader", PANGATE_TOKEN=mint("reader")))
    assert_200_through_gateway(out)
