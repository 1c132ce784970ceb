#!/usr/bin/env bash
# The pangate image's entry point.
#
#   gateway [mitmdump args]   the gateway (default): mitmdump with addons/gateway.py
#   init                      make what a first start needs and is missing (CA, keys), then exit
#   health [healthz|readyz]   exit 0 if the gateway's health endpoint answers 200 (HEALTHCHECK)
#   demo-upstream             the walkthrough's HTTPS card-processor stand-in (compose demo only)
#
# Everything the gateway reads lives under $PANGATE_ETC (/etc/pangate: policy, certs, keys) and
# everything it writes under $PANGATE_VAR (/var/lib/pangate: audit, recordings, revocations), so the
# root filesystem can be read-only. No secret is baked into the image: the CA, the keys and the
# backend credentials arrive as volumes and environment at run time.
set -euo pipefail

ETC="${PANGATE_ETC:-/etc/pangate}"
VAR="${PANGATE_VAR:-/var/lib/pangate}"
# One audit chain per instance: replicas never append to each other's files.
INSTANCE="${PANGATE_INSTANCE:-${HOSTNAME:-gateway}}"  # bash sets HOSTNAME
POLICY="${PANGATE_POLICY:-$ETC/policies.yaml}"  # Kubernetes: a ConfigMap directory, so edits reach it
PY="${PANGATE_PYTHON:-python}"

say() { echo "pangate-entrypoint: $*" >&2; }

gateway() {
  local script args=()
  script="$("$PY" -c 'import os, pangate; print(os.path.join(os.path.dirname(pangate.__file__), "gateway.py"))')"
  [ -f "$ETC/certs/mitmproxy-ca.pem" ] || { say "no CA in $ETC/certs (mount it, or run 'init' once)"; exit 78; }
  [ -f "$POLICY" ] || { say "no policy at $POLICY"; exit 78; }
  mkdir -p "$VAR/audit/$INSTANCE" "$VAR/recordings/$INSTANCE"
  args+=(--listen-host "${PANGATE_LISTEN_HOST:-0.0.0.0}" --listen-port "${PANGATE_LISTEN_PORT:-8080}"
         --set "confdir=$ETC/certs"
         --set "block_list=|~all|503"  # armed: refuse everything until the chain says it is live
         --set "pangate_policy=$POLICY"
         --set "pangate_revocations=$VAR/revocations.json"
         --set "pangate_audit_dir=$VAR/audit/$INSTANCE"
         --set "pangate_audit_key=$ETC/keys/audit-signing.key"
         --set "pangate_recordings_dir=$VAR/recordings/$INSTANCE"
         --set "termlog_verbosity=${PANGATE_LOG_LEVEL:-info}")
  # Upstream TLS is always verified: the public roots by default, or this bundle (public + private CAs).
  [ -f "$ETC/certs/upstream-trust.pem" ] && args+=(--set "ssl_verify_upstream_trusted_ca=$ETC/certs/upstream-trust.pem")
  # Set only when given, so an image runs with gateways that predate the option.
  [ -n "${PANGATE_HEALTH_LISTEN:-}" ] && args+=(--set "pangate_health_listen=$PANGATE_HEALTH_LISTEN")
  [ -n "${PANGATE_STATE:-}" ] && args+=(--set "pangate_state=$PANGATE_STATE")
  # The Redis password comes from a file (a mounted secret), never from the URL.
  [ -n "${PANGATE_STATE_PASSWORD_FILE:-}" ] && args+=(--set "pangate_state_password_file=$PANGATE_STATE_PASSWORD_FILE")
  [ -n "${PANGATE_PROXY_CERT:-}" ] && args+=(--set "pangate_proxy_cert=$PANGATE_PROXY_CERT")
  [ -n "${PANGATE_REQUIRE_PROXY_TLS:-}" ] && args+=(--set "pangate_require_proxy_tls=$PANGATE_REQUIRE_PROXY_TLS")
  args+=(--set "pangate_instance=$INSTANCE")  # named in every audit record and on the flows it holds
  exec mitmdump -s "$script" "${args[@]}" "$@"
}

