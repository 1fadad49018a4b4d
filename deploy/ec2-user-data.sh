#!/usr/bin/env bash
# EC2 user data for a fresh Debian or Ubuntu instance: installs the build tools and Rust, fetches
# pibl, and runs deploy/install.sh, which installs and starts pibl.service.
# Paste it into "Advanced details > User data" (or pass it with --user-data file://...), after
# setting the variables below. Progress goes to /var/log/pibl-user-data.log on the instance.
set -euo pipefail

# --- Settings ------------------------------------------------------------------------------------
# Where to get pibl: a git URL (and branch or tag) of your copy of the repository.
PIBL_REPO_URL="${PIBL_REPO_URL:-https://github.com/YOUR-ORG/pibl.git}"
PIBL_REF="${PIBL_REF:-main}"
# The backends, space-separated host[:port] (private addresses of the app servers).
PIBL_BACKENDS="${PIBL_BACKENDS:-10.0.1.11:8080 10.0.1.12:8080 10.0.1.13:8080}"
# Port clients connect to; open it in the instance's security group.
PIBL_PORT="${PIBL_PORT:-8080}"
# Where the source is kept (and rebuilt from on a re-run).
PIBL_SRC=/opt/pibl/src

exec > >(tee -a /var/log/pibl-user-data.log) 2>&1
echo "== pibl user data started $(date -u +%FT%TZ)"

# cloud-init runs this as root, sometimes without HOME; rustup needs it.
export HOME="${HOME:-/root}"
export DEBIAN_FRONTEND=noninteractive

apt-get update
apt-get install -y --no-install-recommends build-essential curl git pkg-config ca-certificates

if [[ ! -x "$HOME/.cargo/bin/cargo" ]]; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
# shellcheck source=/dev/null
. "$HOME/.cargo/env"
rustc --version

if [[ -d "$PIBL_SRC/.git" ]]; then
  git -C "$PIBL_SRC" fetch --depth 1 origin "$PIBL_REF"
  git -C "$PIBL_SRC" checkout --force FETCH_HEAD
else
  mkdir -p "$(dirname "$PIBL_SRC")"
  git clone --depth 1 --branch "$PIBL_REF" "$PIBL_REPO_URL" "$PIBL_SRC"
fi

PIBL_BACKENDS="$PIBL_BACKENDS" PIBL_PORT="$PIBL_PORT" "$PIBL_SRC/deploy/install.sh"
echo "== pibl user data finished $(date -u +%FT%TZ)"
