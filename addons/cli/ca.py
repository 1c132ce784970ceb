"""`pangate ca export`: hand the gateway's CA to workloads, with the recipe each client needs.

Every HTTP client finds its proxy and its trusted roots its own way (curl takes
HTTPS_PROXY or https_proxy, wget only the lowercase one, Node before 24 and
Java ignore both; requests, httpx and Node each keep their own root store). A
recipe that is right for one is silently wrong for the next: the request goes
direct, or fails TLS, and the user blames the gateway. So each recipe here is a
shell snippet that works when pasted, and the tests run them as printed.

Without --client the command prints only the certificate (PEM), for
`pangate ca export > pangate-ca.pem` and secrets/config maps. With --client it
prints a bash snippet that writes the certificate to a file and then shows
the client's proxy variable, its trust setting and one call.

Only the certificate is ever printed: it is re-serialized from the parsed file,
and a file that holds a private key is refused, so a mistaken --confdir or a
combined key+cert file cannot leak the interception CA's key.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

CA_FILE = "mitmproxy-ca-cert.pem"  # what mitmproxy's CertStore writes beside the key-bearing mitmproxy-ca.pem
CLIENTS = ("curl", "wget", "requests", "httpx", "urllib", "node", "java", "git", "debian", "alpine")
PEM_END = "PANGATE_CA_PEM"  # the heredoc terminator; cannot occur in base64 PEM


def register(sub) -> None:
    ca = sub.add_parser("ca", help="the gateway's CA certificate for workloads, and how each client trusts it"
                        ).add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    ex = ca.add_parser("export", help="print the CA certificate (PEM), or with --client a trust recipe",
                       description="Without --client: the CA certificate in PEM, nothing else. With --client: a "
                                   "bash snippet that saves it and sets up that client (proxy variable, trust, "
                                   "one example call). The gateway's private key is never printed.")
    ex.add_argument("--confdir", default="certs", help=f"the gateway's confdir, holding {CA_FILE} (default certs)")
    ex.add_argument("--client", choices=(*CLIENTS, "all"), help="print the recipe for this client")
    ex.add_argument("--proxy", default="http://127.0.0.1:8080",
                    help="the gateway's address as workloads reach it (default http://127.0.0.1:8080)")
    ex.add_argument("--url", default="https://api.example.com/", help="the URL the example call requests")
    ex.add_argument("--ca-path", default="pangate-ca.pem",
                    help="where the recipe saves the certificate (relative: to the current directory)")
    ex.set_defaults(func=_export)


def load_ca_pem(confdir: str) -> tuple[str, dict]:
    """(PEM of the CA certificate(s), facts for the header). Raises ValueError with the fix."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    path = Path(confdir) / CA_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"no CA certificate at {path}: the gateway makes it on its first start "
                         "(scripts/run), or point --confdir at the gateway's confdir") from None
    if b"PRIVATE KEY" in data:
        raise ValueError(f"{path} holds a private key: refusing to print it; give the certificate-only file "
                         f"({CA_FILE}), never mitmproxy-ca.pem")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path} is not a PEM certificate") from None
    for cert in certs:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise ValueError(f"{path}: {cert.subject.rfc4514_string()} is not a CA certificate")
    first = certs[0]
    facts = {"subject": first.subject.rfc4514_string(),
             "sha256": first.fingerprint(hashes.SHA256()).hex(":").upper(),
             "not_after": first.not_valid_after_utc.strftime("%Y-%m-%d")}
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)
    return pem, facts


def proxy_parts(proxy: str) -> tuple[str, int]:
    """host and port of an http:// gateway address (the proxy listens for plain HTTP CONNECT)."""
    u = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if u.scheme != "http" or not u.hostname or u.username or u.path not in ("", "/"):
        raise ValueError(f"--proxy {proxy!r}: expected http://HOST:PORT (the identity and token are added "
                         "by the recipe)")
    try:
        port = u.port or 8080
    except ValueError:
        raise ValueError(f"--proxy {proxy!r}: bad port") from None
    return u.hostname, port


