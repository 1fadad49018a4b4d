#!/usr/bin/env bash
# Runs every line of a Procfile at once, as goreman or foreman would, with nothing to install:
# each `name: command` starts in its own process group, its output lines prefixed with its name;
# Ctrl-C (or SIGTERM, or any one of them ending) stops them all.
#
# usage: deploy/procfile.sh [PROCFILE]     (default: deploy/Procfile; commands run from the
#                                           repository root, as the Procfile's paths expect)
set -uo pipefail
set -m # job control: each command gets its own process group, so stopping it stops its children

root="$(cd "$(dirname "$0")/.." && pwd)"
procfile="${1:-$root/deploy/Procfile}"
if [ ! -r "$procfile" ]; then
  echo "procfile.sh: cannot read $procfile" >&2
  exit 2
fi
procfile="$(cd "$(dirname "$procfile")" && pwd)/$(basename "$procfile")"
cd "$root" || exit 2

pids=()
stop() {
  trap - INT TERM
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null
  done
  wait
}
trap 'echo "procfile.sh: stopping"; stop; exit 130' INT
trap 'stop; exit 143' TERM

while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    '' | '#'*) continue ;;
  esac
  name="${line%%:*}"
  if [ "$name" = "$line" ]; then
    echo "procfile.sh: $procfile: not a 'name: command' line: $line" >&2
    stop
    exit 2
  fi
  command="${line#*:}"
  command="${command#"${command%%[! ]*}"}" # without the spaces after the colon
  bash -c "exec $command" > >(sed -u "s|^|$name  |") 2>&1 &
  pids+=("$!")
  echo "procfile.sh: started $name (pid $!): $command"
done <"$procfile"

if [ "${#pids[@]}" -eq 0 ]; then
  echo "procfile.sh: $procfile has no commands" >&2
  exit 2
fi
# When one ends, the others stop too, as with goreman.
wait -n "${pids[@]}"
status=$?
echo "procfile.sh: a process ended (status $status); stopping the others"
stop
exit "$status"
