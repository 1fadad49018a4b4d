#!/usr/bin/env bash
# cpu-ab.sh - alternating A/B of proxies already running on 127.0.0.1: for each round, one wrk run
# against each target in turn, with the target's CPU time (utime + stime of every process matching
# its command-line prefix, from /proc/PID/stat) and context switches (from /proc/PID/task/*/status)
# around it. Prints one line per run and, per target, the mean requests and requests per
# CPU-second. Alternating rounds put every target under the same background noise, which on a
# small VM moves a single run by 20-50 %; use it to decide whether a change helped, and
# proxy-bench.sh for the ratios beside nginx/HAProxy that go into BENCHMARKS.md.
#
# usage: bench/cpu-ab.sh [--rounds N] [--conns N] [--duration S] [--path P] [--scheme http|https] \
#            [--close] \
#            NAME:PORT:COMMAND_PREFIX ...
# e.g.   bench/cpu-ab.sh --rounds 4 before:8091:/tmp/proxy-old after:8092:target/release/proxy
set -euo pipefail

ROUNDS=4 CONNS=64 DURATION=5 URL_PATH=/small SCHEME=http
HEADER=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2;;
    --conns) CONNS=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --path) URL_PATH=$2; shift 2;;
    --scheme) SCHEME=$2; shift 2;;
    --close) HEADER=(-H "Connection: close"); shift;;
    -h|--help) sed -n '2,14p' "$0"; exit 0;;
    *) break;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [options] NAME:PORT:COMMAND_PREFIX ..." >&2; exit 2; }
command -v wrk >/dev/null || { echo "cpu-ab: wrk is not installed" >&2; exit 2; }

# CPU ticks (1/100 s) of the processes $1..
ticks() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# voluntary and involuntary context switches of every thread of the processes $1..
switches() {
  local vol=0 invol=0 pid task
  for pid in "$@"; do
    for task in /proc/"$pid"/task/*; do
      vol=$((vol + $(awk '/^voluntary_ctxt/ {print $2}' "$task/status")))
      invol=$((invol + $(awk '/^nonvoluntary_ctxt/ {print $2}' "$task/status")))
    done
  done
  echo "$vol $invol"
}

# A target in this shell's session shares wrk's CPU scheduling group under the kernel's autogroup,
# which alone cost pibl 22 % of its requests here (see proxy-bench.sh): say so.
for spec in "$@"; do
  IFS=: read -r name _ prefix <<<"$spec"
  for pid in $(pgrep -f "^$prefix"); do
    group=$(cut -d' ' -f1 "/proc/$pid/autogroup" 2>/dev/null) || continue
    if [ "$group" = "$(cut -d' ' -f1 /proc/self/autogroup 2>/dev/null)" ]; then
      echo "cpu-ab: WARN $name (pid $pid) shares wrk's autogroup; start it with setsid to compare it fairly" >&2
      break
    fi
  done
done

lines=$(mktemp)
trap 'rm -f "$lines"' EXIT
for round in $(seq "$ROUNDS"); do
  for spec in "$@"; do
    IFS=: read -r name port prefix <<<"$spec"
    mapfile -t pids < <(pgrep -f "^$prefix")
    [ "${#pids[@]}" -gt 0 ] || { echo "cpu-ab: no process starts with $prefix" >&2; exit 1; }
    c0=$(ticks "${pids[@]}"); read -r v0 i0 < <(switches "${pids[@]}")
    requests=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" "${HEADER[@]}" "$SCHEME://127.0.0.1:$port$URL_PATH" | awk '/requests in/ {print $1}')
    c1=$(ticks "${pids[@]}"); read -r v1 i1 < <(switches "${pids[@]}")
    awk -v r="$round" -v n="$name" -v q="$requests" -v c=$((c1 - c0)) -v v=$((v1 - v0)) -v i=$((i1 - i0)) \
      'BEGIN { printf "round %d %-12s requests %8d  cpu %5.2f s  req/cpu-s %6.0f  switches/req vol %.2f invol %.2f\n",
               r, n, q, c / 100, q * 100 / (c > 0 ? c : 1), v / q, i / q }'
  done
done | tee "$lines"
awk '{ q[$3] += $5; c[$3] += $7; n[$3]++ }
  END { for (k in q) printf "mean %-12s requests %8.0f  req/cpu-s %6.0f\n", k, q[k] / n[k], q[k] / (c[k] > 0 ? c[k] : 1) }' "$lines"
