#!/usr/bin/env python3
"""Where a busy-polling client's produce tail is spent: in the broker or around it.

  benches/busy_attribution.py [--bin target/release/ferrolog] [--messages 20000]
                              [--durability direct] [--rounds 2] [--cpuset LIST]
                              [--profile FILE] [--nice N] [--slice-us N] [--client-nice N]
                              [--row-warmup N] [--floors]

Starts one release broker (temporary data directory, free ports, `--cpuset` and `--profile`
passed on),
creates a one-partition topic with the given durability, then runs, in turns, --rounds
times each, two closed-loop confluent-kafka producers of 1 KiB values, acks=all,
linger.ms=0, one message in flight: a blocking one (flush per message, i.e. poll with a
timeout) and a busy-polling one (poll(0) in a loop until the delivery report, the issue's
client). For every round it reads the broker's own Produce latency histogram
(ferrolog_request_latency_seconds{api="Produce"}, decode to encoded answer) and the
partition's flush histogram before and after, and prints, per round (every broker thread
is set to nice 0 for the plain rows, whatever the profile says; --nice N adds rows at N,
--slice-us N rows asking the scheduler for an N us slice; --client-nice N one more
busy-polling row with every thread of this process but the spinning one, i.e. librdkafka's,
at nice N, beside the broker at the last setting):

  client p50 / p99 / p99.9 (send to delivery report, measured in this process), after the
         row's --row-warmup messages (1000) of the same client: a busy-polling client that
         starts spinning after a pause (the blocking row and the floors before it) shares a
         CPU with its own librdkafka thread for its first ~20 messages, which wait 1-5 ms
         each for it while the broker answers them in under 1 ms (docs/benchmarks.md); the
         warm-up's count of messages over 1 ms and its maximum are printed, and, over the row's
         first 25 messages and over its measured ones, how long the librdkafka thread that
         waited most for a CPU waited per time slice (schedstat)
  broker p50 / p99 / p99.9 of the same requests (from the histogram deltas: bucket bounds)
  flush  p50 / p99 / p99.9 of the partition's flushes in the round
  broker CPU per message: the CPU time of all broker threads in the round
         (/proc/PID/task/*/schedstat) divided by the messages

With --floors, every round ends with the CPU floor of one message measured right after it
(benches/spin_neighbour.c and benches/echo_cpu.c, built with gcc into the temporary
directory): a raw 4 KiB O_DIRECT append next to the data directory (followed by an
fdatasync with --durability fsync), pinned to the CPU of the partition's shard (its latency and the CPU time of the write call), and a loopback
request/answer of 1 KiB / 64 B between two threads on different CPUs (the server thread's
CPU per request: its wake-up, recv and send). A broker cannot answer a durable produce
with less than one of each; their sum is the floor the broker's CPU per message is
compared with.

If the broker's percentiles stay where the blocking client's are while the busy client's
p99 is far above them, the busy client's tail is spent outside the broker's handling of the
request: in the client, the kernel's delivery of the bytes, or scheduling.
"""

import argparse
import ctypes
import os
import struct
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

VALUE = b"x" * 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def histogram(text, name, match):
    """{le: cumulative count} summed over the samples of `name` whose labels contain `match`."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(name + "_bucket{") or match not in line:
            continue
        labels, value = line.rsplit(" ", 1)
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        le = float("inf") if le == "+Inf" else float(le)
        out[le] = out.get(le, 0) + float(value)
    return out


def quantiles(before, after, qs):
    """Upper bucket bounds (us) holding the quantiles `qs` of the observations between two
    cumulative histograms."""
    les = sorted(after)
    delta = [(le, after[le] - before.get(le, 0)) for le in les]
    total = delta[-1][1] if delta else 0
    out = []
    for q in qs:
        want = q * total
        bound = None
        for le, c in delta:
            if c >= want and total:
                bound = le * 1e6
                break
        out.append(bound)
    return out, int(total)


SYS_SCHED_SETATTR, SYS_SCHED_GETATTR = 314, 315  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)


def set_slice(pid, ns):
    """sched_setattr on every thread of `pid`: policy and nice kept, the requested slice
    (sched_runtime of SCHED_OTHER, Linux 6.12+) set to `ns`; 0 = the kernel's default."""
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        buf = ctypes.create_string_buffer(56)
        if _libc.syscall(SYS_SCHED_GETATTR, tid, buf, 56, 0) != 0:
            continue
        _, policy, _, nice, prio = struct.unpack_from("<IIQiI", buf.raw)
        attr = struct.pack("<IIQiIQQQ", 48, policy, 0, nice, prio, ns, 0, 0)
        if _libc.syscall(SYS_SCHED_SETATTR, tid, ctypes.create_string_buffer(attr), 0) != 0:
            err = ctypes.get_errno()
            sys.exit(f"sched_setattr({tid}, runtime {ns}): {os.strerror(err)}")


