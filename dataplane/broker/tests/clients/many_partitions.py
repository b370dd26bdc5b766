"""Many partitions on one node (issue 16): one topic of --partitions partitions.

  --phase create    CreateTopics of the topic (one request), then one of --over-limit
                    partitions that must be refused with INVALID_PARTITIONS (the node's
                    open-file budget); one record to every partition (value "<tag>-<p>"),
                    and --sample-records more to each of the first --sample partitions.
  --phase verify    every partition serves: ListOffsets end offsets are exactly what
                    the earlier phases wrote, and a consumer assigned to every partition
                    reads every record back, byte for byte, in order per partition;
                    then one more record to every partition (tag --tag).

The records each phase wrote are derived from --tags (the produce tags so far, in
order), so verify knows what to expect without a file. Every wait is bounded.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from e2e import WAIT_S, check, fail, log, parse_args

# One CreateTopics of many partitions, a produce to all of them, a read of all of them:
# bounds that catch a hang, not speed checks.
CREATE_S = 120.0
PRODUCE_S = 120.0
READ_S = 120.0


def expected(args):
    """partition -> the values written so far, in order."""
    out = {p: [] for p in range(args.partitions)}
    for tag in [t for t in args.tags.split(",") if t]:
        for p in range(args.partitions):
            out[p].append(f"{tag}-{p}".encode())
        if tag == "first":
            for p in range(min(args.sample, args.partitions)):
                out[p] += [f"sample-{p}-{i}".encode() for i in range(args.sample_records)]
    return out


def produce(args, tag, sample):
    p = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(PRODUCE_S * 1000),
        "enable.idempotence": False,
        "max.in.flight.requests.per.connection": 1,
    })
    errors = []

    def done(err, _msg):
        if err is not None:
            errors.append(str(err))

    def send(partition, value):
        while True:
            try:
                p.produce(args.topic, value=value, partition=partition, on_delivery=done)
                return
            except BufferError:
                p.poll(0.05)

    t = time.monotonic()
    for part in range(args.partitions):
        send(part, f"{tag}-{part}".encode())
    if sample:
        for part in range(min(args.sample, args.partitions)):
            for i in range(args.sample_records):
                send(part, f"sample-{part}-{i}".encode())
    left = p.flush(PRODUCE_S)
    check(left == 0 and not errors, f"produce {tag}: {left} undelivered, errors {errors[:3]} ({len(errors)})")
    log(f"produced tag {tag} to {args.partitions} partitions in {time.monotonic() - t:.2f} s")


def create(args):
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    t = time.monotonic()
    fut = admin.create_topics([NewTopic(args.topic, args.partitions, 1)], request_timeout=CREATE_S,
                              operation_timeout=CREATE_S)[args.topic]
    fut.result(timeout=CREATE_S + 5)
    log(f"created {args.topic} with {args.partitions} partitions in {time.monotonic() - t:.2f} s")
    if args.over_limit:
        fut = admin.create_topics([NewTopic(f"{args.topic}-over", args.over_limit, 1)],
                                  request_timeout=CREATE_S)[f"{args.topic}-over"]
        try:
            fut.result(timeout=CREATE_S + 5)
            fail(f"a topic of {args.over_limit} more partitions was created beyond the node's budget")
        except KafkaException as e:
            err = e.args[0]
            check(err.name() == "INVALID_PARTITIONS", f"over the budget: {err.name()} {err.str()}, expected INVALID_PARTITIONS")
            log(f"over the budget: {err.name()}: {err.str()}")
    produce(args, "first", sample=True)


def verify(args):
    want = expected(args)
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    tps = [TopicPartition(args.topic, p) for p in range(args.partitions)]
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=WAIT_S)
            got = {tp.partition: f.result(timeout=WAIT_S).offset for tp, f in ends.items()}
            break
        except KafkaException as e:
            # Right after a restart the client may still be learning the leaders.
            if time.monotonic() > deadline:
                fail(f"ListOffsets: {e}")
            time.sleep(0.2)
    bad = [(p, got.get(p), len(want[p])) for p in range(args.partitions) if got.get(p) != len(want[p])]
    check(not bad, f"end offsets differ from what was written (partition, end, expected): {bad[:5]} ({len(bad)})")
    log(f"ListOffsets: all {args.partitions} partitions end where expected")

    c = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "many-partitions-verify",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 50,
    })
    c.assign([TopicPartition(args.topic, p, 0) for p in range(args.partitions)])
    read = {p: [] for p in range(args.partitions)}
    total = sum(len(v) for v in want.values())
    count = 0
    t = time.monotonic()
    while count < total:
        if time.monotonic() - t > READ_S:
            missing = [p for p in range(args.partitions) if len(read[p]) < len(want[p])]
            fail(f"read {count} of {total} records in {READ_S} s; short partitions {missing[:5]} ({len(missing)})")
        for m in c.consume(num_messages=1000, timeout=0.5):
            if m.error():
                fail(f"consume: {m.error()}")
            check(m.offset() == len(read[m.partition()]),
                  f"partition {m.partition()}: offset {m.offset()} after {len(read[m.partition()])} records")
            read[m.partition()].append(m.value())
            count += 1
    c.close()
    bad = [p for p in range(args.partitions) if read[p] != want[p]]
    check(not bad, f"records differ in partitions {bad[:5]} ({len(bad)}); e.g. {read[bad[0]] if bad else ''} != {want[bad[0]] if bad else ''}")
    log(f"read back all {total} records of {args.partitions} partitions in {time.monotonic() - t:.2f} s")
    if args.tag:
        produce(args, args.tag, sample=False)


def main():
    args = parse_args(
        ("--phase", {"choices": ["create", "verify"], "required": True}),
        ("--topic", {"default": "many"}),
        ("--partitions", {"type": int, "required": True}),
        ("--over-limit", {"type": int, "default": 0}),
        ("--sample", {"type": int, "default": 8}),
        ("--sample-records", {"type": int, "default": 20}),
        ("--tags", {"default": "", "help": "produce tags of the phases before, in order"}),
        ("--tag", {"default": "", "help": "verify: then one more record per partition with this tag"}),
    )
    {"create": create, "verify": verify}[args.phase](args)
    log("OK")


if __name__ == "__main__":
    sys.exit(main())
