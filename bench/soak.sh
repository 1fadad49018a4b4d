#!/usr/bin/env bash
# soak.sh - a long run of mixed load against a release pibl, sampling its resident memory and open
# descriptors, to show that neither grows with time (docs/hardening.md has the figures).
#
#   bench/soak.sh --minutes 30 --port 8095
#
# Starts the harness's origins (bench/proxy-bench.sh --origins-only) if they are not running and one
# pibl (target/release/proxy) on 127.0.0.1:PORT with its cache on, bounded at 16 MiB, and compression
# on. The load, all on loopback and bounded in time:
#   - wrk, 16 keep-alive connections, each pausing 10 ms between requests, cycling through cache
#     hits (/small, /large, gzip /json-small), misses that fill the cache past its bound (a new query
#     string every time), 404s from the origin and POSTs that are never stored;
#   - every second: a new connection that sends half a request head and goes away, one with
#     `Connection: close`, and a management API round (register a user, log in).
# Every 30 s it prints RSS (MiB), open descriptors, threads and the requests served so far; at the
# end it compares the first and the last five minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=30
PORT=8095
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2;;
    --port) PORT=$2; shift 2;;
    -h|--help) sed -n '2,16p' "$0"; exit 0;;
    *) echo "unknown option: $1" >&2; exit 2;;
  esac
done
[ -x target/release/proxy ] || { echo "build it first: cargo build --release --locked" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

STATE=$(mktemp -d "/tmp/pibl-soak-XXXX")
API_PORT=$((PORT + 1000))
bench/proxy-bench.sh --origins-only >/dev/null
cat > "$STATE/pibl.ini" <<EOF
[DEFAULT]
bind = 127.0.0.1
port = $PORT
api_port = $API_PORT
database = $STATE/pibl.db
access_log = on
access_log_file = $STATE/access.log
ttl = 60
cache_max_bytes = 16m
compress = on
auth_rate = 0
ip_server1 = 127.0.0.1:19101
ip_server2 = 127.0.0.1:19102
ip_server3 = 127.0.0.1:19103
EOF
target/release/proxy --config "$STATE/pibl.ini" >"$STATE/proxy.log" 2>&1 &
PID=$!
PIDS=("$PID")
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/small" && break
  sleep 0.1
done

cat > "$STATE/mix.lua" <<'EOF'
local n = 0
request = function()
  n = n + 1
  local k = n % 10
  if k < 3 then return wrk.format("GET", "/small")
  elseif k == 3 then return wrk.format("GET", "/large")
  elseif k < 6 then return wrk.format("GET", "/json-small", { ["Accept-Encoding"] = "gzip, br" })
  elseif k == 6 then return wrk.format("GET", "/small?miss=" .. n .. "-" .. math.random(1e9))
  elseif k == 7 then return wrk.format("GET", "/json-large?miss=" .. n)
  elseif k == 8 then return wrk.format("GET", "/no-such-file-" .. (n % 100))
  else return wrk.format("POST", "/small", { ["Content-Type"] = "text/plain" }, "hello " .. n) end
end
delay = function() return 10 end
EOF
SECONDS_TOTAL=$((MINUTES * 60))
wrk -t1 -c16 -d"${SECONDS_TOTAL}s" --timeout 5s -s "$STATE/mix.lua" "http://127.0.0.1:$PORT/" >"$STATE/wrk.txt" 2>&1 &
PIDS+=("$!")

# The per-second extras, in the background: half heads, Connection: close, an API round.
(
  i=0
  end=$((SECONDS + SECONDS_TOTAL))
  while [ "$SECONDS" -lt "$end" ]; do
    i=$((i + 1))
    { exec 3<>"/dev/tcp/127.0.0.1/$PORT" && printf 'GET /small HTTP/1.1\r\nHost: so' >&3 && exec 3>&-; } 2>/dev/null || true
    curl -s -o /dev/null -H 'Connection: close' "http://127.0.0.1:$PORT/small" || true
    email="soak$i@example.org"
    curl -s -o /dev/null -H 'Content-Type: application/json' \
      -d "{\"email\":\"$email\",\"password\":\"soak-password-$i\"}" "http://127.0.0.1:$API_PORT/api/users" || true
    curl -s -o /dev/null -H 'Content-Type: application/json' \
      -d "{\"email\":\"$email\",\"password\":\"soak-password-$i\"}" "http://127.0.0.1:$API_PORT/api/auth" || true
    sleep 1
  done
) &
PIDS+=("$!")

sample() {
  local rss fds thr
  rss=$(awk '/^VmRSS/{printf "%.1f", $2 / 1024}' "/proc/$PID/status")
  fds=$(find "/proc/$PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  thr=$(awk '/^Threads/{print $2}' "/proc/$PID/status")
  printf '%s %s %s %s\n' "$rss" "$fds" "$thr" "$(wc -l < "$STATE/access.log")"
}
echo "soak: pid=$PID port=$PORT for $MINUTES min; state in $STATE"
printf '%6s %8s %6s %7s %10s\n' min rss_mib fds threads requests
: > "$STATE/samples"
start=$SECONDS
while [ $((SECONDS - start)) -lt "$SECONDS_TOTAL" ]; do
  kill -0 "$PID" 2>/dev/null || { echo "pibl exited; see $STATE/proxy.log" >&2; exit 1; }
  read -r rss fds thr reqs <<< "$(sample)"
  t=$(awk -v s=$((SECONDS - start)) 'BEGIN{printf "%.1f", s / 60}')
  printf '%6s %8s %6s %7s %10s\n' "$t" "$rss" "$fds" "$thr" "$reqs" | tee -a "$STATE/samples"
  sleep 30
done
read -r rss fds thr reqs <<< "$(sample)"
printf '%6s %8s %6s %7s %10s\n' "$MINUTES.0" "$rss" "$fds" "$thr" "$reqs" | tee -a "$STATE/samples"
grep -E "Requests/sec|requests in|Socket errors|Non-2xx" "$STATE/wrk.txt" || true
awk -v m="$MINUTES" '
  { t = $1 + 0; if (t >= 5 && t <= 10) { a += $2; fa += $3; na++ } if (t >= m - 5) { b += $2; fb += $3; nb++ } }
  END { if (na && nb) printf "RSS minutes 5-10: %.1f MiB, last 5 minutes: %.1f MiB; descriptors %.0f -> %.0f\n", a / na, b / nb, fa / na, fb / nb }
' "$STATE/samples"