# The messages at a row's start whose librdkafka waits are shown apart.
FIRST = 25


def client_waits():
    """{tid: (ns waiting for a CPU, slices)} of this process's threads but the calling
    (spinning) one, i.e. librdkafka's (schedstat's second and third fields)."""
    me = threading.get_native_id()
    out = {}
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                _, w, n = map(int, f.read().split())
        except OSError:
            continue  # the thread ended
        out[tid] = (w, n)
    return out


def worst_wait(a, b):
    """The thread that waited longest for a CPU between two client_waits() readings: its
    mean wait per slice (us) and its total wait (ms), as text."""
    waits = [(b[t][0] - a[t][0], b[t][1] - a[t][1]) for t in b if t in a]
    if not waits:
        return "-"
    w, n = max(waits)
    return f"{w / 1000 / max(1, n):.0f} us x {n} ({w / 1e6:.1f} ms)"


def warm_text(samples):
    """A row's unmeasured first messages: how many took over 1 ms, and the slowest (us)."""
    if not samples:
        return "-"
    return f"{sum(v > 1000 for v in samples)} of {len(samples)}, {max(samples):.0f}"


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def fmt(v):
    if v is None:
        return "-"
    if v == float("inf"):
        return "inf"
    return f"{v:.0f}"


def broker_cpu_ns(pid):
    """{tid: ns on a CPU} of every thread of `pid` (schedstat's first field)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
        except OSError:
            pass  # the thread ended
    return out


def build_floors(tmp):
    here = os.path.dirname(os.path.abspath(__file__))
    tools = {}
    for name, extra in (("spin_neighbour", []), ("echo_cpu", ["-pthread"])):
        out = f"{tmp}/{name}"
        subprocess.run(["gcc", "-O2", *extra, "-o", out, f"{here}/{name}.c"], check=True)
        tools[name] = out
    return tools


def floors(tools, tmp, cpu, writes, durability="direct"):
    """(raw append p50/p99/p99.9 text, raw write CPU us, echo server CPU us) measured now; for
    `fsync` durability the raw write is followed by an fdatasync, as the broker's flush is."""
    env = {**os.environ, "FDATASYNC": "1" if durability == "fsync" else "0"}
    raw = subprocess.run(["taskset", "-c", str(cpu), tools["spin_neighbour"], f"{tmp}/raw-append",
                          str(writes)], capture_output=True, text=True, check=True, env=env).stdout
    # "p50 75 p99 107 p999 167 max 921 us; cpu per write 28.0 us, per iteration 49.9 us"
    w = raw.split()
    raw_lat = f"{w[1]} / {w[3]} / {w[5]}"
    raw_cpu = float(raw.split("cpu per write ", 1)[1].split()[0])
    other = 1 - cpu if cpu in (0, 1) else 0
    echo = subprocess.run([tools["echo_cpu"], str(writes), str(cpu), str(other)],
                          capture_output=True, text=True, check=True).stdout
    echo_cpu = float(echo.split("server cpu per request ", 1)[1].split()[0])
    return raw_lat, raw_cpu, echo_cpu


