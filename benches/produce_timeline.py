#!/usr/bin/env python3
"""Where one durable produce spends its time inside the broker, from kernel tracepoints.

  benches/produce_timeline.py [--bin target/release/ferrolog] [--messages 5000]
                              [--durability direct] [--profile FILE] [--raw-writes 5000]

Starts one release broker (busy_attribution.py's helpers: temporary data directory, free
ports), creates a one-partition topic, warms up with 2,000 messages, then records with
`perf record -a` (root) while a closed-loop confluent-kafka producer (1 KiB, acks=all, one
in flight, blocking, or with --busy polling in a loop) sends --messages, and right after it a raw 4 KiB O_DIRECT pwrite loop
(benches/spin_neighbour.c) pinned to the CPU of the partition's shard. Tracepoints:
syscalls (recvfrom exit, sendto entry, pwrite64), io_uring (submit_req, complete), block
(rq_issue, rq_complete) and sched (wakeup, switch). For every message on the shard's thread
it prints the percentiles of each stage:

  1 request read -> write submitted      recvfrom returned the request .. the WRITE_FIXED SQE
  2 write submitted -> issued            .. the block request reaches the device queue
  3 issued -> device completion          the disk (block_rq_complete, in the disk's IRQ)
  4 device completion -> shard woken     io_uring's completion reaching the parked shard
  5 woken -> on CPU                      scheduling delay
  6 on CPU -> CQE posted                 io_uring task work
  7 CQE -> answer sent                   glommio's reactor, the flush waiter, the Produce
                                         answer's encoding, up to the sendto of the answer

and the same stages of the raw pwrite (entered -> issued -> completed -> woken -> on CPU
-> returned): the broker's stages 2-6 have a counterpart there, stages 1 and 7 are the
broker's own. Microsecond resolution (perf's timestamps). The first 100 messages of the
recording are left out (perf settling). With --faults it also counts the user page faults on
the shard's threads in the window (exceptions:page_fault_user).
"""

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import busy_attribution as ba  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

EVENTS = [
    "syscalls:sys_exit_recvfrom", "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_pwrite64", "syscalls:sys_exit_pwrite64",
    "io_uring:io_uring_submit_req", "io_uring:io_uring_complete",
    "block:block_rq_issue", "block:block_rq_complete",
    "sched:sched_wakeup", "sched:sched_switch",
]
EVENT_LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
SKIP = 100

BROKER_STAGES = [
    "1 request read -> write submitted (decode, append)",
    "2 write submitted -> issued to the device",
    "3 issued -> device completion (disk)",
    "4 device completion -> shard woken",
    "5 woken -> on CPU",
    "6 on CPU -> CQE posted",
    "7 CQE -> answer sent (sendto)",
    "total: request read -> answer sent",
]
RAW_STAGES = [
    "1 pwrite entered -> issued to the device",
    "3 issued -> device completion (disk)",
    "4 device completion -> writer woken",
    "5 woken -> on CPU",
    "6 on CPU -> pwrite returns",
    "total: pwrite entered -> returned",
]


def parse(path):
    out = subprocess.run(["perf", "script", "-i", path], capture_output=True, text=True,
                         check=True).stdout
    events = []
    for line in out.splitlines():
        m = EVENT_LINE.match(line)
        if m:
            comm, tid, cpu, ts, name, rest = m.groups()
            events.append((float(ts) * 1e6, comm.strip(), int(tid), int(cpu), name, rest))
    return events


def sector(rest):
    """The start sector of a block tracepoint's request ("... () 181936880 + 8 ...")."""
    return rest.split(") ", 1)[1].split(" +", 1)[0]


def follow_wakeup(cur, name, rest, ts, comm):
    """Sets cur['wake'] (and who woke it) / cur['run'] from sched events for cur['tid'] after
    cur['done']."""
    if name == "sched:sched_wakeup" and "done" in cur and "wake" not in cur \
            and f"pid={cur['tid']} " in rest:
        cur["wake"] = ts
        cur["waker"] = re.sub(r"\d+$", "N", comm)
    elif name == "sched:sched_switch" and "wake" in cur and "run" not in cur \
            and f"next_pid={cur['tid']} " in rest:
        cur["run"] = ts


def broker_stages(events, shard_tids, wakers):
    """Per-stage samples; `wakers` counts the threads that woke the shard after the write."""
    stages = {k: [] for k in BROKER_STAGES}
    cur, by_sector, seen = None, {}, 0
    for ts, comm, tid, cpu, name, rest in events:
        if name == "block:block_rq_complete" and " W" in rest:
            c = by_sector.pop(sector(rest), None)
            if c is not None:
                c["done"] = ts
        if cur is not None:
            follow_wakeup(cur, name, rest, ts, comm)
        if tid not in shard_tids:
            continue
        if name == "syscalls:sys_exit_recvfrom":
            n = int(rest.rsplit("0x", 1)[1], 16) if "0x" in rest else 0
            if 0 < n < 1 << 40:  # bytes read (an error is a huge unsigned value)
                cur = {"recv": ts, "tid": tid}
        elif cur is None:
            continue
        elif name == "io_uring:io_uring_submit_req" and "opcode WRITE_FIXED" in rest \
                and "submit" not in cur:
            cur["submit"] = ts
            cur["req"] = re.search(r"req (0x[0-9a-f]+)", rest).group(1)
        elif name == "block:block_rq_issue" and " W" in rest and "submit" in cur \
                and "issue" not in cur:
            cur["issue"] = ts
            by_sector[sector(rest)] = cur
        elif name == "io_uring:io_uring_complete" and cur.get("req") \
                and f"req {cur['req']}," in rest and "cqe" not in cur:
            cur["cqe"] = ts
        elif name == "syscalls:sys_enter_sendto" and "cqe" in cur:
            c, cur = cur, None
            seen += 1
            keys = ("recv", "submit", "issue", "done", "wake", "run", "cqe")
            if seen <= SKIP or not all(k in c for k in keys):
                continue
            marks = [c[k] for k in keys] + [ts]
            for stage, a, b in zip(BROKER_STAGES, marks, marks[1:]):
                stages[stage].append(b - a)
            stages[BROKER_STAGES[-1]].append(ts - c["recv"])
            wakers[c["waker"]] += 1
    return stages


