"""deploy/Dockerfile, read as text (no engine here to build it): non-root, no secrets, a health
check, and every writable path under the two volumes."""

from __future__ import annotations

import re

from deploy_helpers import DEPLOY

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions() -> list[tuple[str, str, int]]:
    """(INSTRUCTION, arguments, stage index) with continuation lines joined and comments dropped."""
    out, stage, buf = [], -1, ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        buf += " " + line.rstrip("\\").strip() if buf else line.rstrip("\\").strip()
        if raw.rstrip().endswith("\\"):
            continue
        word, _, rest = buf.partition(" ")
        if word.upper() == "FROM":
            stage += 1
        out.append((word.upper(), rest.strip(), stage))
        buf = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last = max(s for _, _, s in ins)
    return [(w, a) for w, a, s in ins if s == last]


def test_runs_as_a_non_root_user():
    users = [a for w, a in final_stage() if w == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "10001"
    # and it exists: created in the image
    assert any(w == "RUN" and "useradd" in a and "--uid 10001" in a for w, a in final_stage())


def test_no_secret_is_copied_in():
    secretish = re.compile(r"(\.pem|\.key|\.crt|\.p12|\.env|certs/|var/|\bsecrets?\b|token|\.git\b|\s\.\s)", re.I)
    for word, args, _ in instructions():
        if word in ("COPY", "ADD"):
            srcs = [a for a in args.split() if not a.startswith("--")][:-1]
            for src in srcs:
                assert not secretish.search(" " + src + " "), (word, args)
                assert src != ".", "COPY . would take whatever is in the build context"
        if word in ("ENV", "ARG"):
            assert not re.search(r"(KEY|SECRET|TOKEN|PASSWORD)=", args, re.I), (word, args)
    ignore = [x for x in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if x and x[0] != "#"]
    assert ignore[0] == "**"  # deny by default, then allow the sources only
    for pattern in ("**/*.pem", "**/*.key", "**/.env*"):
        assert pattern in ignore


def test_healthcheck_and_volumes():
    stage = final_stage()
    hc = [a for w, a in stage if w == "HEALTHCHECK"]
    assert hc and "CMD" in hc[0] and "health" in hc[0]
    vols = [a for w, a in stage if w == "VOLUME"]
    assert vols and "/etc/pangate" in vols[0] and "/var/lib/pangate" in vols[0]
    env = " ".join(a for w, a in stage if w == "ENV")
    assert "HOME=/var/lib/pangate" in env  # nothing writes into the image's home
    assert "PANGATE_HEALTH_LISTEN=" in env
    exposed = " ".join(a for w, a in stage if w == "EXPOSE").split()
    assert "8080" in exposed
    assert any(w == "ENTRYPOINT" and "pangate-entrypoint" in a for w, a in stage)


def test_entrypoint_writes_only_under_the_volumes():
    script = (DEPLOY / "docker" / "entrypoint.sh").read_text()
    for m in re.finditer(r"--set \"(\w+)=([^\"]+)\"", script):
        name, value = m.groups()
        if name in ("pangate_audit_dir", "pangate_recordings_dir", "pangate_revocations"):
            assert value.startswith("$VAR/"), (name, value)
        if name in ("confdir", "pangate_audit_key"):
            assert value.startswith("$ETC/"), (name, value)
    assert 'ETC="${PANGATE_ETC:-/etc/pangate}"' in script and 'VAR="${PANGATE_VAR:-/var/lib/pangate}"' in script
    assert "_insecure" not in script and "ssl_verify_upstream_trusted_ca" in script  # TLS always verified
