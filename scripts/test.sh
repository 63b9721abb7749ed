#!/usr/bin/env bash
# Runs every test: starts (or installs) PostgreSQL, Redis and NATS first, then the whole
# workspace's tests with every backend enabled, and ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh || echo "test.sh: some services are unavailable; their suites will skip (or fail with STREAMS_TEST_REQUIRE_SERVICES=1)" >&2
export STREAMS_TEST_POSTGRES_URL="${STREAMS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
export STREAMS_TEST_REDIS_URL="${STREAMS_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export STREAMS_TEST_NATS_URL="${STREAMS_TEST_NATS_URL:-nats://127.0.0.1:4222}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-features "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
