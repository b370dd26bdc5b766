"""The workload and the checker of the chaos tests (../chaos.rs), with confluent-kafka.

  chaos_workload.py produce --bootstrap ADDRS --topic T --partitions P --producers K
                            --duration S --out FILE
      K idempotent producers (acks=all), each writing unique values "p{k}-{seq}" for S
      seconds, message i of a producer to partition i % P (its key names the partition),
      then flushing. Every delivery report is one JSON line in FILE, in the order the
      reports arrived: {"producer", "seq", "value", "partition", "offset", "ok", "error"}.
      Errors are counted and written, never fatal: the client retries through failovers
      for message.timeout.ms. A value that got no report by the end is written as failed.
  chaos_workload.py consume --bootstrap ADDRS --topic T --partitions P --out FILE
      Reads every partition from offset 0 up to its high watermark (assign, no group) and
      writes {"partition", "offset", "value"} lines.
  chaos_workload.py metadata --bootstrap ADDRS --topic T
      Prints one JSON line: {"partition": {"leader", "replicas", "isr"}} from Metadata.
  chaos_workload.py check --produced FILE --consumed FILE [--summary FILE]
      The checker; prints a summary and exits 1 on any violation (see check()).
  chaos_workload.py --self-test
      Feeds check() crafted histories and asserts that it fails on each kind of violation.
"""

import argparse
import json
import logging
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict

# Long enough for the client to retry through an election and a restart.
MESSAGE_TIMEOUT_MS = 30000
# Bound on messages a producer has in flight (not yet reported).
MAX_IN_FLIGHT = 2000
# Pause between two sends of one producer: about 200 messages/s each.
SEND_INTERVAL_S = 0.005
# How long a metadata or watermark query may take before it is retried.
QUERY_TIMEOUT_S = 5.0
# The consume step as a whole.
CONSUME_WAIT_S = 60.0
EXAMPLES = 5


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- produce