def start_broker(binary, tmp, cpuset=None, profile=None):
    """Starts `binary` on free loopback ports with its data directory in `tmp` and waits
    until it accepts connections: (process, bootstrap "host:port", admin port)."""
    kafka, admin = free_port(), free_port()
    cmd = [binary, "start", "--data-dir", f"{tmp}/data", "--kafka-addr", f"127.0.0.1:{kafka}",
           "--admin-addr", f"127.0.0.1:{admin}"]
    if cpuset:
        cmd += ["--cpuset", cpuset]
    if profile:
        cmd += ["--profile", profile]
    log = open(f"{tmp}/broker.log", "w")
    broker = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "NO_COLOR": "1"})
    print(f"broker: {' '.join(cmd)}")
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", kafka), timeout=1).close()
            return broker, f"127.0.0.1:{kafka}", admin
        except OSError:
            if time.monotonic() > deadline or broker.poll() is not None:
                broker.kill()
                sys.exit(f"broker did not come up; log in {tmp}/broker.log")
            time.sleep(0.05)


def stop_broker(broker, tmp):
    broker.send_signal(signal.SIGTERM)
    try:
        broker.wait(15)
    except subprocess.TimeoutExpired:
        broker.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def create_topic(bootstrap, topic, durability):
    """A one-partition topic with the given ferrolog.durability."""
    admin = AdminClient({"bootstrap.servers": bootstrap})  # alive until the futures resolve
    fs = admin.create_topics([NewTopic(topic, 1, 1, config={"ferrolog.durability": durability})])
    for f in fs.values():
        f.result(10)


