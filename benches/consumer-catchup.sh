#!/usr/bin/env bash
# Does the consumer keep up at the producer's max rate? One release broker per run (fresh data
# directory, dev profile with the given pipeline_depth and durability), the load generator at
# its max rate (one producer, one consumer, 6 partitions, 1 KiB values, acks=all, linger 1 ms,
# 2 s warm-up, 10 s measured), then the broker's CPU (cores, from /proc/PID/stat over the run),
# its batch cache hits and misses, and the load generator's produced and consumed msg/s.
# Binaries alternate within each round, so a before/after pair shares the same minutes.
#
#   benches/consumer-catchup.sh BIN [BIN ...]          # ROUNDS=2 DEPTH=16 DURABILITY=direct
#   EXTRA='batch_cache_bytes = 268435456' benches/consumer-catchup.sh target/release/ferrolog
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-2}
DEPTH=${DEPTH:-16}
DURABILITY=${DURABILITY:-direct}
EXTRA=${EXTRA:-}
OUT=target/consumer-catchup
PORT=${PORT:-19093}
ADMIN=${ADMIN:-19094}
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN ...]" >&2; exit 2; }
cargo build --release -q -p ferrolog-loadgen
mkdir -p "$OUT"

broker_pid=
cleanup() { [ -n "$broker_pid" ] && kill -9 "$broker_pid" 2>/dev/null || true; }
trap cleanup EXIT

for round in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        data=$PWD/target/consumer-catchup-data
        rm -rf "$data"
        printf '[network]\npipeline_depth = %s\n[storage]\ndurability = "%s"\n%s\n' \
            "$DEPTH" "$DURABILITY" "$EXTRA" > "$OUT/profile.toml"
        "$bin" start --data-dir "$data" --kafka-addr "127.0.0.1:$PORT" --admin-addr "127.0.0.1:$ADMIN" \
            --profile "$OUT/profile.toml" --group-initial-rebalance-delay-ms 0 2> "$OUT/broker.log" &
        broker_pid=$!
        for _ in $(seq 100); do
            python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
            sleep 0.1
        done
        sync
        sleep 2
        c0=$(awk '{print $14 + $15}' "/proc/$broker_pid/stat")
        t0=$(date +%s.%N)
        target/release/ferrolog-loadgen --bootstrap "127.0.0.1:$PORT" --partitions 6 --producers 1 \
            --consumers 1 --message-size 1024 --acks all --linger-ms 1 --rate 0 --warmup-s 2 \
            --duration-s 10 --json "$OUT/loadgen.json" > "$OUT/loadgen.txt" 2>&1
        curl -s "127.0.0.1:$ADMIN/metrics" > "$OUT/metrics.txt"
        c1=$(awk '{print $14 + $15}' "/proc/$broker_pid/stat")
        t1=$(date +%s.%N)
        kill "$broker_pid"
        wait "$broker_pid" || true
        broker_pid=
        rm -rf "$data"
        python3 - "$OUT" "$bin" "$round" "$c0" "$c1" "$t0" "$t1" <<'EOF'
import json, os, re, sys
out, binary, rnd = sys.argv[1], sys.argv[2], sys.argv[3]
c0, c1, t0, t1 = map(float, sys.argv[4:8])
tick = os.sysconf("SC_CLK_TCK")
t = json.load(open(os.path.join(out, "loadgen.json")))["throughput"]
metrics = open(os.path.join(out, "metrics.txt")).read()
count = lambda name: sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", metrics, re.M))
print(f"round {rnd} {binary}: produced {t['publish_msgs_per_s']:.0f} msg/s, consumed "
      f"{t['consume_msgs_per_s']:.0f} msg/s; broker {(c1 - c0) / tick / (t1 - t0):.2f} cores; batch cache "
      f"hits {count('ferrolog_batch_cache_hits_total'):.0f}, misses {count('ferrolog_batch_cache_misses_total'):.0f}")
EOF
    done
done