def produce(args):
    from confluent_kafka import KafkaException, Producer

    out = open(args.out, "w")
    lock = threading.Lock()
    stats = Counter()
    errors = Counter()
    first_ack = [None]
    last_ack = [None]
    started = time.monotonic()

    def write(rec):
        with lock:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    # librdkafka's idempotence log (pid, epoch bumps, sequence errors, retries) next to
    # the history: what the client did when a value turns up twice.
    client_log = logging.getLogger("librdkafka")
    client_log.setLevel(logging.DEBUG)
    handler = logging.FileHandler(args.out + ".client.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    client_log.addHandler(handler)

    def new_producer():
        return Producer(
            {
                "debug": "eos",
                "logger": client_log,
                "bootstrap.servers": args.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": MESSAGE_TIMEOUT_MS,
                "request.timeout.ms": 5000,
                "socket.timeout.ms": 5000,
                "retry.backoff.ms": 100,
                "linger.ms": 5,
                "topic.metadata.refresh.interval.ms": 2000,
            }
        )

    def producer_loop(k):
        pending = {}
        fatal = []

        def report(err, msg, seq):
            value = pending.pop(seq)
            rec = {"producer": k, "seq": seq, "value": value, "partition": seq % args.partitions}
            if err is None:
                rec.update(ok=True, offset=msg.offset(), partition=msg.partition(), error=None)
                with lock:
                    stats["acked"] += 1
                    now = time.monotonic() - started
                    first_ack[0] = first_ack[0] if first_ack[0] is not None else now
                    last_ack[0] = now
            else:
                rec.update(ok=False, offset=None, error=str(err))
                if err.fatal():
                    fatal.append(err)
                with lock:
                    stats["failed"] += 1
                    errors[err.name()] += 1
            write(rec)

        def give_up_pending(why):
            for s, value in sorted(pending.items()):
                write({"producer": k, "seq": s, "value": value, "partition": s % args.partitions, "ok": False, "offset": None, "error": why})
                with lock:
                    stats["failed"] += 1
                    errors[why] += 1
            pending.clear()

        p = new_producer()

        def serve(timeout):
            # A fatal error is raised from poll() too (no error_cb is set).
            try:
                p.poll(timeout)
            except KafkaException as e:
                if e.args[0].fatal():
                    fatal.append(e.args[0])
                else:
                    log(f"producer {k}: {e}")

        seq = 0
        deadline = started + args.duration
        try:
            while time.monotonic() < deadline:
                if fatal:
                    # The idempotent producer is unusable after a fatal error (e.g. the
                    # broker lost sequence state it had acknowledged): report what is
                    # left as failed and go on with a new producer (a new producer id).
                    log(f"producer {k}: fatal error {fatal[0]}; starting a new producer")
                    p.purge()
                    give_up_pending(f"fatal: {fatal[0].name()}")
                    fatal.clear()
                    p = new_producer()
                    with lock:
                        stats["new_producers"] += 1
                if len(pending) >= MAX_IN_FLIGHT:
                    serve(0.05)
                    continue
                value = f"p{k}-{seq}"
                part = seq % args.partitions
                pending[seq] = value
                try:
                    p.produce(
                        args.topic,
                        value.encode(),
                        key=f"k{part}".encode(),
                        partition=part,
                        on_delivery=lambda err, msg, s=seq: report(err, msg, s),
                    )
                except BufferError:
                    pending.pop(seq)
                    serve(0.1)
                    continue
                except KafkaException as e:  # a send refused on the spot is a failed send
                    pending.pop(seq)
                    err = e.args[0]
                    if err.fatal():
                        fatal.append(err)
                    write({"producer": k, "seq": seq, "value": value, "partition": part, "ok": False, "offset": None, "error": f"produce(): {err}"})
                    with lock:
                        stats["failed"] += 1
                        errors[f"produce(): {err.name()}"] += 1
                seq += 1
                with lock:
                    stats["sent"] += 1
                serve(0)
                time.sleep(SEND_INTERVAL_S)
            flush_until = time.monotonic() + MESSAGE_TIMEOUT_MS / 1000 + 15
            while pending and not fatal and time.monotonic() < flush_until:
                serve(0.1)
            if fatal:
                log(f"producer {k}: fatal error {fatal[0]} while flushing")
                p.purge()
            elif pending:
                log(f"producer {k}: {len(pending)} messages unreported after the flush bound")
        except Exception:
            with lock:
                crashed.append(traceback.format_exc())
        finally:
            give_up_pending("no delivery report by the end")

    crashed = []
    threads = [threading.Thread(target=producer_loop, args=(k,), name=f"p{k}") for k in range(args.producers)]
    for t in threads:
        t.start()
    last_print = time.monotonic()
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        if time.monotonic() - last_print >= 10:
            last_print = time.monotonic()
            with lock:
                log(f"produce t={last_print - started:.0f}s sent={stats['sent']} acked={stats['acked']} failed={stats['failed']}")
    out.close()
    for c in crashed:
        log(f"FAIL: a producer thread crashed:\n{c}")
    handler.flush()
    # An epoch bump renumbers every batch a producer still holds; one the broker kept
    # although it answered an error would then be written twice. Counted, for the record.
    with open(args.out + ".client.log") as f:
        bumps = sum(1 for line in f if "bumped epoch" in line)
    log(
        f"produce done in {time.monotonic() - started:.1f}s: sent={stats['sent']} acked={stats['acked']} "
        f"failed={stats['failed']} new_producers={stats['new_producers']} epoch_bumps={bumps} errors={dict(errors)}"
    )
    return 2 if crashed else 0


# ---------------------------------------------------------------- consume


def consume(args):
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": "chaos-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "socket.timeout.ms": 5000,
        }
    )
    deadline = time.monotonic() + CONSUME_WAIT_S
    high = {}
    for part in range(args.partitions):
        while part not in high:
            try:
                _, hi = c.get_watermark_offsets(TopicPartition(args.topic, part), timeout=QUERY_TIMEOUT_S)
                high[part] = hi
            except KafkaException as e:
                if time.monotonic() > deadline:
                    log(f"FAIL: no high watermark of partition {part} within {CONSUME_WAIT_S} s: {e}")
                    return 1
                time.sleep(0.5)
    log(f"high watermarks {high}")
    c.assign([TopicPartition(args.topic, part, 0) for part in range(args.partitions) if high[part] > 0])
    position = {part: 0 for part in range(args.partitions)}
    read = 0
    with open(args.out, "w") as out:
        while any(position[p] < high[p] for p in high) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                log(f"consume error: {m.error()}")
                continue
            out.write(json.dumps({"partition": m.partition(), "offset": m.offset(), "value": m.value().decode(errors="replace")}) + "\n")
            position[m.partition()] = m.offset() + 1
            read += 1
    c.close()
    short = {p: (position[p], high[p]) for p in high if position[p] < high[p]}
    log(f"consumed {read} records; partitions not read to their high watermark (position, high): {short}")
    # The checker judges what was read; a partition left short shows as lost values there.
    return 0


def metadata(args):
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": args.bootstrap, "socket.timeout.ms": 5000}).list_topics(args.topic, timeout=QUERY_TIMEOUT_S)
    t = md.topics.get(args.topic)
    if t is None or t.error is not None:
        log(f"FAIL: {args.topic}: {t.error if t else 'absent'}")
        return 1
    print(json.dumps({str(p.id): {"leader": p.leader, "replicas": list(p.replicas), "isr": list(p.isrs)} for p in t.partitions.values()}))
    return 0


