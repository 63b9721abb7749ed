#!/usr/bin/env bash
# Consume of a 10,000-message backlog, our framework beside apalis 1.x, on Redis and SQLite.
#
#   bench/apalis-side-by-side.sh
#
# For each backend and concurrency, 3 repetitions of ours then apalis, alternately:
#   ours:   stream-bench --backend B --only consume --concurrency C --backlog 10000 --reps 1
#           --no-raw --json -          (its row consume_backlog10000_cC, the median of 1 rep)
#   apalis: bench/apalis-peer (its own workspace; see its src/main.rs for the settings)
# then prints: backend, c, ours median msg/s, apalis median msg/s, ours/apalis.
#
# Environment: STREAM_BENCH / APALIS_PEER = prebuilt binaries (otherwise both are built with
# `cargo build --release`, into CARGO_TARGET_DIR if set), BACKENDS (default "redis sqlite"),
# CONCURRENCY ("8 64"), REPS (3), BACKLOG (10000), STREAMS_TEST_REDIS_URL (both sides; default
# redis://127.0.0.1:6379). Both programs' stderr goes to a log file named at the end; the
# JSON lines of every run to the .jsonl file beside it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BACKENDS=${BACKENDS:-redis sqlite}
CONCURRENCY=${CONCURRENCY:-8 64}
REPS=${REPS:-3}
BACKLOG=${BACKLOG:-10000}

OURS=${STREAM_BENCH:-}
if [ -z "$OURS" ]; then
  (cd "$ROOT" && cargo build --release -p stream-bench)
  OURS=${CARGO_TARGET_DIR:-$ROOT/target}/release/stream-bench
fi
PEER=${APALIS_PEER:-}
if [ -z "$PEER" ]; then
  cargo build --release --manifest-path "$ROOT/bench/apalis-peer/Cargo.toml"
  PEER=${CARGO_TARGET_DIR:-$ROOT/bench/apalis-peer/target}/release/apalis-peer
fi

OUT=$(mktemp -d)/apalis-side-by-side
: >"$OUT.jsonl"
for b in $BACKENDS; do
  for c in $CONCURRENCY; do
    for r in $(seq "$REPS"); do
      echo "$b c=$c rep $r/$REPS: ours, then apalis" >&2
      "$OURS" --backend "$b" --only consume --concurrency "$c" --backlog "$BACKLOG" \
        --reps 1 --no-raw --json - 2>>"$OUT.log" | grep '^{' >>"$OUT.jsonl" || true
      "$PEER" --backend "$b" --concurrency "$c" --backlog "$BACKLOG" \
        2>>"$OUT.log" | grep '^{' >>"$OUT.jsonl" || true
    done
  done
done

python3 - "$OUT.jsonl" "$BACKLOG" "$BACKENDS" "$CONCURRENCY" <<'PY'
import json, statistics, sys
path, backlog, backends, concurrency = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
ours, peer, notes = {}, {}, []
for line in open(path):
    row = json.loads(line)
    if "error" in row:
        notes.append(f"{row.get('peer', 'ours')} {row['backend']}: {row['error']}")
    elif row.get("peer") == "apalis":
        peer.setdefault((row["backend"], row["concurrency"]), []).append(row["msgs_per_s"])
        if row["time_capped"]:
            notes.append(f"apalis {row['backend']} c={row['concurrency']}: time cap, {row['handled']} handled")
    elif row.get("workload") == f"consume_backlog{backlog}_c{row.get('concurrency')}" and row.get("ours"):
        ours.setdefault((row["backend"], row["concurrency"]), []).append(row["ours"]["median"])
        if row.get("time_capped"):
            notes.append(f"ours {row['backend']} c={row['concurrency']}: time cap, {row['fewest_handled']} handled")
med = lambda xs: statistics.median(xs) if xs else None
fmt = lambda x, xs: "-" if x is None else f"{x:,.0f} ({min(xs):,.0f}-{max(xs):,.0f}, n={len(xs)})"
print(f"consume {backlog:,} backlog, msg/s: median (min-max, runs)")
print("| backend | c | ours | apalis | ours/apalis |")
print("|---|---|---|---|---|")
for b in backends:
    for c in map(int, concurrency):
        o, p = ours.get((b, c), []), peer.get((b, c), [])
        mo, mp = med(o), med(p)
        ratio = f"{mo / mp:.1f}x" if mo and mp else "-"
        print(f"| {b} | {c} | {fmt(mo, o)} | {fmt(mp, p)} | {ratio} |")
for n in notes:
    print("note:", n)
PY
echo "log: $OUT.log; JSON lines: $OUT.jsonl"
