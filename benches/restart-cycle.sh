#!/usr/bin/env bash
# Restart and stop times of one node holding many partitions, from a saved data directory:
# each binary starts from a fresh copy of DATA (`cp -a`), then runs CYCLES start/stop cycles;
# every start is timed from the spawn to the "serving the Kafka API" log line, every stop from
# SIGTERM to the exit. The first start of each copy is a restart after whatever left DATA
# behind (a kill -9 if DATA was saved after one); later ones follow a clean stop.
#
#   tools/scale_bench.py --partitions 10000 --keep      # leaves .../node1/data after a kill
#   DATA=/path/to/node1/data NODE_ID=1 benches/restart-cycle.sh target/release/ferrolog [OTHER_BIN ...]
#
# Binaries alternate per cycle-set, so a before/after pair shares the same minutes. The copy
# goes to $WORK (default target/restart-cycle), on the same file system as the data should be.
# SYNC_AFTER_STOP=1 runs `sync` (timed) after every stop, before the next start: the next
# start then finds nothing of the stop still being written back.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${DATA:?set DATA to a saved data directory}"
NODE_ID=${NODE_ID:-1}
CYCLES=${CYCLES:-4}
SETS=${SETS:-2}
WORK=${WORK:-target/restart-cycle}
SYNC_AFTER_STOP=${SYNC_AFTER_STOP:-0}
PORT=${PORT:-19092}
[ $# -ge 1 ] || { echo "usage: DATA=... $0 BIN [BIN ...]" >&2; exit 2; }
mkdir -p "$WORK"

broker_pid=
cleanup() { [ -n "$broker_pid" ] && kill -9 "$broker_pid" 2>/dev/null || true; }
trap cleanup EXIT

elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

for set in $(seq 1 "$SETS"); do
    for bin in "$@"; do
        rm -rf "$WORK/data" && cp -a "$DATA" "$WORK/data" && sync
        sleep 2
        for c in $(seq 1 "$CYCLES"); do
            log="$WORK/broker.$set.$c.log"
            s=$(date +%s.%N)
            "$bin" start --data-dir "$WORK/data" --kafka-addr "127.0.0.1:$PORT" --admin-addr none \
                --node-id "$NODE_ID" >"$log" 2>&1 &
            broker_pid=$!
            for _ in $(seq 1 3000); do
                grep -q "serving the Kafka API" "$log" && break
                kill -0 "$broker_pid" 2>/dev/null || { echo "broker exited: $log" >&2; exit 1; }
                sleep 0.02
            done
            m=$(date +%s.%N)
            sleep 1
            t=$(date +%s.%N)
            kill -TERM "$broker_pid"
            wait "$broker_pid" || true
            e=$(date +%s.%N)
            broker_pid=
            synced=
            if [ "$SYNC_AFTER_STOP" = 1 ]; then
                sync
                synced=", then sync $(elapsed "$e" "$(date +%s.%N)") s"
            fi
            echo "$bin set $set cycle $c: spawn to serving $(elapsed "$s" "$m") s, SIGTERM to exit $(elapsed "$t" "$e") s$synced"
        done
    done
done
rm -rf "$WORK/data"
