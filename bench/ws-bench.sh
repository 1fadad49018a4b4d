#!/usr/bin/env bash
# ws-bench.sh - WebSocket echo through pibl, nginx and HAProxy, in one run.
#
# Starts an echo origin (examples/ws_bench.rs), nginx (workers auto) and HAProxy (threads auto)
# proxying WebSockets to it, and pibl (threads = cores) from the binary given;
# then the same load client (examples/ws_bench.rs load) against each in turn: CONNS WebSockets,
# one SIZE-byte message in flight on each, for SECONDS, REPEAT times. JSON lines go to OUT, a table
# with each one's ratio to nginx to stdout. Only 127.0.0.1 is used; everything it started is
# stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

PIBL=target/release/proxy
OUT=./ws-bench-results.jsonl
CONNS=64
SECONDS_PER_RUN=5
SIZE=128
REPEAT=2
BASE_PORT=19600
STATE=/tmp/pibl-ws-bench

usage() {
  cat <<EOF
Usage: $0 [--pibl BIN] [--conns N] [--duration S] [--size BYTES] [--repeat N] [--out FILE] [--base-port P]
  --pibl BIN     pibl's proxy binary (default $PIBL; build it with cargo build --release)
  --conns N      WebSockets open at once (default $CONNS)
  --duration S   seconds per measured run (default $SECONDS_PER_RUN)
  --size BYTES   message size (default $SIZE)
  --repeat N     rounds over all targets (default $REPEAT)
  --out FILE     append JSON lines here (default $OUT)
  --base-port P  origin on P+1, nginx P+2, HAProxy P+3, pibl P+4 (API P+5) (default $BASE_PORT)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --pibl) PIBL=$2; shift 2;;
    --conns) CONNS=$2; shift 2;;
    --duration) SECONDS_PER_RUN=$2; shift 2;;
    --size) SIZE=$2; shift 2;;
    --repeat) REPEAT=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --base-port) BASE_PORT=$2; shift 2;;
    -h|--help) usage; exit 0;;
    *) usage >&2; exit 2;;
  esac
done

die() { echo "ws-bench: $*" >&2; exit 1; }
[ -x "$PIBL" ] || die "$PIBL is not there: cargo build --release --bin proxy"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
if [ ! -x "$NGINX" ] || [ ! -x "$HAPROXY" ]; then
  die "needs nginx and haproxy (apt-get install nginx haproxy)"
fi
cargo build --release --example ws_bench --locked -q
TOOL=target/release/examples/ws_bench

ORIGIN=$((BASE_PORT + 1)) NGINX_PORT=$((BASE_PORT + 2)) HAPROXY_PORT=$((BASE_PORT + 3))
PIBL_PORT=$((BASE_PORT + 4)) PIBL_API=$((BASE_PORT + 5))
rm -rf "$STATE" && mkdir -p "$STATE/nginx/tmp"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -f "$STATE/nginx/nginx.pid" ]; then kill "$(cat "$STATE/nginx/nginx.pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

setsid "$TOOL" echo "127.0.0.1:$ORIGIN" & PIDS+=($!)

cat > "$STATE/nginx/nginx.conf" <<EOF
$( [ "$(id -u)" = 0 ] && echo "user root;" )
worker_processes auto;
worker_rlimit_nofile 20000;
pid $STATE/nginx/nginx.pid;
error_log $STATE/nginx/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $STATE/nginx/tmp;
    proxy_temp_path $STATE/nginx/tmp;
    fastcgi_temp_path $STATE/nginx/tmp;
    uwsgi_temp_path $STATE/nginx/tmp;
    scgi_temp_path $STATE/nginx/tmp;
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://127.0.0.1:$ORIGIN;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }
    }
}
EOF
"$NGINX" -c "$STATE/nginx/nginx.conf" -p "$STATE/nginx" -g "daemon on;"

cat > "$STATE/haproxy.cfg" <<EOF
global
    maxconn 8000
defaults
    mode http
    maxconn 8000
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend origin
backend origin
    server o1 127.0.0.1:$ORIGIN
EOF
setsid "$HAPROXY" -db -f "$STATE/haproxy.cfg" </dev/null >"$STATE/haproxy.log" 2>&1 & PIDS+=($!)

cat > "$STATE/pibl.ini" <<EOF
[DEFAULT]
bind = 127.0.0.1
port = $PIBL_PORT
api_port = $PIBL_API
database = $STATE/pibl.db
ip_server1 = 127.0.0.1:$ORIGIN
ttl = 0
access_log = off
log_level = warn
EOF
setsid "$PIBL" --config "$STATE/pibl.ini" </dev/null >"$STATE/pibl.log" 2>&1 & PIDS+=($!)

for port in "$ORIGIN" "$NGINX_PORT" "$HAPROXY_PORT" "$PIBL_PORT"; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done

run_id=$(date -u +%Y%m%dT%H%M%SZ)
declare -A RATE P99
for round in $(seq "$REPEAT"); do
  for target in origin "nginx-auto:$NGINX_PORT" "haproxy-auto:$HAPROXY_PORT" "pibl-loops:$PIBL_PORT"; do
    label=${target%%:*} port=${target#*:}
    [ "$label" = origin ] && port=$ORIGIN
    line=$("$TOOL" load "ws://127.0.0.1:$port/echo" "$CONNS" "$SECONDS_PER_RUN" "$SIZE")
    echo "{\"run\":\"$run_id\",\"round\":$round,\"target\":\"$label\",${line#\{}" >>"$OUT"
    rate=$(sed -n 's/.*"msgs_per_s":\([0-9]*\).*/\1/p' <<<"$line")
    p99=$(sed -n 's/.*"p99_us":\([0-9]*\).*/\1/p' <<<"$line")
    errors=$(sed -n 's/.*"errors":\([0-9]*\).*/\1/p' <<<"$line")
    [ "$errors" = 0 ] || echo "!! $label: $errors connection(s) failed in round $round" >&2
    RATE[$label]="${RATE[$label]:-} $rate"
    P99[$label]="${P99[$label]:-} $p99"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
nginx_rate=$(median <<<"${RATE[nginx-auto]}")
printf '%s: %s WebSockets x %s-byte echo, %s s x %s rounds (median)\n' "$run_id" "$CONNS" "$SIZE" "$SECONDS_PER_RUN" "$REPEAT"
printf '%-14s %12s %10s %10s\n' target msgs/s p99_us vs_nginx
for label in origin nginx-auto haproxy-auto pibl-loops; do
  rate=$(median <<<"${RATE[$label]}")
  p99=$(median <<<"${P99[$label]}")
  printf '%-14s %12s %10s %10s\n' "$label" "$rate" "$p99" "$(awk -v a="$rate" -v b="$nginx_rate" 'BEGIN {printf "%.2f", a / b}')"
done
