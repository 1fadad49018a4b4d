#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 600), one at a time, and prints
# executions, corpus size and crashes per target. Exits 1 when any target crashed (or leaked, hung,
# ran out of memory), 2 when the tools are missing.
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). Each target
# reads the committed seeds in fuzz/corpus/<target>/ and writes what it finds to a work folder
# (FUZZ_WORK, default a fresh /tmp/pibl-fuzz.*), never to the repository; crash inputs land in
# <work>/<target>/artifacts/. Runs at nice FUZZ_NICE (default 19) with one job and one worker,
# so a shared machine keeps its other cores.
set -euo pipefail

seconds="${1:-600}"
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]  (whole seconds per target, default 600)" >&2; exit 2 ;;
esac
nice_level="${FUZZ_NICE:-19}"

cd "$(dirname "$0")/../fuzz"
fuzz_dir="$PWD"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is missing: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

work="${FUZZ_WORK:-$(mktemp -d /tmp/pibl-fuzz.XXXXXX)}"
mkdir -p "$work"
echo "== building the fuzz targets (cargo +nightly fuzz build)"
nice -n "$nice_level" cargo +nightly fuzz build
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin_dir="$fuzz_dir/target/$host/release"
mapfile -t targets < <(cargo +nightly fuzz list)

# LeakSanitizer reads /proc/<its pid>/task when a run ends. In a PID namespace whose /proc belongs
# to another namespace (CI's sandbox can be one) that is some other process, and every run ends in
# "LeakSanitizer has encountered a fatal error". There each fuzzer runs in a PID namespace with a
# /proc of its own (unshare, as root); where that is impossible, leaks go unchecked, loudly.
wrap=()
leak_flags=()
proc_pid=$(sh -c 'read -r pid _ < /proc/self/stat; [ "$pid" = "$$" ] && echo same || echo other')
if [ "$proc_pid" != same ]; then
  if unshare --pid --fork --mount-proc true 2>/dev/null; then
    wrap=(unshare --pid --fork --mount-proc)
    echo "== /proc is another PID namespace's: each fuzzer runs under unshare --pid --mount-proc"
  else
    leak_flags=(-detect_leaks=0)
    echo "!!! /proc is another PID namespace's and unshare is not allowed: leak detection is OFF"
  fi
fi

failed=0
summary=()
for target in "${targets[@]}"; do
  dir="$work/$target"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  echo "== $target: ${seconds}s (log: $dir/fuzz-0.log)"
  # -jobs=1 runs the fuzzer in one child process whose output goes to fuzz-0.log in the cwd.
  (cd "$dir" && nice -n "$nice_level" "${wrap[@]}" "$bin_dir/$target" "${leak_flags[@]}" \
    -max_total_time="$seconds" -jobs=1 -workers=1 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" "$dir/corpus" "$fuzz_dir/corpus/$target") >"$dir/driver.log" 2>&1 || true
  log="$dir/fuzz-0.log"
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" 2>/dev/null | tail -n 1)"
  if [ -z "$execs" ]; then
    # A crash ends the run before the final stats: take the last status line instead.
    execs="$(grep -o '^#[0-9]*' "$log" 2>/dev/null | tail -n 1 | tr -d '#')"
  fi
  crashes="$(find "$dir/artifacts" -type f | wc -l)"
  if grep -q -e '^==[0-9]*== *ERROR' -e 'ERROR: libFuzzer' "$log" 2>/dev/null && [ "$crashes" -eq 0 ]; then
    crashes=1
  fi
  corpus="$(find "$dir/corpus" "$fuzz_dir/corpus/$target" -type f | wc -l)"
  summary+=("$(printf '%-16s %8ss %12s executions %6s corpus files %3s crashes' \
    "$target" "$seconds" "${execs:-?}" "$corpus" "$crashes")")
  if [ "$crashes" -ne 0 ]; then
    failed=1
    echo "!! $target crashed: $(find "$dir/artifacts" -type f | head -n 3 | tr '\n' ' ')"
    grep -m 1 -A 3 -e 'panicked at' -e '^==[0-9]*== *ERROR' "$log" || true
  fi
done

echo "== fuzz summary (work folder: $work)"
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "fuzzing found crashes: reproduce with fuzz/target/$host/release/<target> <artifact>" >&2
  exit 1
fi