def _proxy_url(host: str, port: int) -> str:
    # Shell variables, expanded when the snippet runs: the token never appears in this output.
    h = f"[{host}]" if ":" in host else host
    return f"http://${{PANGATE_IDENTITY}}:${{PANGATE_TOKEN}}@{h}:{port}"


def recipe(client: str, host: str, port: int, url: str) -> list[str]:
    """The lines of one client's recipe (after the certificate was saved to $PANGATE_CA)."""
    proxy = _proxy_url(host, port)
    q = shlex.quote(url)
    if client == "curl":
        return [
            "# curl: reads HTTPS_PROXY or https_proxy (but http_proxy only in lowercase) and NO_PROXY/no_proxy;",
            "# trusts CURL_CA_BUNDLE, or --cacert per call. The token goes in the proxy URL's password.",
            f'export HTTPS_PROXY="{proxy}"',
            'export CURL_CA_BUNDLE="$PANGATE_CA"        # or: curl --cacert "$PANGATE_CA" ...',
            f"curl -sS -w '\\nHTTP %{{http_code}}\\n' {q}",
        ]
    if client == "wget":
        return [
            "# wget: reads ONLY the lowercase https_proxy and no_proxy (HTTPS_PROXY is ignored);",
            "# trusts --ca-certificate per call (or ca_certificate = FILE in ~/.wgetrc).",
            f'export https_proxy="{proxy}"',
            f'wget -q -S -O - --ca-certificate="$PANGATE_CA" {q}    # -S: the status line, on stderr',
        ]
    if client == "requests":
        return [
            "# Python requests: reads HTTPS_PROXY/https_proxy and NO_PROXY/no_proxy; trusts REQUESTS_CA_BUNDLE",
            "# (it replaces certifi's roots; see NO_PROXY below). A Session with trust_env=False ignores all three.",
            f'export HTTPS_PROXY="{proxy}"',
            'export REQUESTS_CA_BUNDLE="$PANGATE_CA"',
            "python3 - <<'PY'",
            "import requests",
            f"r = requests.get({url!r}, timeout=30)",
            "print(r.text)",
            "print('HTTP', r.status_code)",
            "PY",
        ]
    if client == "httpx":
        return [
            "# Python httpx: reads HTTPS_PROXY/https_proxy, ALL_PROXY and NO_PROXY; trusts SSL_CERT_FILE",
            "# (instead of certifi's roots) while trust_env is on (the default).",
            f'export HTTPS_PROXY="{proxy}"',
            'export SSL_CERT_FILE="$PANGATE_CA"',
            "python3 - <<'PY'",
            "import httpx",
            f"r = httpx.get({url!r}, timeout=30)",
            "print(r.text)",
            "print('HTTP', r.status_code)",
            "PY",
        ]
    if client == "urllib":
        return [
            "# Python urllib: reads https_proxy (either case; lowercase wins) and no_proxy; trusts the",
            "# OpenSSL default paths, which SSL_CERT_FILE overrides.",
            f'export https_proxy="{proxy}"',
            'export SSL_CERT_FILE="$PANGATE_CA"',
            "python3 - <<'PY'",
            "import urllib.request",
            f"with urllib.request.urlopen({url!r}, timeout=30) as r:",
            "    print(r.read().decode())",
            "    print('HTTP', r.status)",
            "PY",
        ]
    if client == "node":
        # Double quotes only inside the script, so the shell quoting around it stays plain.
        js = ('const { setGlobalDispatcher, EnvHttpProxyAgent } = require("undici"); '
              "setGlobalDispatcher(new EnvHttpProxyAgent()); "
              f"fetch({json.dumps(url)}).then(async r => {{ console.log(await r.text()); "
              'console.log("HTTP", r.status); }, e => { console.error(e.cause || e); process.exit(1); });')
        return [
            "# Node.js before 24 ignores HTTPS_PROXY: fetch goes direct. Route it through undici's",
            "# EnvHttpProxyAgent, which reads HTTPS_PROXY/https_proxy and NO_PROXY/no_proxy, once at start-up.",
            "# Once, in the project: npm install undici@7   (undici 7 runs on Node 20.18+; undici 8 needs 22.19+)",
            "# Node 24+: NODE_USE_ENV_PROXY=1 makes the built-in fetch and http honour HTTPS_PROXY without undici.",
            "# NODE_EXTRA_CA_CERTS adds the CA to Node's own roots (it ignores the system store); read at start-up.",
            f'export HTTPS_PROXY="{proxy}"',
            'export NODE_EXTRA_CA_CERTS="$PANGATE_CA"',
            f"node -e {shlex.quote(js)}",
        ]
    if client == "java":
        return [
            "# Java ignores HTTPS_PROXY: the proxy is given as system properties. Two defaults get in the way:",
            "#  - http.nonProxyHosts (used for https too) bypasses localhost|127.*|[::1]: empty it, or set it to",
            "#    your NO_PROXY list in Java syntax ('*.svc|*.cluster.local', pipe-separated);",
            "#  - jdk.http.auth.tunneling.disabledSchemes=Basic: CONNECT would never send the token: empty it.",
            "# Java trusts its own cacerts, not the system store nor SSL_CERT_FILE: import the CA into a truststore.",
            "# HttpClient sends proxy credentials from an Authenticator (HttpURLConnection: Authenticator.setDefault).",
            'rm -f "$PWD/pangate-truststore.p12"',
            'keytool -importcert -noprompt -alias pangate -file "$PANGATE_CA" -keystore "$PWD/pangate-truststore.p12" '
            "-storetype PKCS12 -storepass changeit",
            "cat > PangateCheck.java <<'JAVA'",
            "import java.net.*;",
            "import java.net.http.*;",
            "",
            "public class PangateCheck {",
            "    public static void main(String[] args) throws Exception {",
            "        HttpClient client = HttpClient.newBuilder()",
            "            .proxy(ProxySelector.getDefault())  // from -Dhttps.proxyHost/-Dhttps.proxyPort",
            "            .authenticator(new Authenticator() {",
            "                @Override protected PasswordAuthentication getPasswordAuthentication() {",
            "                    if (getRequestorType() != RequestorType.PROXY) return null;",
            "                    return new PasswordAuthentication(System.getenv(\"PANGATE_IDENTITY\"),",
            "                                                      System.getenv(\"PANGATE_TOKEN\").toCharArray());",
            "                }",
            "            }).build();",
            "        HttpResponse<String> r = client.send(HttpRequest.newBuilder(URI.create(args[0])).build(),",
            "                                             HttpResponse.BodyHandlers.ofString());",
            "        System.out.println(r.body());",
            "        System.out.println(\"HTTP \" + r.statusCode());",
            "    }",
            "}",
            "JAVA",
            f"java -Dhttps.proxyHost={shlex.quote(host)} -Dhttps.proxyPort={port} -Dhttp.nonProxyHosts= "
            "-Djdk.http.auth.tunneling.disabledSchemes= \\",
            '     -Djavax.net.ssl.trustStore="$PWD/pangate-truststore.p12" -Djavax.net.ssl.trustStoreType=PKCS12 '
            "-Djavax.net.ssl.trustStorePassword=changeit \\",
            f"     PangateCheck.java {q}",
        ]
    if client == "git":
        return [
            "# git (libcurl): reads https_proxy/HTTPS_PROXY, or `git config http.proxy URL`; trusts GIT_SSL_CAINFO",
            "# or `git config http.sslCAInfo FILE`.",
            f'export HTTPS_PROXY="{proxy}"',
            'export GIT_SSL_CAINFO="$PANGATE_CA"',
            f"git ls-remote {q}",
        ]
    if client in ("debian", "alpine"):
        install = (["apk add --no-cache ca-certificates"] if client == "alpine" else
                   ["apt-get install -y --no-install-recommends ca-certificates   # if missing"])
        return [
            f"# {'Alpine' if client == 'alpine' else 'Debian/Ubuntu'} system store (as root, e.g. in the image build):"
            " OpenSSL and GnuTLS clients",
            "# (curl, wget, git, apt, Python's urllib) trust it. The file must end in .crt.",
            *install,
            'cp "$PANGATE_CA" /usr/local/share/ca-certificates/pangate.crt',
            "update-ca-certificates",
            "# Still per process: requests (REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt), httpx",
            "# (SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt), Node (NODE_EXTRA_CA_CERTS) and Java (its",
            "# own cacerts; Debian's ca-certificates-java package imports the store into it).",
            "# The system store holds no proxy: set both spellings for the workload's processes.",
            f'export HTTPS_PROXY="{proxy}" https_proxy="{proxy}"',
        ]
    raise ValueError(f"unknown client {client!r}")


