#!/usr/bin/env python3
"""Many partitions on one node (issue 16, "10,000 partitions on one node").

  tools/scale_bench.py --bin target/release/ferrolog [--topics 1 --partitions 10000]

One single-node broker (no --seeds) in a temporary directory. In order:

  1. start, then the process's open file descriptors and RSS with no topic;
  2. CreateTopics of --topics topics of --partitions partitions each (one request per topic,
     raw CreateTopics v4), timed from send to answer;
  3. fds and RSS idle, 2 s later: per partition = (after - before) / partitions;
  4. one record to every partition (librdkafka, acks=all), timed;
  5. SIGTERM, restart, and from the spawn: the Kafka port accepting, Metadata (raw v4 on a new
     connection per try) listing every partition with a leader, and one more record produced
     to every partition by a new librdkafka producer; then ListOffsets checks every partition's
     end offset (no record lost, none doubled);
  6. kill -9 (right after the records of 5 were acknowledged), the same restart timings and check;
  7. fds and RSS after the last restart.

With --latency-bin target/release/kafka_latency, `kafka_latency --quick --bootstrap` runs
against the broker before step 2 (no topic but its own) and after step 4 (the --partitions
idle ones exist; after a sync and --settle seconds), then --latency-rounds times in turns
against a second broker started without them and against this one (which goes first
alternates), so produce latency to a
few hot partitions is compared with and without the idle ones in the same minutes.

Every wait is bounded. The broker is killed on any exit; the directory is removed unless --keep.
Results go to stdout and, with --json FILE, to a JSON file. Uses control_bench.py's raw
Kafka connection and process handling, and confluent-kafka for producing.
"""

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import control_bench as cb  # noqa: E402

READY_S = 120.0  # spawn -> every partition listed with a leader
PRODUCE_S = 120.0  # one record to every partition acknowledged
CREATE_MS = 110_000  # CreateTopics timeout
IDLE_SETTLE_S = 2.0


def list_offsets(conn, topic, partitions):
    """ListOffsets v1 latest of every partition: {partition: (error, offset)}."""
    parts = b"".join(struct.pack(">iq", p, -1) for p in range(partitions))
    body = struct.pack(">i", -1) + struct.pack(">i", 1) + cb._str(topic) + struct.pack(">i", partitions) + parts
    r = conn.request(2, 1, body)
    out = {}
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            p = r.i32()
            err = r.i16()
            r.take(">q")
            out[p] = (err, r.take(">q"))
    return out


def produce_all(port, topics, partitions, tag):
    """One record to every partition; returns seconds until all are acknowledged."""
    from confluent_kafka import Producer

    t = time.monotonic()
    p = Producer({
        "bootstrap.servers": f"127.0.0.1:{port}",
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(PRODUCE_S * 1000),
        "reconnect.backoff.max.ms": 200,
        "retry.backoff.max.ms": 200,
        "topic.metadata.refresh.interval.ms": 1000,
        "enable.idempotence": False,
    })
    errors = []

    def done(err, _msg):
        if err is not None:
            errors.append(str(err))

    for name in topics:
        for i in range(partitions):
            while True:
                try:
                    p.produce(name, value=f"{tag}-{name}-{i}".encode(), partition=i, on_delivery=done)
                    break
                except BufferError:
                    p.poll(0.05)
    left = p.flush(PRODUCE_S)
    if left or errors:
        raise RuntimeError(f"produce {tag}: {left} not delivered, errors {errors[:5]} ({len(errors)})")
    return time.monotonic() - t


