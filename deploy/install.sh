#!/usr/bin/env bash
# Installs pibl as a systemd service on this host: builds the release binaries, installs them to
# /usr/local/bin, writes /etc/pibl/parser.ini if there is none, and enables and (re)starts pibl.service.
# Safe to run again: an existing configuration is kept, binaries and the unit are replaced, the
# service is restarted on the new binary. See deploy/README.md.
set -euo pipefail

PREFIX=/usr/local
BIN_DIR="$PREFIX/bin"
DOC_DIR="$PREFIX/share/doc/pibl"
CONFIG_DIR=/etc/pibl
CONFIG="$CONFIG_DIR/parser.ini"
STATE_DIR=/var/lib/pibl
LOG_DIR=/var/log/pibl
UNIT=/etc/systemd/system/pibl.service
LOGROTATE=/etc/logrotate.d/pibl
SERVICE_USER=pibl

usage() {
  cat <<USAGE
usage: sudo deploy/install.sh [--backend HOST[:PORT]]... [--port N] [--no-build] [--no-start]

Builds pibl (cargo build --release --locked), installs proxy and parser to $BIN_DIR, creates the
'$SERVICE_USER' system user, writes $CONFIG if it does not exist yet, installs
$UNIT and $LOGROTATE, then enables and restarts the service.

  --backend HOST[:PORT]  a backend for a new $CONFIG; repeat for more
                         (default: \$PIBL_BACKENDS, a space-separated list, else parser's defaults)
  --port N               port for a new $CONFIG (default: \$PIBL_PORT, else 8080)
  --no-build             install target/release/{proxy,parser} as they are
  --no-start             install everything but do not enable or start the service
  -h, --help             show this help

An existing $CONFIG is never changed; edit it and run 'systemctl restart pibl'.
USAGE
}

die() {
  echo "install.sh: $*" >&2
  exit 1
}

backends=()
port="${PIBL_PORT:-}"
build=1
start=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --backend)
      [[ $# -ge 2 ]] || die "--backend needs HOST[:PORT]"
      backends+=("$2")
      shift 2
      ;;
    --backend=*)
      backends+=("${1#--backend=}")
      shift
      ;;
    --port)
      [[ $# -ge 2 ]] || die "--port needs a number"
      port="$2"
      shift 2
      ;;
    --port=*)
      port="${1#--port=}"
      shift
      ;;
    --no-build)
      build=0
      shift
      ;;
    --no-start)
      start=0
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "unknown argument '$1'"
      ;;
  esac
done
if [[ ${#backends[@]} -eq 0 && -n "${PIBL_BACKENDS:-}" ]]; then
  read -r -a backends <<<"$PIBL_BACKENDS"
fi

[[ $EUID -eq 0 ]] || die "run as root (sudo deploy/install.sh); it writes to $BIN_DIR, /etc and /var"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
[[ -f Cargo.toml && -f deploy/pibl.service ]] || die "$REPO does not look like the pibl repository"

# --- Build ---------------------------------------------------------------------------------------
if [[ $build -eq 1 ]]; then
  if [[ -n "${SUDO_USER:-}" && "$SUDO_USER" != root ]]; then
    # Under sudo: build as the invoking user, with their rustup toolchain, so target/ stays theirs.
    echo "== building as $SUDO_USER: cargo build --release --locked"
    # shellcheck disable=SC2016 # the inner script expands $HOME and $1 as that user
    sudo -u "$SUDO_USER" -H bash -c '
      set -euo pipefail
      if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
        . "$HOME/.cargo/env"
      fi
      cd "$1" && cargo build --release --locked' _ "$REPO"
  else
    if ! command -v cargo >/dev/null 2>&1 && [[ -f "${HOME:-/root}/.cargo/env" ]]; then
      # shellcheck source=/dev/null
      . "${HOME:-/root}/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs) or pass --no-build"
    echo "== cargo build --release --locked"
    cargo build --release --locked
  fi
fi
for bin in proxy parser; do
  [[ -x "target/release/$bin" ]] || die "target/release/$bin is missing: build first or drop --no-build"
done

# --- User, binaries, docs ------------------------------------------------------------------------
if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
  echo "== creating system user $SERVICE_USER"
  useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "pibl reverse proxy" "$SERVICE_USER"
fi
echo "== installing $BIN_DIR/proxy and $BIN_DIR/parser"
# Copy then rename, so a running proxy keeps its old binary until the restart below.
for bin in proxy parser; do
  install -m 0755 "target/release/$bin" "$BIN_DIR/.$bin.new"
  mv -f "$BIN_DIR/.$bin.new" "$BIN_DIR/$bin"
done
install -d -m 0755 "$DOC_DIR"
install -m 0644 README.md "$DOC_DIR/README.md"
install -m 0644 deploy/README.md "$DOC_DIR/deploy.md"

# --- Configuration -------------------------------------------------------------------------------
install -d -m 0755 "$CONFIG_DIR"
install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR" "$LOG_DIR"
if [[ -e "$CONFIG" ]]; then
  echo "== keeping the existing $CONFIG"
else
  args=(--out "$CONFIG" --database "$STATE_DIR/pibl.db" --access-log-file "$LOG_DIR/access.log")
  if [[ -n "$port" ]]; then
    args+=(--port "$port")
  fi
  for backend in "${backends[@]}"; do
    args+=(--backend "$backend")
  done
  echo "== writing $CONFIG: parser ${args[*]}"
  "$BIN_DIR/parser" "${args[@]}" >/dev/null
  # Readable by the service's group only: later versions keep API secrets here.
  chown "root:$SERVICE_USER" "$CONFIG"
  chmod 0640 "$CONFIG"
fi
echo "== checking $CONFIG"
"$BIN_DIR/proxy" --check-config --config "$CONFIG"

# --- systemd and logrotate -----------------------------------------------------------------------
echo "== installing $UNIT"
install -m 0644 deploy/pibl.service "$UNIT"
if [[ -d "$(dirname "$LOGROTATE")" ]]; then
  echo "== installing $LOGROTATE"
  install -m 0644 deploy/pibl.logrotate "$LOGROTATE"
fi

if [[ $start -eq 0 ]]; then
  echo "== done; start it with: systemctl enable --now pibl"
  exit 0
fi
if [[ ! -d /run/systemd/system ]]; then
  echo "== systemd is not running on this host: installed, not started" >&2
  echo "   start it by hand: sudo -u $SERVICE_USER $BIN_DIR/proxy --config $CONFIG" >&2
  exit 0
fi
systemctl daemon-reload
systemctl enable pibl.service
# restart, not start: a re-run after an upgrade must put the new binary in service.
systemctl restart pibl.service
systemctl --no-pager --lines=5 status pibl.service || true
echo "== pibl is running; logs: journalctl -u pibl -f; access log: $LOG_DIR/access.log"