def owner_shard(metrics_text, topic):
    """The shards (as strings) whose flush histogram names `topic`: its partition's owner."""
    return [line.split('shard="', 1)[1].split('"', 1)[0] for line in metrics_text.splitlines()
            if line.startswith("ferrolog_partition_flush_latency_seconds_count{")
            and f'topic="{topic}"' in line]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/ferrolog")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--durability", default="direct")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpuset")
    ap.add_argument("--profile", help="a hardware profile for the broker (default: the built-in dev profile)")
    ap.add_argument("--nice", type=int,
                    help="also run every round with the broker's threads at this nice value "
                         "(setpriority per thread), alternating with nice 0")
    ap.add_argument("--slice-us", type=int,
                    help="also run every round with the broker's threads asking for this slice "
                         "(sched_setattr), alternating with the default")
    ap.add_argument("--client-nice", type=int,
                    help="also run the busy-polling client with every thread of this process but the "
                         "spinning one (librdkafka's) at this nice value: where the client's own "
                         "threads wait for a CPU beside its spinning thread")
    ap.add_argument("--row-warmup", type=int, default=1000,
                    help="messages each row sends first, with its own client, before its measured "
                         "ones (default 1000; their count over 1 ms and their maximum are printed: "
                         "a busy-polling client that starts spinning after a pause waits for its "
                         "own librdkafka thread for its first ~20 messages)")
    ap.add_argument("--floors", action="store_true",
                    help="after every row, measure the raw append and a loopback request/answer "
                         "(latency and CPU per message; needs gcc)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="busy_attribution.")
    topic = f"busy-attribution-{args.durability}"
    broker, bootstrap, admin = start_broker(args.bin, tmp, args.cpuset, args.profile)
    try:
        create_topic(bootstrap, topic, args.durability)
        metrics_url = f"http://127.0.0.1:{admin}/metrics"

        def scrape():
            with urllib.request.urlopen(metrics_url, timeout=10) as r:
                return r.read().decode()

        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                      "enable.idempotence": False, "max.in.flight": 1})
        delivered = []

        def on_delivery(err, _msg):
            if err is not None:
                sys.exit(f"delivery failed: {err}")
            delivered.append(time.perf_counter_ns())

        def one(busy):
            n = len(delivered)
            t0 = time.perf_counter_ns()
            p.produce(topic, VALUE, on_delivery=on_delivery)
            if busy:
                while len(delivered) == n:
                    p.poll(0)
            else:
                while len(delivered) == n:
                    p.poll(0.01)
            return (delivered[-1] - t0) / 1000

        for _ in range(2000):  # warm-up
            one(False)
        owner = owner_shard(scrape(), topic)
        print(f"partition {topic}/0 is on shard {', '.join(owner) or '?'} (the shards of the "
              "dev profile run on CPUs 0, 1, ... in order unless --cpuset says otherwise)")
        print(f"{args.messages} messages per round, durability {args.durability}; p50 / p99 / p99.9 in us "
              "(broker and flush: upper bounds of histogram buckets); CPU in us per message")
        tools = build_floors(tmp) if args.floors else None
        shard_cpu = int(owner[0]) if len(owner) == 1 and owner[0].isdigit() and not args.cpuset else 0
        head = ("| round | broker threads | client | client latency | broker Produce latency (same requests) "
                "| flushes | flush latency | broker CPU per message | row's warm-up: over 1 ms, max "
                f"| the librdkafka thread that waited most for a CPU: per slice x slices (total), first {FIRST} messages / measured |")
        rule = "|---|---|---|---|---|---|---|---|---|---|"
        if tools:
            raw_name = "raw write + fdatasync" if args.durability == "fsync" else "raw append"
            head += (f" {raw_name}, CPU {shard_cpu} | raw write CPU | loopback answer CPU "
                     "| broker CPU / (raw write + answer) |")
            rule += "---|---|---|---|"
        print(head)
        print(rule)
        settings = [(0, 0)]
        if args.slice_us is not None:
            settings.append((args.slice_us * 1000, 0))
        if args.nice is not None:
            settings.append((0, args.nice))
        rows = [(st, b, 0) for st in settings for b in (False, True)]
        if args.client_nice is not None:
            # the busy client again, its librdkafka threads at --client-nice, beside the broker
            # at the last setting's nice
            rows.append((settings[-1], True, args.client_nice))
        for r in range(args.rounds):
            for (slice_ns, nice), busy, client_nice in rows:
                set_slice(broker.pid, slice_ns)
                for tid in map(int, os.listdir(f"/proc/{broker.pid}/task")):
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                for tid in map(int, os.listdir("/proc/self/task")):
                    if tid != threading.get_native_id():
                        os.setpriority(os.PRIO_PROCESS, tid, client_nice)
                w0 = client_waits()
                settle = [one(busy) for _ in range(min(FIRST, args.row_warmup))]
                w1 = client_waits()
                settle += [one(busy) for _ in range(args.row_warmup - len(settle))]
                before = scrape()
                w2 = client_waits()
                cpu_before = broker_cpu_ns(broker.pid)
                lat = [one(busy) for _ in range(args.messages)]
                cpu_after = broker_cpu_ns(broker.pid)
                w3 = client_waits()
                after = scrape()
                cpu_us = sum(ns - cpu_before.get(tid, 0) for tid, ns in cpu_after.items()) / 1000 / args.messages
                qs = (0.5, 0.99, 0.999)
                b, bn = quantiles(histogram(before, "ferrolog_request_latency_seconds", 'api="Produce"'),
                                  histogram(after, "ferrolog_request_latency_seconds", 'api="Produce"'), qs)
                f, fn = quantiles(histogram(before, "ferrolog_partition_flush_latency_seconds", f'topic="{topic}"'),
                                  histogram(after, "ferrolog_partition_flush_latency_seconds", f'topic="{topic}"'), qs)
                client = " / ".join(f"{pct(lat, q):.0f}" for q in qs)
                slice_text = f"nice {nice}" + (f", slice {slice_ns // 1000} us" if slice_ns else "")
                kind = "busy-polling" if busy else "blocking"
                if client_nice:
                    kind += f", librdkafka threads nice {client_nice}"
                row = (f"| {r + 1} | {slice_text} | {kind} | {client} | "
                       f"{' / '.join(fmt(x) for x in b)} ({bn} requests) | {fn} | {' / '.join(fmt(x) for x in f)} "
                       f"| {cpu_us:.1f} | {warm_text(settle)} "
                       f"| {worst_wait(w0, w1)} / {worst_wait(w2, w3)} |")
                if tools:
                    raw_lat, raw_cpu, echo_cpu = floors(tools, tmp, shard_cpu, min(args.messages, 10000),
                                                        args.durability)
                    row += (f" {raw_lat} | {raw_cpu:.1f} | {echo_cpu:.1f} | "
                            f"{cpu_us / (raw_cpu + echo_cpu):.2f} |")
                print(row, flush=True)
        p.flush(10)
    finally:
        stop_broker(broker, tmp)


if __name__ == "__main__":
    main()
