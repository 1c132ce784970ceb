"""`pangate doctor`: what would stop the gateway from starting or serving, and how to fix it.

    pangate doctor [--policy FILE] [--confdir DIR] [--audit-dir DIR] [--port N] ...

Checks the policy, the keys it and the gateway use, the gateway CA, the ports,
the audit directory (writable, held by a running gateway, free space), the
credentials the policy reads from the environment or files, and the PAN engine.
Prints one line per check (`ok`, `note` or `FAIL`, each FAIL followed by its fix)
and exits 1 if anything failed. `scripts/run` runs it before it starts anything
(`--preflight`: only problems are printed).

Defaults follow scripts/run, and its PANGATE_PORT / PANGATE_WEB_PORT /
PANGATE_CONTROL_PORT variables, so a bare `pangate doctor` checks what
`scripts/run` would start.
"""

from __future__ import annotations

import datetime
import errno
import os
import socket
import sys
import tempfile
from dataclasses import dataclass

MIN_FREE_BYTES = 256 << 20  # a few audit files (64 MB each) and the recordings next to them


@dataclass
class Check:
    status: str  # "ok" | "note" | "FAIL"
    what: str
    fix: str = ""


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check the policy, keys, CA, ports, audit directory and credentials",
                       description="Say what would stop the gateway from starting or serving, and the fix. "
                                   "Exit 1 if anything is wrong.")
    env = os.environ.get
    p.add_argument("--policy", default="policies.yaml", metavar="FILE", help="policy file (default policies.yaml)")
    p.add_argument("--confdir", default="certs", metavar="DIR", help="the gateway CA's directory (default certs)")
    p.add_argument("--audit-dir", default="var/audit", metavar="DIR", help="audit directory (default var/audit)")
    p.add_argument("--audit-key", default="certs/audit-signing.key", metavar="FILE",
                   help="the audit checkpoint signing key (default certs/audit-signing.key)")
    p.add_argument("--token-key", default="certs/token-signing.key", metavar="FILE",
                   help="the key `pangate token issue` signs with (default certs/token-signing.key)")
    p.add_argument("--port", type=int, default=int(env("PANGATE_PORT") or 8080), help="proxy port (default 8080)")
    p.add_argument("--web-port", type=int, default=int(env("PANGATE_WEB_PORT") or 0) or None,
                   help="mitmweb UI port, when mitmweb is used")
    p.add_argument("--control", default=f"127.0.0.1:{env('PANGATE_CONTROL_PORT') or 8089}", metavar="HOST:PORT",
                   help='the approval control endpoint (pangate_control_listen; "" when off)')
    p.add_argument("--demo-port", type=int, help="the demo upstream's port, when it is started")
    p.add_argument("--preflight", action="store_true", help="print only problems (scripts/run)")
    p.set_defaults(func=doctor_cmd)


# ---------------------------------------------------------------- checks

def check_policy(path: str):
    """(Check, policy or None)."""
    from pangate.policy.errors import PolicyError
    from pangate.policy.model import load_policy

    try:
        p = load_policy(path)
    except PolicyError as e:
        return Check("FAIL", f"policy: {e}", f"fix the file; `pangate policy check {path}` checks it again"), None
    except OSError as e:
        return Check("FAIL", f"policy {path}: {e.strerror}",
                     "give the policy with --set pangate_policy=FILE (scripts/run) or --policy"), None
    return Check("ok", f"policy {path}: {len(p.identities)} identities, {len(p.roles)} roles, "
                       f"{len(p.destinations)} destinations, {len(p.approvals)} approval rules"), p