def wait_metadata(node, topics, partitions, t0):
    deadline = time.monotonic() + READY_S
    while True:
        conn = None
        try:
            conn = cb.KafkaConn(node.kafka)
            md = conn.metadata(topics)
            if all(cb.visible(md, t, partitions) for t in topics):
                return time.monotonic() - t0
        except (OSError, ValueError, struct.error):
            pass
        finally:
            if conn is not None:
                conn.close()
        if node.proc.poll() is not None:
            raise RuntimeError(f"broker exited during start\n{node.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"metadata incomplete {READY_S} s after restart\n{node.log_tail()}")
        time.sleep(0.01)


def check_ends(node, topics, partitions, want):
    conn = cb.KafkaConn(node.kafka, timeout_s=60)
    try:
        for name in topics:
            ends = list_offsets(conn, name, partitions)
            bad = {p: v for p, v in ends.items() if v != (0, want)}
            if len(ends) != partitions or bad:
                raise RuntimeError(f"{name}: end offsets not {want} everywhere: {list(bad.items())[:5]}")
    finally:
        conn.close()


def restart(node, topics, partitions, how, records_before):
    if how == "clean":
        stop_s = node.terminate()
    else:
        node.kill9()
        stop_s = 0.0
    t0 = node.spawn(None)
    t_port = node.wait_serving(READY_S) - t0
    t_md = wait_metadata(node, topics, partitions, t0)
    produce_s = produce_all(node.kafka, topics, partitions, f"after-{how}")
    t_produce = time.monotonic() - t0
    check_ends(node, topics, partitions, records_before + 1)
    r = {
        "stop_s": round(stop_s, 2),
        "spawn_to_port_s": round(t_port, 2),
        "spawn_to_metadata_s": round(t_md, 2),
        "spawn_to_produced_all_s": round(t_produce, 2),
        "produce_all_s": round(produce_s, 2),
        "usage": node.proc_usage(),
    }
    cb.log(f"restart ({how}): {r}")
    return r


def hot_latency(args, root, label, node):
    """kafka_latency --quick against the running broker: {row name: (p50_us, p99_us)}."""
    out = os.path.join(root, f"kafka_latency.{label}.json")
    cmd = [args.latency_bin, "--quick", "--bootstrap", f"127.0.0.1:{node.kafka}", "--json", out]
    with open(os.path.join(root, f"kafka_latency.{label}.txt"), "w") as txt:
        subprocess.run(cmd, stdout=txt, stderr=subprocess.STDOUT, check=True, timeout=600)
    with open(out) as f:
        cases = json.load(f)["cases"]
    rows = {c["name"]: (round(c["latency"]["p50_us"]), round(c["latency"]["p99_us"]))
            for c in cases if "latency" in c}
    cb.log(f"kafka_latency --quick ({label}): " + "; ".join(f"{k}: p50 {v[0]} us p99 {v[1]} us" for k, v in rows.items()))
    return rows


def run(args, root):
    c = cb.Cluster(root, args.bin, args.profile, 1)
    args.cleanup.append(c)
    node = c.nodes[0]
    c.start()
    time.sleep(IDLE_SETTLE_S)
    base = node.proc_usage()
    cb.log(f"started: {base}")
    hot_before = hot_latency(args, root, "before", node) if args.latency_bin else None
    topics = [f"scale-{i}" for i in range(args.topics)]
    conn = cb.KafkaConn(node.kafka, timeout_s=CREATE_MS / 1000 + 10)
    t = time.monotonic()
    for name in topics:
        code, msg = conn.create_topic(name, args.partitions, 1, timeout_ms=CREATE_MS)
        if code != cb.NONE:
            raise RuntimeError(f"create {name}: error {code} {msg}\n{node.log_tail()}")
    create_s = time.monotonic() - t
    conn.close()
    total = args.topics * args.partitions
    time.sleep(IDLE_SETTLE_S)
    idle = node.proc_usage()
    per = {
        "fds_per_partition": round((idle["fds"] - base["fds"]) / total, 3),
        "rss_kib_per_partition": round((idle["rss_mib"] - base["rss_mib"]) * 1024 / total, 1),
    }
    cb.log(f"CreateTopics {args.topics} x {args.partitions}: {create_s:.2f} s; idle {idle}; {per}")
    produce_s = produce_all(node.kafka, topics, args.partitions, "first")
    written = node.proc_usage()
    cb.log(f"one record to each of {total} partitions: {produce_s:.2f} s; {written}")
    hot_after = None
    hot_rounds = []
    if args.latency_bin:
        # The writeback that creating and first writing 10,000 files leaves
        # behind would land on the first measurement: let it finish first.
        os.sync()
        time.sleep(args.settle)
        hot_after = hot_latency(args, root, "idle", node)
        # A second broker without the idle partitions, measured in turns
        # with this one: the same minutes of the same machine for both.
        control_root = os.path.join(root, "control")
        os.makedirs(control_root)
        control = cb.Cluster(control_root, args.bin, args.profile, 1)
        args.cleanup.append(control)
        control.start()
        time.sleep(IDLE_SETTLE_S)
        for i in range(args.latency_rounds):
            # Which broker goes first alternates, so neither always follows the other.
            pair = [("without_idle", control_root, f"control.{i}", control.nodes[0]),
                    ("with_idle", root, f"idle.{i}", node)]
            if i % 2:
                pair.reverse()
            hot_rounds.append({key: hot_latency(args, where, label, n) for key, where, label, n in pair})
        control.stop_hard()
    clean = restart(node, topics, args.partitions, "clean", 1)
    killed = restart(node, topics, args.partitions, "kill9", 2)
    return {
        "topics": args.topics, "partitions": args.partitions, "create_s": round(create_s, 2),
        "usage_before": base, "usage_idle": idle, "per_partition_idle": per,
        "produce_first_s": round(produce_s, 2), "usage_after_produce": written,
        "restart_clean": clean, "restart_kill9": killed, "log_problems": cb.problems(c),
        "hot_latency_before": hot_before, "hot_latency_with_idle": hot_after,
        "hot_latency_rounds": hot_rounds,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/release/ferrolog", help="the ferrolog binary (release build)")
    p.add_argument("--profile", help="a hardware profile (default: the built-in dev profile)")
    p.add_argument("--topics", type=int, default=1)
    p.add_argument("--partitions", type=int, default=10000, help="partitions per topic")
    p.add_argument("--latency-bin", help="kafka_latency binary: compare hot-partition latency with and without the idle partitions")
    p.add_argument("--latency-rounds", type=int, default=2,
                   help="with --latency-bin: rounds of kafka_latency against a second broker without the idle "
                        "partitions and this one, in turns (default 2)")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds to wait after a sync before the latency runs with the idle partitions (default 10)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (data, node logs)")
    args = p.parse_args()
    args.bin = os.path.abspath(args.bin)
    if not os.access(args.bin, os.X_OK):
        p.error(f"{args.bin} is not an executable (build it: cargo build --release -p ferrolog)")
    args.cleanup = []
    root = tempfile.mkdtemp(prefix="scale_bench.")

    def on_signal(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ok = False
    try:
        cb.log(f"scale: binary {args.bin}, directory {root}, load average {os.getloadavg()[0]:.1f}")
        res = run(args, root)
        res["load_average_after"] = round(os.getloadavg()[0], 1)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(res, out, indent=1)
        ok = True
    finally:
        for c in args.cleanup:
            c.stop_hard()
        if not ok:
            cb.log("failed" if args.keep else "failed (--keep keeps the node logs)")
        if args.keep:
            cb.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