NO_PROXY_NOTE = [
    "# NO_PROXY: what is listed there goes direct, without pangate: no identity, no policy, no masking, no",
    "# audit record. List only what must not pass it (the cluster's own services, the IdP endpoint a workload",
    "# gets its token from), never a card-data destination. Direct calls need the public roots too, so a",
    "# variable that REPLACES the roots (REQUESTS_CA_BUNDLE, SSL_CERT_FILE, CURL_CA_BUNDLE, GIT_SSL_CAINFO)",
    "# should then name a bundle of both:",
    '#   cat /etc/ssl/certs/ca-certificates.crt "$PANGATE_CA" > "$PWD/pangate-bundle.pem"',
    "# Spelling differs: curl, requests, httpx, undici, git: NO_PROXY=.svc,.cluster.local,10.0.0.0/8 (a leading",
    "# dot or none matches subdomains; CIDR for IP-address URLs in curl >= 7.86 and requests); wget and",
    "# urllib: lowercase no_proxy (set both); Java: -Dhttp.nonProxyHosts='*.svc|*.cluster.local' (NO_PROXY",
    "# is ignored).",
]


def render(pem: str, facts: dict, clients: list[str], host: str, port: int, url: str, ca_path: str) -> str:
    target = ca_path if ca_path.startswith("/") else f"$PWD/{ca_path}"
    lines = [
        "#!/usr/bin/env bash",
        f"# pangate CA: {facts['subject']}, SHA-256 {facts['sha256']}, valid until {facts['not_after']}.",
        "# Compare the fingerprint with the gateway's (pangate ca export | openssl x509 -noout -fingerprint -sha256).",
        "# The workload proves itself with its token as the proxy password: set PANGATE_IDENTITY (its name in the",
        "# policy) and PANGATE_TOKEN (an OIDC token or `pangate token issue`). A token with characters other than",
        "# letters, digits and -._~ must be percent-encoded in a proxy URL.",
        "",
        "# The CA certificate (public; the gateway's private key never leaves it):",
        f'export PANGATE_CA="{_dq(target)}"',
        f"cat > \"$PANGATE_CA\" <<'{PEM_END}'",
        *pem.rstrip("\n").splitlines(),
        PEM_END,
    ]
    for client in clients:
        lines += ["", *recipe(client, host, port, url)]
    return "\n".join(lines + ["", *NO_PROXY_NOTE]) + "\n"


def _dq(s: str) -> str:
    """For inside double quotes, keeping a leading $PWD live."""
    head, rest = ("$PWD/", s[5:]) if s.startswith("$PWD/") else ("", s)
    return head + "".join("\\" + c if c in '"\\`$' else c for c in rest)


def _export(args) -> int:
    try:
        pem, facts = load_ca_pem(args.confdir)
        if not args.client:
            sys.stdout.write(pem)
            return 0
        host, port = proxy_parts(args.proxy)
        scheme = urlsplit(args.url).scheme
        if scheme not in ("https", "http"):
            raise ValueError(f"--url {args.url!r}: expected an https:// URL")
    except ValueError as e:
        print(f"pangate ca export: {e}", file=sys.stderr)
        return 2
    clients = list(CLIENTS) if args.client == "all" else [args.client]
    sys.stdout.write(render(pem, facts, clients, host, port, args.url, args.ca_path))
    return 0