def check_keys(policy, token_key: str, audit_key: str, audit_dir: str) -> list[Check]:
    from pangate.audit.keys import has_audit_trail, missing_key_message
    from pangate.common.files import public_pem, read_private, read_public

    out = []
    for iss in (policy.issuers.values() if policy else ()):
        if iss.type != "pangate" or not iss.public_key_file:
            continue
        try:
            pub = read_public(iss.public_key_file, f"public key of issuer {iss.name}")
        except ValueError as e:
            out.append(Check("FAIL", str(e), f"`pangate token keygen --key {token_key}` makes the pair "
                                             f"({token_key}.pub is the public key)"))
            continue
        if not os.path.exists(token_key):
            out.append(Check("note", f"issuer {iss.name}: {iss.public_key_file} readable; no signing key at "
                                     f"{token_key} (tokens are issued elsewhere)"))
            continue
        try:
            mine = read_private(token_key, "token-signing key").public_key()
        except ValueError as e:
            out.append(Check("FAIL", str(e), f"move it away and run `pangate token keygen --key {token_key}`"))
            continue
        if public_pem(mine) != public_pem(pub):
            out.append(Check("FAIL", f"issuer {iss.name}: {token_key} does not match {iss.public_key_file}: "
                                     "tokens it issues are refused (unknown_key)",
                             f"point public_key_file at {token_key}.pub, or issue with --key of the matching key"))
        else:
            out.append(Check("ok", f"issuer {iss.name}: {token_key} matches {iss.public_key_file}"))
    for a in (policy.approvers.values() if policy else ()):
        if a.public_key_file:
            try:
                read_public(a.public_key_file, f"public key of approver {a.name}")
            except ValueError as e:
                out.append(Check("FAIL", str(e), "`pangate approver keygen --key FILE` makes one"))
    if os.path.exists(audit_key):
        try:
            read_private(audit_key, "audit signing key")
            out.append(Check("ok", f"audit signing key {audit_key}"))
        except ValueError as e:
            out.append(Check("FAIL", str(e), "the gateway makes a new one if the file is absent: move it away"))
    elif has_audit_trail(audit_dir):
        out.append(Check("FAIL", missing_key_message(audit_key, audit_dir).split("; ")[0] + " (the gateway "
                                 "refuses to start)", missing_key_message(audit_key, audit_dir).split("; ", 1)[1]))
    elif not _creatable(audit_key):
        out.append(Check("FAIL", f"audit signing key {audit_key}: absent and its directory is not writable",
                         "create the directory, or --set pangate_audit_key=FILE"))
    else:
        out.append(Check("note", f"audit signing key {audit_key}: made at the first start"))
    return out


def check_ca(confdir: str) -> list[Check]:
    from cryptography import x509

    ca, cert = os.path.join(confdir, "mitmproxy-ca.pem"), os.path.join(confdir, "mitmproxy-ca-cert.pem")
    if not os.path.exists(ca):
        return [Check("FAIL", f"no gateway CA in {confdir}/: mitmproxy would make a new one, which no "
                              "workload trusts yet", "scripts/run makes it; then give workloads "
                              f"{cert} (pangate ca export)")]
    try:
        with open(cert, "rb") as f:
            c = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as e:
        return [Check("FAIL", f"gateway CA certificate {cert}: {getattr(e, 'strerror', None) or e}",
                      f"remove {confdir}/mitmproxy-ca*.pem to make a new CA (workloads must trust it again)")]
    left = c.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    if left.total_seconds() <= 0:
        return [Check("FAIL", f"gateway CA {cert} expired on {c.not_valid_after_utc:%Y-%m-%d}",
                      f"remove {confdir}/mitmproxy-ca*.pem to make a new one and re-distribute it")]
    return [Check("ok", f"gateway CA {cert} (workloads trust this file), valid until "
                        f"{c.not_valid_after_utc:%Y-%m-%d}")]


