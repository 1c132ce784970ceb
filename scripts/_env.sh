# Shared by scripts/run, scripts/test and scripts/bench: a Python 3.12+ venv in .venv
# with the project installed. Sourced, not run.

find_python() {
  local py
  for py in python3.13 python3.12 python3 python; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  # pyenv machines: .python-version asks for 3.12, but the shim may not be on PATH.
  for py in "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3; do
    [ -x "$py" ] && { echo "$py"; return 0; }
  done
  echo "pangate needs Python >= 3.12 (found none)" >&2
  return 1
}

# ensure_venv EXTRAS: create .venv if needed and (re)install the project when
# its metadata changed since the last install.
ensure_venv() {
  local extras="$1" stamp want
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    rm -rf .venv
    echo "pangate: creating .venv (first run: a minute or two)" >&2
    "$(find_python)" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip > /dev/null
  fi
  want="$(cat setup.cfg setup.py pyproject.toml addons/pan/_pannative.c 2>/dev/null | sha256sum | cut -c1-16)${extras}"
  stamp=.venv/.pangate-installed
  # An install with the test extras serves scripts/run too: reinstalling under a running
  # test suite would pull the console scripts from under it.
  local have; have="$(cat "$stamp" 2>/dev/null || true)"
  if [ -z "$extras" ] && [ "$have" = "${want}[test]" ]; then want="$have"; fi
  if [ "$have" != "$want" ] || ! .venv/bin/python -c 'import pangate' 2>/dev/null; then
    # pip's build chatter goes to a log; it is shown only if the install fails.
    echo "pangate: installing pangate and mitmproxy into .venv" >&2
    .venv/bin/python -m pip install -q -e ".${extras}" > .venv/pip.log 2>&1 || { cat .venv/pip.log; return 1; }
    echo "$want" > "$stamp"
  fi
}

# ensure_ca DIR: the gateway's interception CA (mitmproxy-ca.pem; workloads trust mitmproxy-ca-cert.pem).
ensure_ca() {
  .venv/bin/python - "$1" <<'PY'
import sys
from mitmproxy.certs import CertStore
CertStore.from_store(sys.argv[1], "mitmproxy", 2048)
PY
}