def raw_stages(events, raw_comm):
    stages = {k: [] for k in RAW_STAGES}
    cur = None
    for ts, comm, tid, cpu, name, rest in events:
        if cur is not None:
            if name == "block:block_rq_complete" and " W" in rest and sector(rest) == cur.get("sec"):
                cur["done"] = ts
            follow_wakeup(cur, name, rest, ts, comm)
        if comm != raw_comm:
            continue
        if name == "syscalls:sys_enter_pwrite64":
            cur = {"enter": ts, "tid": tid}
        elif cur is None:
            continue
        elif name == "block:block_rq_issue" and " W" in rest and "issue" not in cur:
            cur["issue"] = ts
            cur["sec"] = sector(rest)
        elif name == "syscalls:sys_exit_pwrite64":
            c, cur = cur, None
            keys = ("enter", "issue", "done", "wake", "run")
            if not all(k in c for k in keys):
                continue
            marks = [c[k] for k in keys] + [ts]
            for stage, a, b in zip(RAW_STAGES, marks, marks[1:]):
                stages[stage].append(b - a)
            stages[RAW_STAGES[-1]].append(ts - c["enter"])
    return stages


def table(title, stages):
    print(f"\n{title}\n")
    print("| stage | n | p50 | p90 | p99 | p99.9 |")
    print("|---|---|---|---|---|---|")
    for stage, v in stages.items():
        if not v:
            print(f"| {stage} | 0 | - | - | - | - |")
            continue
        print(f"| {stage} | {len(v)} | " + " | ".join(f"{ba.pct(v, q):.0f}" for q in (0.5, 0.9, 0.99, 0.999))
              + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/ferrolog")
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--durability", default="direct")
    ap.add_argument("--profile", help="a hardware profile for the broker (default: the built-in dev profile)")
    ap.add_argument("--raw-writes", type=int, default=5000)
    ap.add_argument("--busy", action="store_true",
                    help="the measured client polls with a zero timeout in a loop (busy_attribution's "
                         "busy-polling client) instead of blocking")
    ap.add_argument("--faults", action="store_true",
                    help="also count user page faults on the shard's threads")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="produce_timeline.")
    topic = f"produce-timeline-{args.durability}"
    tools = ba.build_floors(tmp)
    broker, bootstrap, admin = ba.start_broker(args.bin, tmp, profile=args.profile)
    try:
        ba.create_topic(bootstrap, topic, args.durability)
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                      "enable.idempotence": False, "max.in.flight": 1})
        value = b"x" * 1024
        for _ in range(2000):
            p.produce(topic, value)
            p.flush(10)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            owner = ba.owner_shard(r.read().decode(), topic)
        shard = int(owner[0]) if len(owner) == 1 and owner[0].isdigit() else 0
        print(f"partition {topic}/0 is on shard {shard} (CPU {shard} in the dev profile); "
              f"{args.messages} messages, then {args.raw_writes} raw appends on CPU {shard}")
        events = list(EVENTS)
        if args.faults:
            events.append("exceptions:page_fault_user")
        data = f"{tmp}/perf.data"
        cmd = ["perf", "record", "-q", "-a", "-o", data]
        for e in events:
            cmd += ["-e", e]
        perf = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        for _ in range(args.messages):
            p.produce(topic, value)
            if args.busy:
                while len(p) > 0:
                    p.poll(0)
            else:
                p.flush(10)
        raw = subprocess.run(["taskset", "-c", str(shard), tools["spin_neighbour"], f"{tmp}/raw-append",
                              str(args.raw_writes)], capture_output=True, text=True, check=True).stdout
        perf.send_signal(signal.SIGINT)
        perf.wait(60)
        tids = {int(t) for t in os.listdir(f"/proc/{broker.pid}/task")
                if open(f"/proc/{broker.pid}/task/{t}/comm").read().startswith(f"shard-{shard}-")}
        evs = parse(data)
        wakers = collections.Counter()
        client = "busy-polling" if args.busy else "blocking"
        table(f"Broker, shard {shard}, one message at a time, {client} client (us)",
              broker_stages(evs, tids, wakers))
        total = sum(wakers.values()) or 1
        print("\nwho woke the shard after its write completed (the task running when the wake-up "
              "came; N = any number): " + ", ".join(f"{w} {100 * n / total:.1f}%" for w, n in wakers.most_common(4)))
        table(f"Raw 4 KiB O_DIRECT pwrite on CPU {shard} (us): {raw.strip()}",
              raw_stages(evs, os.path.basename(tools["spin_neighbour"])[:15]))
        if args.faults:
            faults = collections.Counter(e[1] for e in evs
                                         if e[4] == "exceptions:page_fault_user" and e[2] in tids)
            print(f"\nuser page faults on the shard's threads in the window: {sum(faults.values())}")
    finally:
        ba.stop_broker(broker, tmp)


if __name__ == "__main__":
    main()
