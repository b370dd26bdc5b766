"""Committed offsets are durable, in two phases around a broker restart
(kafka_clients.rs stops the broker with SIGTERM, or kills it with SIGKILL, once the
commit phase exited, i.e. after every commit was acknowledged, and starts a new
broker process on the same data directory and port).

commit: produce 100 numbered messages to each of 3 partitions; a confluent-kafka
group consumer subscribes, processes part of them (40 / 70 / 100 messages of
partitions 0 / 1 / 2) and commits exactly those positions, with metadata, in one
synchronous commit; a second group commits partition 1 only, without joining
(a standalone commit: generation -1, no member id).
verify: committed() returns the same offsets and metadata (and nothing where
nothing was committed); after one more message per partition, a new consumer of
the group (auto.offset.reset=error, so a lost offset is an error, not a silent
reset) starts exactly at the committed offsets, reads the rest in order, commits,
and the group's offsets are the partition ends."""

import time

from confluent_kafka import OFFSET_INVALID, Producer, TopicPartition

from e2e import (
    WAIT_S,
    Sent,
    admin,
    check,
    check_eq,
    commit_sync,
    committed,
    committed_offsets,
    conf,
    create_topic,
    fail,
    group_consumer,
    log,
    parse_args,
    produce_all,
    wait_for_topic,
)

TOPIC = "orders"
PARTITIONS = 3
PER_PARTITION = 100
GROUP = "durable-group"
STANDALONE = "standalone-group"
# What GROUP commits in the commit phase: partition -> offset (the next message to read).
TARGET = {0: 40, 1: 70, 2: 100}
STANDALONE_TARGET = {1: 3}

args = parse_args(("--phase", {"choices": ["commit", "verify"], "required": True}))
adm = admin(args.bootstrap)


def value(p, i):
    return f"{p}-{i}".encode()


def metadata(p):
    return f"phase1 p{p} \u00e9"


def consume_group(c, want, what):
    """Polls subscribed consumer `c` until it processed `want[p]` messages of every
    partition p, each partition read in order without gaps; returns
    {partition: [offsets processed]}. Messages beyond `want` are ignored."""
    got = {p: [] for p in want}
    deadline = time.monotonic() + WAIT_S
    while any(len(got[p]) < n for p, n in want.items()):
        if time.monotonic() > deadline:
            fail(f"{what}: processed {[len(got[p]) for p in want]} of {list(want.values())} messages in {WAIT_S}s")
        for m in c.consume(num_messages=500, timeout=0.2):
            if m.error() is not None:
                fail(f"{what}: consumer error {m.error()}")
            p = m.partition()
            if len(got[p]) >= want[p]:
                continue
            if got[p]:
                check_eq(m.offset(), got[p][-1] + 1, f"{what}: offset after {TOPIC}/{p}@{got[p][-1]}")
            got[p].append(m.offset())
            check_eq(m.value(), value(p, m.offset()), f"{what}: value at {TOPIC}/{p}@{m.offset()}")
    return got


if args.phase == "commit":
    create_topic(adm, TOPIC, PARTITIONS)
    produce_all(
        Producer(conf(args.bootstrap, acks="all")),
        [Sent(TOPIC, p, None, value(p, i)) for p in range(PARTITIONS) for i in range(PER_PARTITION)],
    )
    c = group_consumer(args.bootstrap, GROUP)
    c.subscribe([TOPIC])
    got = consume_group(c, TARGET, "commit phase")
    for p, offsets in got.items():
        check_eq(offsets[:1], [0] if TARGET[p] else [], f"first offset of {TOPIC}/{p} (auto.offset.reset=earliest)")
    err = commit_sync(c, [TopicPartition(TOPIC, p, o, metadata(p)) for p, o in TARGET.items()])
    check(err is None, f"commit of {TARGET}: {err}")
    mine = c.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=WAIT_S)
    check_eq({tp.partition: (tp.offset, tp.metadata) for tp in mine},
             {p: (o, metadata(p)) for p, o in TARGET.items()}, "committed() right after the commit")
    c.close()
    log(f"ok: {GROUP} processed and committed {TARGET}")

    s = group_consumer(args.bootstrap, STANDALONE)
    err = commit_sync(s, [TopicPartition(TOPIC, p, o) for p, o in STANDALONE_TARGET.items()])
    check(err is None, f"standalone commit of {STANDALONE_TARGET}: {err}")
    s.close()
    log(f"ok: {STANDALONE} committed {STANDALONE_TARGET} without joining")
else:
    wait_for_topic(adm, TOPIC, PARTITIONS)
    check_eq(committed(args.bootstrap, GROUP, TOPIC, range(PARTITIONS)),
             {p: (o, metadata(p)) for p, o in TARGET.items()}, f"{GROUP} committed offsets after the restart")
    check_eq(committed_offsets(args.bootstrap, STANDALONE, TOPIC, range(PARTITIONS)),
             {p: STANDALONE_TARGET.get(p, OFFSET_INVALID) for p in range(PARTITIONS)},
             f"{STANDALONE} committed offsets after the restart")
    log(f"ok: after the restart {GROUP} has {TARGET} and {STANDALONE} has {STANDALONE_TARGET}")

    produce_all(
        Producer(conf(args.bootstrap, acks="all")),
        [Sent(TOPIC, p, None, value(p, PER_PARTITION)) for p in range(PARTITIONS)],
    )
    c = group_consumer(args.bootstrap, GROUP, auto_offset_reset="error")
    c.subscribe([TOPIC])
    rest = {p: PER_PARTITION + 1 - o for p, o in TARGET.items()}
    got = consume_group(c, rest, "verify phase")
    for p, offsets in got.items():
        check_eq(offsets[0], TARGET[p], f"first offset a new member of {GROUP} read from {TOPIC}/{p}")
    extra = c.consume(num_messages=10, timeout=0.5)
    check(not extra, f"messages beyond the ends: {[(m.partition(), m.offset(), m.error()) for m in extra]}")
    err = commit_sync(c)
    check(err is None, f"commit after the restart: {err}")
    c.close()
    check_eq(committed_offsets(args.bootstrap, GROUP, TOPIC, range(PARTITIONS)),
             {p: PER_PARTITION + 1 for p in range(PARTITIONS)}, f"{GROUP} committed offsets at the end")
    log(f"ok: a new member of {GROUP} resumed at {TARGET} and committed the ends")
