#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a live pibl API described by docs/openapi.yaml: starts `proxy`
# on loopback ports with a temporary database and INI (no auth throttle, a long token lifetime, the
# test user made an admin with `proxy --admin add`), gets a token, creates an app, and runs every
# check.
# Needs python3 with venv and PyPI access (schemathesis is installed into a venv under the temp
# dir unless `st` is on PATH or ST names it). Extra arguments go to `st run`.
#
#   scripts/schemathesis.sh                    # build the release proxy, run, clean up
#   PIBL_BIN=target/debug/proxy scripts/schemathesis.sh --max-examples 20
#   AUTH_SCHEME=Bearer scripts/schemathesis.sh      # the token as `Bearer` instead of `JWT`
set -euo pipefail
cd "$(dirname "$0")/.."

API_PORT="${API_PORT:-15000}"
PROXY_PORT="${PROXY_PORT:-18080}"
ST_VERSION="${ST_VERSION:-4.32.5}"
AUTH_SCHEME="${AUTH_SCHEME:-JWT}"
work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

st="${ST:-$(command -v st || true)}"
if [ -z "$st" ]; then
  echo "== installing schemathesis $ST_VERSION into a venv"
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q "schemathesis==$ST_VERSION"
  st="$work/venv/bin/st"
fi
"$st" --version

bin="${PIBL_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --locked --release --bin proxy
  bin=target/release/proxy
fi

cat >"$work/pibl.ini" <<EOF
[DEFAULT]
bind = 127.0.0.1
port = $PROXY_PORT
api_bind = 127.0.0.1
api_port = $API_PORT
database = $work/pibl.db
ip_server1 = 127.0.0.1:9
auth_rate = 0
jwt_ttl = 3600
access_log = off
log_level = warn
EOF

# Admin rights come only from the host (registration grants none); the password from stdin.
echo schemathesis | "$bin" --config "$work/pibl.ini" --admin add st@pibl.test
"$bin" --config "$work/pibl.ini" >"$work/proxy.log" 2>&1 &
pid=$!
base="http://127.0.0.1:$API_PORT"
for _ in $(seq 100); do
  curl -fsS -o /dev/null "$base/api/openapi.yaml" 2>/dev/null && break
  sleep 0.1
done

json() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
creds='{"email":"st@pibl.test","password":"schemathesis"}'
token="$(curl -fsS -H 'Content-Type: application/json' -d "$creds" "$base/api/auth" | json access_token)"
# An app with one endpoint (nothing listens there: pibl's own ports are refused as endpoints), so
# app answers carry a checked endpoint.
curl -fsS -H 'Content-Type: application/json' -H "Authorization: JWT $token" \
  -d '{"host":"127.0.0.1","port":9,"statuspath":"/status"}' \
  "$base/api/apps/helloworld" >/dev/null

set -x
"$st" --config-file scripts/schemathesis.toml run docs/openapi.yaml --url "$base" -H "Authorization: $AUTH_SCHEME $token" --checks all \
  --report junit --report-dir "${REPORT_DIR:-target/schemathesis}" "$@"
