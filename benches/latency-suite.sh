#!/usr/bin/env bash
# The sub-millisecond latency suite (docs/benchmarks.md). One run measures, on this machine:
#   1. the floors: raw O_DIRECT 4 KiB append write and write+fdatasync latency on the disk of
#      the data directory (storage_bench --quick), and the loopback TCP round trip (part of
#      kafka_latency);
#   2. kafka_latency --quick: one message in flight through librdkafka, produce and end to end;
#   3. the load generator (tools/loadgen) against a release broker, once with the profile's
#      durability fsync and once with direct: 1 KiB messages at 1000 msg/s with linger 0 and at
#      10000 msg/s with linger 1 (open loop, latency from the intended send time), then at the
#      highest rate the client sustains;
# and prints one table with p50/p99/p99.9 of each workload and its ratio to the floor.
#
#   benches/latency-suite.sh                      # the dev profile
#   PROFILE=my.toml benches/latency-suite.sh      # another profile (its durability is replaced)
#   DURATION_S=60 benches/latency-suite.sh        # longer open-loop runs (default 30 s)
#
# Everything lands in target/latency-suite/ (JSON, SVG plots, broker logs, /metrics snapshots).
# Needs the release build it starts with; takes about 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/broker-lib.sh
OUT=target/latency-suite
PROFILE=${PROFILE:-hw-profiles/dev.toml}
DURATION_S=${DURATION_S:-30}
WARMUP_S=${WARMUP_S:-5}
mkdir -p "$OUT"

cargo build --release -q -p ferrolog -p ferrolog-loadgen -p ferrolog-benches --bins
BIN=target/release

# Before each measurement: write back what earlier stages left dirty. On a VM disk whose host
# caches writes (this project's), the next fdatasync would otherwise pay for gigabytes written
# by the stage before (storage_bench, a max-rate run): 100+ ms stalls in a 1 MB/s workload.
settle() {
    sync
    sleep 2
}

echo "== floors: raw disk (storage_bench --quick)" >&2
FERROLOG_BENCH_DIR=$PWD/target "$BIN/storage_bench" --quick --json "$OUT/storage_bench.json" \
    > "$OUT/storage_bench.txt"

settle
echo "== one message in flight (kafka_latency --quick), with the loopback floor" >&2
"$BIN/kafka_latency" --quick --json "$OUT/kafka_latency.json" \
    --broker-arg --profile --broker-arg "$PROFILE" > "$OUT/kafka_latency.txt"

trap stop_broker EXIT

for durability in fsync direct; do
    profile="$OUT/profile-$durability.toml"
    # The given profile with its durability replaced (a profile may leave [storage] out).
    python3 - "$PROFILE" "$durability" > "$profile" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r'(?m)^durability\s*=.*$', '', text)
if re.search(r'(?m)^\[storage\]', text):
    text = re.sub(r'(?m)^\[storage\]\s*$', '[storage]\ndurability = "%s"' % sys.argv[2], text, count=1)
else:
    text += '\n[storage]\ndurability = "%s"\n' % sys.argv[2]
print(text)
EOF
    data=$PWD/target/latency-suite-data-$durability
    rm -rf "$data"
    port=$(free_port)
    admin=$(free_port)
    "$BIN/ferrolog" start --data-dir "$data" --kafka-addr "127.0.0.1:$port" \
        --admin-addr "127.0.0.1:$admin" --profile "$profile" \
        --group-initial-rebalance-delay-ms 0 2> "$OUT/broker-$durability.log" &
    broker_pid=$!
    for _ in $(seq 100); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    run() {
        local name=$1
        shift
        settle
        echo "== $durability: $name" >&2
        "$BIN/ferrolog-loadgen" --bootstrap "127.0.0.1:$port" --partitions 6 \
            --producers 1 --consumers 1 --message-size 1024 --acks all \
            --json "$OUT/$durability-$name.json" --svg "$OUT/$durability-$name.svg" "$@" \
            > "$OUT/$durability-$name.txt"
    }
    # linger 0 at 1k msg/s: each message goes out at once (the latency case); linger 1 (OMB's
    # Kafka driver) at 10k and at the max rate, so the client batches.
    run rate-1k --rate 1000 --linger-ms 0 --warmup-s "$WARMUP_S" --duration-s "$DURATION_S"
    run rate-10k --rate 10000 --linger-ms 1 --warmup-s "$WARMUP_S" --duration-s "$DURATION_S"
    run max --rate 0 --linger-ms 1 --warmup-s 2 --duration-s 10
    python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$admin/metrics').read().decode())" \
        > "$OUT/metrics-$durability.txt"
    stop_broker
    rm -rf "$data"
done

python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
storage = json.load(open(os.path.join(out, "storage_bench.json")))
kafka = json.load(open(os.path.join(out, "kafka_latency.json")))
floor_disk = {}
for case in storage["physical_latency"]:
    if "[LIMIT for direct]" in case["name"]:
        floor_disk["direct"] = case["latency"]
    if "[LIMIT for fsync]" in case["name"]:
        floor_disk["fsync"] = case["latency"]
rtt = next(c["latency"] for c in kafka["cases"] if c["kind"] == "loopback_rtt")
print(f"floors: loopback RTT p50/p99/p99.9 {rtt['p50_us']:.1f}/{rtt['p99_us']:.1f}/{rtt['p999_us']:.1f} us;"
      f" raw 4 KiB append write {floor_disk['direct']['p50_us']:.1f}/{floor_disk['direct']['p99_us']:.1f}/"
      f"{floor_disk['direct']['p999_us']:.1f} us; write+fdatasync {floor_disk['fsync']['p50_us']:.1f}/"
      f"{floor_disk['fsync']['p99_us']:.1f}/{floor_disk['fsync']['p999_us']:.1f} us")
print()
print("| workload | durability | msg/s | MB/s | publish p50 / p99 / p99.9 (us) | e2e p50 / p99 / p99.9 (us) | publish p50, p99 / floor |")
print("|---|---|---|---|---|---|---|")
for case in kafka["cases"]:
    if case["kind"] == "loopback_rtt" or case["name"].startswith("(info)"):
        continue
    l = case["latency"]
    print(f"| kafka_latency: {case['name']} | {case.get('durability')} | 1 in flight | | "
          f"{l['p50_us']:.0f} / {l['p99_us']:.0f} / {l['p999_us']:.0f} | | p99 x{case.get('p99_ratio_to_floor') or 0:.1f} |")
for durability in ("fsync", "direct"):
    disk = floor_disk[durability]
    floor50 = rtt["p50_us"] + disk["p50_us"]
    floor99 = rtt["p99_us"] + disk["p99_us"]
    for name in ("rate-1k", "rate-10k", "max"):
        r = json.load(open(os.path.join(out, f"{durability}-{name}.json")))
        p, e, t = r["latency_us"]["publish"], r["latency_us"]["end_to_end"], r["throughput"]
        ok = "" if r["ok"] else " (FAILED)"
        print(f"| loadgen {name}{ok} | {durability} | {t['publish_msgs_per_s']:.0f} | {t['publish_mb_per_s']:.1f} | "
              f"{p['p50_us']} / {p['p99_us']} / {p['p99_9_us']} | {e['p50_us']} / {e['p99_us']} / {e['p99_9_us']} | "
              f"x{p['p50_us'] / floor50:.1f}, x{p['p99_us'] / floor99:.1f} |")
print()
print("floor of a publish = loopback RTT + the raw disk write of its durability (fdatasync for fsync), per percentile")
EOF