init() {
  # Idempotent: only what is missing is made, so a restart never rotates a key or the CA.
  mkdir -p "$ETC/certs" "$ETC/keys"
  "$PY" - "$ETC/certs" <<'PY'
import sys
from mitmproxy.certs import CertStore
CertStore.from_store(sys.argv[1], "mitmproxy", 2048)
PY
  [ -f "$ETC/keys/token-signing.key" ] || pangate token keygen --key "$ETC/keys/token-signing.key"
  [ -f "$ETC/keys/audit-signing.key" ] || "$PY" -c \
    'import sys; from pangate.audit.keys import load_or_create_signing_key as k; k(sys.argv[1])' \
    "$ETC/keys/audit-signing.key"
  # The public CA certificate for workloads (a shared volume): never the key-bearing file.
  if [ -n "${PANGATE_CA_OUT:-}" ]; then
    pangate ca export --confdir "$ETC/certs" > "$PANGATE_CA_OUT.tmp" && mv "$PANGATE_CA_OUT.tmp" "$PANGATE_CA_OUT"
  fi
  if [ -n "${PANGATE_DEMO_UPSTREAM_HOST:-}" ]; then
    # Demo only: a certificate for the stand-in processor and a bundle that trusts it plus the public roots.
    "$PY" - "$ETC" "$PANGATE_DEMO_UPSTREAM_HOST" <<'PY'
import os, sys
from pangate.dev.pki import make_ca, make_leaf, trust_bundle
etc, host = sys.argv[1], sys.argv[2]
demo = os.path.join(etc, "demo")
ca = make_ca(demo, "demo-upstream-ca")
if not os.path.exists(os.path.join(demo, "demo-upstream.pem")):
    make_leaf(ca, demo, [host], "demo-upstream")
trust_bundle(os.path.join(etc, "certs", "upstream-trust.pem"), ca[0])
PY
  fi
  if [ -n "${PANGATE_DEMO_TOKEN_FOR:-}" ] && [ -n "${PANGATE_TOKEN_OUT:-}" ]; then
    # Demo only: a workload without an IdP gets a day-long token. Real workloads bring an OIDC token.
    pangate token issue --key "$ETC/keys/token-signing.key" --identity "$PANGATE_DEMO_TOKEN_FOR" --ttl 24h \
      > "$PANGATE_TOKEN_OUT.tmp" && mv "$PANGATE_TOKEN_OUT.tmp" "$PANGATE_TOKEN_OUT"
  fi
  say "init done in $ETC"
}

health() {
  local which="${1:-healthz}" listen="${PANGATE_HEALTH_LISTEN:-127.0.0.1:8090}"
  # No proxy here, whatever the environment says: the probe talks to this container only.
  exec "$PY" - "http://127.0.0.1:${listen##*:}/$which" <<'PY'
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=3) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as e:
    print(f"unhealthy: {e}", file=sys.stderr)
    sys.exit(1)
PY
}

demo_upstream() {
  exec "$PY" - "$ETC/demo" "${PANGATE_DEMO_UPSTREAM_PORT:-9443}" <<'PY'
import os, sys
from pangate.dev.demo_upstream import DemoUpstream
demo, port = sys.argv[1], int(sys.argv[2])
server = DemoUpstream("0.0.0.0", port, os.path.join(demo, "demo-upstream.pem"), os.path.join(demo, "demo-upstream.key"))
print(f"demo upstream on :{port}", flush=True)
server.serve_forever()
PY
}

cmd="${1:-gateway}"
[ $# -gt 0 ] && shift
case "$cmd" in
  gateway) gateway "$@" ;;
  init) init ;;
  health) health "$@" ;;
  demo-upstream) demo_upstream ;;
  -*) gateway "$cmd" "$@" ;;  # bare mitmdump options: the gateway with them
  *) say "unknown command '$cmd' (gateway, init, health, demo-upstream)"; exit 64 ;;
esac