# ---------------------------------------------------------------- check


def check(produced, consumed):
    """Judges a history. `produced`: delivery reports in arrival order (dicts with producer,
    seq, value, partition, offset, ok). `consumed`: records read (partition, offset, value),
    in read order. Returns (summary dict, violations dict kind -> list of examples).

    (a) every acknowledged value is read exactly once (lost / duplicated);
    (b) an acknowledged value is read at the partition and offset it was acknowledged at
        (misplaced), and per producer and partition the acknowledged offsets grow in the
        order of acknowledgement, and values are read in the order they were sent (reordered);
    (c) every value read was sent (phantom); values whose send failed may be there (counted);
    (d) per partition the offsets read are strictly increasing (offset_order).

    An acknowledgement may come without an offset: librdkafka acknowledges "implicitly"
    (offset invalid, None here) messages of a retried batch whose later batch of the same
    idempotent producer was acknowledged. Such a value must be read exactly once all the
    same, in its partition; its offset is not judged.
    """
    v = defaultdict(list)
    acked = {}
    failed = set()
    sent = set()
    last_acked_offset = {}
    without_offset = 0
    for r in produced:
        sent.add(r["value"])
        if r["ok"]:
            if r["value"] in acked:
                v["double_ack"].append(r["value"])
            acked[r["value"]] = (r["partition"], r["offset"])
            if r["offset"] is None:
                without_offset += 1
                continue
            key = (r["producer"], r["partition"])
            prev = last_acked_offset.get(key)
            if prev is not None and r["offset"] <= prev:
                v["reordered"].append(f"{r['value']} acked at {r['partition']}/{r['offset']} after offset {prev}")
            last_acked_offset[key] = r["offset"]
        else:
            failed.add(r["value"])
    reads = Counter()
    last_offset = {}
    last_seq = {}
    failed_present = 0
    for r in consumed:
        part, off, value = r["partition"], r["offset"], r["value"]
        reads[value] += 1
        prev = last_offset.get(part)
        if prev is not None and off <= prev:
            v["offset_order"].append(f"partition {part}: offset {off} read after {prev}")
        last_offset[part] = off
        if value not in sent:
            v["phantom"].append(f"{value!r} at {part}/{off}")
            continue
        if reads[value] > 1:
            # A second copy: counted below as duplicated, judged only once.
            continue
        if value in acked and acked[value] != (part, off) and acked[value] != (part, None):
            v["misplaced"].append(f"{value} acked at {acked[value][0]}/{acked[value][1]}, read at {part}/{off}")
        if value in failed and value not in acked:
            failed_present += 1
        producer, seq = value[1:].split("-", 1)
        key = (producer, part)
        if key in last_seq and int(seq) <= last_seq[key]:
            v["reordered"].append(f"{value} read at {part}/{off} after p{producer}-{last_seq[key]}")
        last_seq[key] = int(seq)
    for value, n in reads.items():
        if n > 1:
            v["duplicated"].append(f"{value} read {n} times")
    lost = [value for value in acked if reads[value] == 0]
    v["lost"].extend(f"{value} acked at {acked[value][0]}/{acked[value][1]}" for value in lost)
    if not acked:
        v["nothing_acked"].append("no write was acknowledged: nothing to judge")
    max_acked = {}
    for part, off in acked.values():
        if off is not None:
            max_acked[part] = max(max_acked.get(part, -1), off)
    summary = {
        "acked": len(acked),
        "acked_without_offset": without_offset,
        "failed_sends": len(failed - set(acked)),
        "failed_present": failed_present,
        "read": sum(reads.values()),
        "lost": len(lost),
        "duplicated": len(v["duplicated"]),
        "reordered": len(v["reordered"]),
        "misplaced": len(v["misplaced"]),
        "phantom": len(v["phantom"]),
        "offset_order": len(v["offset_order"]),
        "max_acked_offset": {str(p): o for p, o in sorted(max_acked.items())},
    }
    return summary, {k: x for k, x in v.items() if x}


