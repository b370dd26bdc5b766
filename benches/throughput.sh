#!/usr/bin/env bash
# Produce throughput with the broker on one core and the client on the other (issue 16 item 3):
# a release broker with one shard pinned to BROKER_CPU (default 0; its other threads on
# CLIENT_CPU) and produce_throughput pinned to CLIENT_CPU (default 1), 1 KiB messages batched
# by the client, acks=all, against the raw O_DIRECT bandwidth of the same disk measured right
# before and after. Modes: the wire client (no client library) and, for comparison, the load
# generator (librdkafka, max rate). Everything lands in target/throughput/; the data directory
# is a temporary one on the work disk, removed at the end.
#
#   benches/throughput.sh                       # 2 rounds of 20 s, direct durability
#   ROUNDS=3 SECONDS_EACH=30 DURABILITY=fsync PARTITIONS=4 DEPTH=4 RECORDS=256 benches/throughput.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. benches/broker-lib.sh

OUT=target/throughput
ROUNDS=${ROUNDS:-2}
SECONDS_EACH=${SECONDS_EACH:-20}
DURABILITY=${DURABILITY:-direct}
PARTITIONS=${PARTITIONS:-4}
DEPTH=${DEPTH:-4}
RECORDS=${RECORDS:-256}
BROKER_CPU=${BROKER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BIN=target/release
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log

cargo build --release -q -p ferrolog -p ferrolog-loadgen -p ferrolog-benches --bins

DATA=$(mktemp -d "${TMPDIR:-/var/tmp}/ferrolog-throughput.XXXXXX")
cleanup() {
    stop_broker
    rm -rf "$DATA"
}
trap cleanup EXIT

start_broker() {
    local name=$1
    rm -rf "$DATA/data"
    printf '[shards]\ncpuset = "%s"\ncontrol_cpuset = "%s"\n[storage]\ndurability = "%s"\n' \
        "$BROKER_CPU" "$CLIENT_CPU" "$DURABILITY" > "$DATA/profile.toml"
    port=$(free_port)
    "$BIN/ferrolog" start --profile "$DATA/profile.toml" --data-dir "$DATA/data" \
        --kafka-addr "127.0.0.1:$port" --admin-addr 127.0.0.1:0 > "$OUT/$name.broker.log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 100); do
        (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the broker did not start; $OUT/$name.broker.log:" >&2
    tail -20 "$OUT/$name.broker.log" >&2
    exit 1
}

for round in $(seq "$ROUNDS"); do
    name="wire-$round"
    echo "== round $round: wire client" >&2
    start_broker "$name"
    taskset -c "$CLIENT_CPU" "$BIN/produce_throughput" --bootstrap "127.0.0.1:$port" \
        --raw-dir "$DATA" --broker-pid "$broker_pid" --partitions "$PARTITIONS" --depth "$DEPTH" \
        --records-per-batch "$RECORDS" --seconds "$SECONDS_EACH" --durability "$DURABILITY" \
        --json "$OUT/$name.json" | tee "$OUT/$name.log"
    stop_broker

    name="loadgen-$round"
    echo "== round $round: load generator (librdkafka), max rate" >&2
    start_broker "$name"
    cpu0=$(awk '{print $14 + $15}' "/proc/$broker_pid/stat")
    taskset -c "$CLIENT_CPU" "$BIN/ferrolog-loadgen" --bootstrap "127.0.0.1:$port" \
        --partitions "$PARTITIONS" --rate 0 --consumers 0 --warmup-s 3 --duration-s "$SECONDS_EACH" \
        --linger-ms 5 --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    cpu1=$(awk '{print $14 + $15}' "/proc/$broker_pid/stat")
    grep -E "^throughput" "$OUT/$name.log"
    echo "broker CPU over the whole load generator run (warm-up and drain included): $(( (cpu1 - cpu0) / 100 )) s"
    stop_broker
done
