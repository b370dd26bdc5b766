#!/usr/bin/env bash
# Pipelined connections, before and after, in one run: the same release broker with
# network.pipeline_depth = 1 (one request of a connection at a time, as before pipelining) and
# with the given depth (default 16), rounds interleaved, each on a fresh data directory; the load
# generator (one librdkafka producer and one consumer, 6 partitions, 1 KiB values, acks=all)
# at 10k msg/s with linger 1 and at its max rate, with fsync and with direct durability. The
# physical floors of the same run come from storage_bench --quick (raw 4 KiB O_DIRECT append,
# write+fdatasync). Everything lands in target/pipeline-ab/; one table on stdout.
#
#   benches/pipeline-ab.sh                      # 2 rounds, 20 s per open-loop run
#   ROUNDS=3 DURATION_S=30 DEPTH=16 benches/pipeline-ab.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. benches/broker-lib.sh

OUT=target/pipeline-ab
ROUNDS=${ROUNDS:-2}
DURATION_S=${DURATION_S:-20}
WARMUP_S=${WARMUP_S:-5}
DEPTH=${DEPTH:-16}
BIN=target/release
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.log

cargo build --release -q -p ferrolog -p ferrolog-loadgen -p ferrolog-benches --bins

trap stop_broker EXIT

echo "== floors: storage_bench --quick" >&2
FERROLOG_BENCH_DIR=$PWD/target "$BIN/storage_bench" --quick --json "$OUT/storage_bench.json" \
    > "$OUT/storage_bench.txt"

for round in $(seq "$ROUNDS"); do
    for durability in fsync direct; do
        for depth in 1 "$DEPTH"; do
            name="r$round-$durability-d$depth"
            profile="$OUT/$name.toml"
            printf '[network]\npipeline_depth = %s\n[storage]\ndurability = "%s"\n' \
                "$depth" "$durability" > "$profile"
            data=$PWD/target/pipeline-ab-data
            rm -rf "$data"
            port=$(free_port)
            "$BIN/ferrolog" start --data-dir "$data" --kafka-addr "127.0.0.1:$port" \
                --admin-addr "127.0.0.1:0" --profile "$profile" \
                --group-initial-rebalance-delay-ms 0 2> "$OUT/$name.broker.log" &
            broker_pid=$!
            for _ in $(seq 100); do
                if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
                    break
                fi
                sleep 0.1
            done
            for load in rate-10k max; do
                if [ "$load" = rate-10k ]; then
                    args=(--rate 10000 --warmup-s "$WARMUP_S" --duration-s "$DURATION_S")
                else
                    args=(--rate 0 --warmup-s 2 --duration-s 10)
                fi
                sync
                sleep 2
                echo "== round $round, $durability, pipeline_depth $depth: $load" >&2
                "$BIN/ferrolog-loadgen" --bootstrap "127.0.0.1:$port" --partitions 6 \
                    --producers 1 --consumers 1 --message-size 1024 --acks all --linger-ms 1 \
                    --json "$OUT/$name-$load.json" "${args[@]}" > "$OUT/$name-$load.txt"
            done
            stop_broker
            rm -rf "$data"
        done
    done
done

python3 - "$OUT" "$ROUNDS" "$DEPTH" <<'EOF'
import json, os, sys
out, rounds, depth = sys.argv[1], int(sys.argv[2]), sys.argv[3]
storage = json.load(open(os.path.join(out, "storage_bench.json")))
floor = {}
for case in storage["physical_latency"]:
    if "[LIMIT for direct]" in case["name"]:
        floor["direct"] = case["latency"]
    if "[LIMIT for fsync]" in case["name"]:
        floor["fsync"] = case["latency"]
for d in ("direct", "fsync"):
    f = floor[d]
    print(f"floor {d}: raw 4 KiB {'append write' if d == 'direct' else 'write+fdatasync'} "
          f"p50/p99/p99.9 {f['p50_us']:.0f}/{f['p99_us']:.0f}/{f['p999_us']:.0f} us")
print()
print("| round | durability | load | pipeline_depth | msg/s | MB/s | publish p50 / p99 / p99.9 (us) | e2e p50 / p99 / p99.9 (us) | publish p99 / disk floor p99 |")
print("|---|---|---|---|---|---|---|---|---|")
for r in range(1, rounds + 1):
    for d in ("fsync", "direct"):
        for load in ("rate-10k", "max"):
            for dep in ("1", depth):
                j = json.load(open(os.path.join(out, f"r{r}-{d}-d{dep}-{load}.json")))
                p, e, t = j["latency_us"]["publish"], j["latency_us"]["end_to_end"], j["throughput"]
                ok = "" if j["ok"] else " (FAILED)"
                print(f"| {r} | {d} | {load}{ok} | {dep} | {t['publish_msgs_per_s']:.0f} | {t['publish_mb_per_s']:.1f} | "
                      f"{p['p50_us']} / {p['p99_us']} / {p['p99_9_us']} | {e['p50_us']} / {e['p99_us']} / {e['p99_9_us']} | "
                      f"x{p['p99_us'] / floor[d]['p99_us']:.1f} |")
EOF