def lost_ranges(produced, consumed):
    """Per partition, the acknowledged offsets that were not read, as ranges (for the report)."""
    read = {(r["partition"], r["offset"]) for r in consumed}
    missing = defaultdict(list)
    for r in produced:
        if r["ok"] and r["offset"] is not None and (r["partition"], r["offset"]) not in read:
            missing[r["partition"]].append(r["offset"])
    out = {}
    for part, offs in sorted(missing.items()):
        offs.sort()
        ranges = []
        for o in offs:
            if ranges and o == ranges[-1][1] + 1:
                ranges[-1][1] = o
            else:
                ranges.append([o, o])
        out[part] = ranges
    return out


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_check(args):
    produced = read_jsonl(args.produced)
    consumed = read_jsonl(args.consumed)
    summary, violations = check(produced, consumed)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f)
    log("checker: " + " ".join(f"{k}={v}" for k, v in summary.items() if k != "max_acked_offset"))
    log(f"checker: highest acknowledged offset per partition {summary['max_acked_offset']}")
    if not violations:
        log("checker: OK")
        return 0
    if "lost" in violations:
        log(f"checker: acknowledged offsets not read, per partition: {lost_ranges(produced, consumed)}")
    for kind, examples in sorted(violations.items()):
        log(f"VIOLATION {kind}: {len(examples)}, e.g. {examples[:EXAMPLES]}")
    return 1


# ---------------------------------------------------------------- self-test


def self_test():
    def ack(k, seq, part, off):
        return {"producer": k, "seq": seq, "value": f"p{k}-{seq}", "partition": part, "offset": off, "ok": True}

    def failed(k, seq, part):
        return {"producer": k, "seq": seq, "value": f"p{k}-{seq}", "partition": part, "offset": None, "ok": False}

    def rec(part, off, value):
        return {"partition": part, "offset": off, "value": value}

    produced = [ack(0, 0, 0, 0), ack(1, 0, 0, 1), ack(0, 1, 1, 0), ack(0, 2, 0, 2), failed(1, 1, 1)]
    good = [rec(0, 0, "p0-0"), rec(0, 1, "p1-0"), rec(0, 2, "p0-2"), rec(1, 0, "p0-1")]
    cases = {
        "clean": (produced, good, set()),
        "a failed send that landed": (produced, good + [rec(1, 1, "p1-1")], set()),
        "lost": (produced, [r for r in good if r["value"] != "p1-0"], {"lost"}),
        "duplicated": (produced, good + [rec(0, 3, "p0-2")], {"duplicated"}),
        "reordered (acks)": (
            [ack(0, 0, 0, 5), ack(0, 2, 0, 4)],
            [rec(0, 4, "p0-2"), rec(0, 5, "p0-0")],
            {"reordered"},
        ),
        "reordered (read)": (
            produced,
            [rec(0, 0, "p0-2"), rec(0, 1, "p1-0"), rec(0, 2, "p0-0"), rec(1, 0, "p0-1")],
            {"reordered", "misplaced"},
        ),
        "misplaced": (produced, [rec(0, 0, "p0-0"), rec(0, 1, "p1-0"), rec(0, 3, "p0-2"), rec(1, 0, "p0-1")], {"misplaced"}),
        "phantom": (produced, good + [rec(1, 1, "p7-7")], {"phantom"}),
        "offset order": (produced, [rec(0, 1, "p1-0"), rec(0, 0, "p0-0"), rec(0, 2, "p0-2"), rec(1, 0, "p0-1")], {"offset_order"}),
        "nothing acked": ([failed(0, 0, 0)], [], {"nothing_acked"}),
        "acked without an offset, read once": (
            produced + [ack(1, 1, 1, None)],
            good + [rec(1, 1, "p1-1")],
            set(),
        ),
        "acked without an offset, lost": (produced + [ack(1, 1, 1, None)], good, {"lost"}),
        "acked without an offset, read twice": (
            produced + [ack(1, 1, 1, None)],
            good + [rec(1, 1, "p1-1"), rec(1, 2, "p1-1")],
            {"duplicated"},
        ),
        "acked without an offset, read in another partition": (
            produced + [ack(1, 1, 1, None)],
            good + [rec(0, 3, "p1-1")],
            {"misplaced"},
        ),
    }
    bad = []
    for name, (p, c, want) in cases.items():
        summary, violations = check(p, c)
        got = set(violations)
        if got != want:
            bad.append(f"{name}: expected violations {sorted(want)}, got {sorted(got)} ({violations})")
        else:
            log(f"self-test {name}: {'passes' if not want else 'fails with ' + ', '.join(sorted(got))} as it must")
    if check(produced, good + [rec(1, 1, "p1-1")])[0]["failed_present"] != 1:
        bad.append("a failed send that landed is not counted")
    if bad:
        for b in bad:
            log(f"FAIL: {b}")
        return 1
    log("self-test: OK")
    return 0


def main():
    if "--self-test" in sys.argv[1:]:
        return self_test()
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["produce", "consume", "metadata", "check"])
    parser.add_argument("--bootstrap")
    parser.add_argument("--topic")
    parser.add_argument("--partitions", type=int)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--out")
    parser.add_argument("--produced")
    parser.add_argument("--consumed")
    parser.add_argument("--summary")
    args = parser.parse_args()
    return {"produce": produce, "consume": consume, "metadata": metadata, "check": run_check}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
