#!/usr/bin/env bash
# testssl-check.sh [PROXY_BINARY]: Debian's testssl.sh against pibl's TLS listener on loopback.
#
# Starts the proxy (default target/debug/proxy) with a fresh self-signed certificate on free
# loopback ports, runs a full testssl.sh scan of its TLS port and fails when
#   - any protocol older than TLS 1.2 is offered, or TLS 1.2 or 1.3 is not;
#   - any cipher below testssl's "strong" class is offered (NULL, anonymous, export, low, 3DES,
#     CBC "average");
#   - any finding is rated HIGH or CRITICAL (vulnerabilities, weak ciphers, no forward secrecy).
# The self-signed certificate itself (untrusted chain, no revocation URLs) is expected and not
# counted, nor is testssl's "no server cipher order": every suite rustls offers is an AEAD with
# forward secrecy, so the client's preference (ChaCha20 on phones without AES instructions) is
# followed, as Mozilla's guidelines advise. Prints the scan's
# summary; the JSON report stays in the printed folder when the check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

proxy=${1:-target/debug/proxy}
[ -x "$proxy" ] || { echo "testssl-check: no proxy binary at $proxy (cargo build)" >&2; exit 1; }
testssl=$(command -v testssl || command -v testssl.sh || true)
[ -n "$testssl" ] || { echo "testssl-check: testssl.sh is not installed (apt-get install testssl.sh)" >&2; exit 1; }

dir=$(mktemp -d /tmp/pibl-testssl-XXXX)
proxy_pid=""
backend_pid=""
cleanup() {
  # (`wait` reports the SIGTERM as 143: not this script's result)
  for p in $proxy_pid $backend_pid; do { kill "$p" && wait "$p"; } 2>/dev/null || true; done
  if [ "${keep:-0}" = 0 ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port); tls_port=$(free_port); api_port=$(free_port); backend_port=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
chmod 600 "$dir/key.pem"
cat > "$dir/parser.ini" <<EOF
[DEFAULT]
bind = 127.0.0.1
port = $port
tls_port = $tls_port
api_port = $api_port
database = $dir/pibl.db
tls_cert = $dir/cert.pem
tls_key = $dir/key.pem
hsts = 8760h
ip_server1 = 127.0.0.1:$backend_port
EOF
# A backend, so that testssl's HTTP checks (HSTS, headers) see a real answer.
mkdir -p "$dir/www" && echo "testssl-check backend" > "$dir/www/index.html"
python3 -m http.server --bind 127.0.0.1 --directory "$dir/www" "$backend_port" >"$dir/backend.log" 2>&1 &
backend_pid=$!
"$proxy" --config "$dir/parser.ini" >"$dir/proxy.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$tls_port") 2>/dev/null && break
  kill -0 "$proxy_pid" 2>/dev/null || { cat "$dir/proxy.log" >&2; echo "testssl-check: the proxy did not start" >&2; exit 1; }
  sleep 0.1
done

echo "testssl-check: scanning 127.0.0.1:$tls_port ($("$testssl" --version 2>/dev/null | grep -m1 -o 'testssl.sh *[0-9][^ ]*' || echo testssl.sh))"
# --ip one: only the address given; --warnings off: no questions; exit code ignored (it counts
# findings, including the expected untrusted self-signed chain), the JSON is judged below.
"$testssl" --quiet --color 0 --warnings off --ip one --jsonfile "$dir/report.json" \
  "127.0.0.1:$tls_port" >"$dir/scan.txt" 2>&1 || true
[ -s "$dir/report.json" ] || { keep=1; tail -20 "$dir/scan.txt" >&2; echo "testssl-check: no report (see $dir)" >&2; exit 1; }

python3 - "$dir/report.json" <<'EOF' || { keep=1; echo "testssl-check: FAILED (report in $dir)" >&2; exit 1; }
import json, sys
findings = json.load(open(sys.argv[1]))
by_id = {f["id"]: f for f in findings}
problems = []
for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
    f = by_id.get(old)
    if f is None or not f["finding"].startswith("not offered"):
        problems.append(f"{old}: {f['finding'] if f else 'not tested'}")
for new in ("TLS1_2", "TLS1_3"):
    f = by_id.get(new)
    if f is None or not f["finding"].startswith("offered"):
        problems.append(f"{new}: {f['finding'] if f else 'not tested'} (expected offered)")
for weak in ("NULL", "aNULL", "EXPORT", "LOW", "3DES_IDEA", "AVERAGE"):
    f = by_id.get("cipherlist_" + weak)
    if f is None or f["finding"] != "not offered":
        problems.append(f"{weak} ciphers: {f['finding'] if f else 'not tested'}")
# An untrusted self-signed certificate is what this test uses on purpose; the cipher order is
# the client's on purpose (see the top of this script).
expected = ("cert_chain_of_trust", "cert_trust", "cert_caIssuers", "cert_ocspURL", "cert_crlDistributionPoints",
            "cert_revocation", "OCSP_stapling", "cert_validityPeriod", "cert_expirationStatus", "cipher_order")
serious = [f for f in findings if f.get("severity") in ("HIGH", "CRITICAL") and not f["id"].startswith(expected)]
for f in serious:
    problems.append(f"{f['id']} ({f['severity']}): {f['finding']}")
counts = {}
for f in findings:
    counts[f.get("severity", "?")] = counts.get(f.get("severity", "?"), 0) + 1
print("testssl-check: findings by severity:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
for proto in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"):
    print(f"  {proto:7} {by_id.get(proto, {}).get('finding', 'not tested')}")
if problems:
    print("testssl-check: problems:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print("testssl-check: no protocol older than TLS 1.2, no HIGH or CRITICAL finding")
EOF
