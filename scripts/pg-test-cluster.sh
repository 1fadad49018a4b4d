#!/usr/bin/env bash
# A throwaway PostgreSQL for pibl's tests: its own cluster in a temporary folder, listening only on
# 127.0.0.1 on a free port, owned by a non-root user (PostgreSQL refuses to run as root: as root this
# creates and uses the system user `pibl-test`). Installs Debian's `postgresql` when it is missing
# and this is root.
#
#   scripts/pg-test-cluster.sh start [DIR]   create (if new) and start; prints the two export lines
#                                            PIBL_TEST_PG_URL (superuser `pibl`, trust on loopback)
#                                            and PIBL_TEST_PG_DIR, for `eval "$(... start)"`
#   scripts/pg-test-cluster.sh halt DIR      stop the server, keep the cluster (start DIR again later,
#                                            on the same port)
#   scripts/pg-test-cluster.sh stop DIR      stop the server and delete the folder
#
# With PIBL_PG_TLS=1 a new cluster also gets a throwaway CA and a server certificate for 127.0.0.1
# (openssl), TLS is turned on, and a third line exports PIBL_TEST_PG_CA (the CA's PEM file).
set -euo pipefail

USER_NAME=pibl-test

die() { echo "pg-test-cluster: $*" >&2; exit 1; }

# The newest installed server's bin folder (Debian keeps one per major version).
newest_bin() {
  printf '%s\n' /usr/lib/postgresql/*/bin | grep -v '\*' | sort -V | tail -n 1 || true
}

pg_bin() {
  local bin
  bin=$(newest_bin)
  if [ -z "$bin" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    # The package would create and start a cluster of its own on port 5432; none is wanted here.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
      mkdir -p /etc/postgresql-common
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } >&2 \
      || die "could not install postgresql"
    bin=$(newest_bin)
  fi
  [ -n "$bin" ] || die "PostgreSQL is not installed (apt-get install postgresql)"
  echo "$bin"
}

# Runs a command as the unprivileged owner of the cluster.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$USER_NAME" -- "$@"
  else
    "$@"
  fi
}

free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

start() {
  local dir=${1:-} bin port
  bin=$(pg_bin)
  if [ "$(id -u)" -eq 0 ] && ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
  fi
  [ -n "$dir" ] || dir=$(mktemp -d "${TMPDIR:-/tmp}/pibl-pg.XXXXXX")
  mkdir -p "$dir"
  chmod 700 "$dir"
  [ "$(id -u)" -ne 0 ] || chown "$USER_NAME" "$dir"
  cd "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir/data" -U pibl --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
      || die "initdb failed; see $dir/initdb.log"
  fi
  if [ "${PIBL_PG_TLS:-0}" = 1 ] && [ ! -f "$dir/server.pem" ]; then
    make_certs "$dir"
  fi
  local tls_opts=""
  if [ -f "$dir/server.pem" ]; then
    tls_opts="-c ssl=on -c ssl_cert_file=$dir/server.pem -c ssl_key_file=$dir/server.key"
  fi
  # A cluster started before keeps its port (its URL is known); a new one takes a free port, and
  # another if a server started at the same moment took that one first.
  local kept_port=0 attempt
  if [ -f "$dir/port" ]; then port=$(cat "$dir/port"); kept_port=1; else port=$(free_port); fi
  for attempt in 1 2 3; do
    as_owner sh -c "echo $port > '$dir/port'"
    # Throwaway data: no fsync. Sockets in the folder, TCP on loopback only.
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=300 $tls_opts" \
      start >/dev/null; then
      break
    fi
    if [ "$kept_port" = 1 ] || [ "$attempt" = 3 ]; then
      tail -5 "$dir/server.log" >&2 || true
      die "the server did not start; see $dir/server.log"
    fi
    echo "pg-test-cluster: port $port did not work, trying another" >&2
    port=$(free_port)
  done
  echo "export PIBL_TEST_PG_URL=postgres://pibl@127.0.0.1:$port/postgres"
  echo "export PIBL_TEST_PG_DIR=$dir"
  if [ -f "$dir/ca.pem" ]; then echo "export PIBL_TEST_PG_CA=$dir/ca.pem"; fi
}

# A CA and a server certificate for 127.0.0.1 signed by it, valid two days; the key is the owner's.
make_certs() {
  local dir=$1
  if ! command -v openssl >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null 2>&1 || true
  fi
  command -v openssl >/dev/null 2>&1 || die "PIBL_PG_TLS=1 needs openssl"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=pibl test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
      -extfile server.ext
    chmod 600 server.key
    chmod 644 ca.pem server.pem
  ) >"$dir/certs.log" 2>&1 || die "could not make certificates; see $dir/certs.log"
  [ "$(id -u)" -ne 0 ] || chown "$USER_NAME" "$dir/server.key" "$dir/server.pem"
}

halt() {
  local dir=${1:?halt needs the cluster folder} bin
  bin=$(pg_bin)
  cd "$dir"
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
  fi
}

stop() {
  local dir=${1:?stop needs the cluster folder}
  [ -d "$dir/data" ] || die "$dir is not a cluster folder"
  halt "$dir" || true
  cd /
  rm -rf "$dir"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  halt) halt "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) die "usage: $0 start [DIR] | halt DIR | stop DIR" ;;
esac
