#!/usr/bin/env bash
# Makes sure the PostgreSQL, Redis and NATS (JetStream) servers the tests use are running on this machine:
# starts a stopped one, installs a missing one (Debian packages, with sudo), and, when the
# postgres role cannot log in over loopback, switches pg_hba.conf's loopback lines to
# `trust` auth. Safe to run repeatedly; see the README before running it on your machine.
set -uo pipefail

log() { echo "services: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  log "starting PostgreSQL"
  for v in $(ls /etc/postgresql); do
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || true
  done
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.5
  done
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then log "PostgreSQL did not come up"; return 1; fi
  # Trust auth on loopback for the test role, and the test database.
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      as_root sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(host\s+all\s+all\s+::1\/128\s+)\S+/\1trust/' "$hba"
    done
    for v in $(ls /etc/postgresql); do as_root pg_ctlcluster --skip-systemctl-redirect "$v" main reload || true; done
  fi
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -c 'create database test' >/dev/null
}

ensure_redis() {
  if command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then return 0; fi
  if ! command -v redis-server >/dev/null; then
    log "installing Redis"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 1 40); do
    redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.25
  done
  log "Redis did not come up"; return 1
}

# True when something answers the NATS protocol on 127.0.0.1:4222 (its INFO line).
nats_up() {
  timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/4222 && head -c 4 <&3' 2>/dev/null | grep -q INFO
}

ensure_nats() {
  if nats_up; then return 0; fi
  if ! command -v nats-server >/dev/null; then
    log "installing nats-server"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  fi
  log "starting nats-server with JetStream"
  local dir="${STREAMS_NATS_STORE:-/var/lib/nats-server}"
  as_root mkdir -p "$dir"
  as_root sh -c "nohup nats-server -a 127.0.0.1 -p 4222 -js -sd '$dir' >/tmp/nats-server.log 2>&1 &"
  for _ in $(seq 1 40); do
    nats_up && return 0
    sleep 0.25
  done
  log "nats-server did not come up (see /tmp/nats-server.log)"; return 1
}

status=0
ensure_postgres || status=1
ensure_redis || status=1
ensure_nats || status=1
exit $status