def port_free(host: str, port: int) -> str | None:
    """None if host:port can be listened on, else why not."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio servers do
            s.bind((host, port))
    except OSError as e:
        return "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
    return None


def check_ports(ports: list[tuple[str, str, int, str]], live_pid: int | None) -> list[Check]:
    """ports: (what, host, port, the option or flag that moves it)."""
    out = []
    for what, host, port, flag in ports:
        why = port_free(host, port)
        if why is None:
            out.append(Check("ok", f"{what} port {host}:{port} is free"))
        elif live_pid is not None and why == "in use":
            out.append(Check("note", f"{what} port {host}:{port} is in use, probably by the running gateway "
                                     f"(pid {live_pid})"))
        else:
            out.append(Check("FAIL", f"{what} port {host}:{port}: {why}",
                             f"stop what listens there (`ss -ltnp | grep :{port}`), or use {flag}"))
    return out


def check_audit_dir(path: str) -> tuple[list[Check], int | None]:
    from pangate.cli.audit import live_writer

    out: list[Check] = []
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    probe = probe or "."
    if not os.path.isdir(probe):
        return [Check("FAIL", f"audit directory {path}: {probe} is not a directory",
                      "--set pangate_audit_dir=DIR")], None
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".pangate-doctor-"):
            pass
    except OSError as e:
        return [Check("FAIL", f"audit directory {path}: cannot write in {probe}: {e.strerror}",
                      "fix its permissions, or --set pangate_audit_dir=DIR")], None
    st = os.statvfs(probe)
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        out.append(Check("FAIL", f"audit directory {path}: {free >> 20} MB free (the gateway refuses traffic "
                                 "once it cannot write its records)",
                         f"free space, or --set pangate_audit_dir on a larger disk (want {MIN_FREE_BYTES >> 20} MB)"))
    pid = live_writer(path) if os.path.isdir(path) else None
    if pid is not None:
        out.append(Check("note", f"audit directory {path} is being written by a running gateway (pid {pid}); "
                                 "a second gateway needs its own pangate_audit_dir"))
    if not out or all(c.status != "FAIL" for c in out):
        out.insert(0, Check("ok", f"audit directory {path}: writable, {free >> 20} MB free"))
    return out, pid


def check_credentials(policy, environ=os.environ) -> list[Check]:
    out = []
    for dest in (policy.destinations.values() if policy else ()):
        cred = dest.credential
        if cred is None:
            continue
        if cred.env:
            if environ.get(cred.env):
                out.append(Check("ok", f"credential of {dest.name}: ${cred.env} is set"))
            else:
                out.append(Check("FAIL", f"credential of {dest.name}: ${cred.env} is not set (the gateway exits "
                                         "at start; once running, requests to it are refused)",
                                 f"export {cred.env}=... (the backend's secret) in the gateway's environment"
                                 + ("; scripts/run sets a made-up one for its demo upstream"
                                    if dest.name == "demo-processor" else "")))
        for f in (cred.file, cred.key_file):
            if f and not os.access(f, os.R_OK):
                out.append(Check("FAIL", f"credential of {dest.name}: cannot read {f}",
                                 "create the file, or fix its permissions for the gateway's user"))
    return out


def check_engine() -> list[Check]:
    from pangate.pan import engine

    name = getattr(engine, "ENGINE", "python")
    try:
        out, n = engine.Masker().mask(b"card 4242424242424242")
    except Exception as e:  # an engine that cannot mask is the one thing pangate must not run without
        return [Check("FAIL", f"PAN engine {name}: {type(e).__name__}: {e}", "reinstall pangate (scripts/run does)")]
    if n != 1 or b"4242424242424242" in out:
        return [Check("FAIL", f"PAN engine {name} did not mask a test card number",
                      "reinstall pangate (scripts/run does)")]
    return [Check("ok", f"PAN engine: {name}")]


def _creatable(path: str) -> bool:
    d = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(d):
        d = os.path.dirname(d)
    return os.access(d, os.W_OK)


def _listen(value: str) -> tuple[str, int] | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    return (host.strip("[]") or "127.0.0.1", int(port))


# ---------------------------------------------------------------- command

def run_checks(args) -> list[Check]:
    checks: list[Check] = []
    c, policy = check_policy(args.policy)
    checks.append(c)
    checks += check_keys(policy, args.token_key, args.audit_key, args.audit_dir)
    checks += check_ca(args.confdir)
    audit, live_pid = check_audit_dir(args.audit_dir)
    ports = [("proxy", "127.0.0.1", args.port, "--port N (scripts/run) or --listen-port")]
    if args.web_port:
        ports.append(("mitmweb UI", "127.0.0.1", args.web_port, "--web-port N"))
    try:
        control = _listen(args.control)
    except ValueError:
        control = None
        checks.append(Check("FAIL", f"control endpoint {args.control!r} is not HOST:PORT",
                            "--set pangate_control_listen=127.0.0.1:PORT"))
    if control and policy is not None and policy.approvals:
        ports.append(("approval control endpoint", control[0], control[1],
                      '--control-port N (scripts/run) or --set pangate_control_listen=HOST:PORT ("" turns it off)'))
    if args.demo_port:
        ports.append(("demo upstream", "127.0.0.1", args.demo_port, "--demo-port N, or --no-demo"))
    checks += check_ports(ports, live_pid)
    checks += audit
    creds = check_credentials(policy)
    if live_pid is not None:
        # This shell's environment is not the running gateway's: a variable unset here says nothing.
        creds = [Check("note", c.what.split(" (")[0] + f" in this shell (the running gateway, pid {live_pid}, "
                                                      "has its own environment)")
                 if c.status == "FAIL" and "is not set" in c.what else c for c in creds]
    checks += creds
    checks += check_engine()
    return checks


def doctor_cmd(args) -> int:
    checks = run_checks(args)
    failed = [c for c in checks if c.status == "FAIL"]
    for i, c in enumerate(checks):
        if args.preflight and c.status != "FAIL" and i > 0:  # the policy's line, then only problems
            continue
        print(f"{c.status:<4}  {c.what}", file=sys.stderr if args.preflight else sys.stdout)
        if c.fix:
            print(f"      fix: {c.fix}", file=sys.stderr if args.preflight else sys.stdout)
    if not args.preflight:
        print(f"{len(failed)} problem{'s' if len(failed) != 1 else ''}" if failed else "all checks passed")
    return 1 if failed else 0
