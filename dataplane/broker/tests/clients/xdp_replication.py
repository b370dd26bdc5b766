"""Replication over AF_XDP with a real client (../xdp_replication.rs): acks=all
produces to a topic of replication factor 3 (created by the test) of messages from a
few bytes to several datagrams (a datagram carries ~1.4 KB), read back byte-exact.
The test then compares the replicas' logs and the AF_XDP counters of every node."""

from confluent_kafka import Producer

from e2e import (
    Sent,
    check_eq,
    compare,
    conf,
    consume_all,
    log,
    parse_args,
    payload,
    produce_all,
)

args = parse_args(
    ("--topic", {"default": "xdp"}),
    ("--partitions", {"type": int, "default": 3}),
    ("--messages", {"type": int, "default": 600}),
)
sent = [
    Sent(args.topic, i % args.partitions, f"k{i}".encode(), payload(i, 1 + (i * 131) % 20000))
    for i in range(args.messages)
]
producer = Producer(conf(args.bootstrap, acks="all", linger_ms=1, enable_idempotence=True))
# In rounds, so that replication carries many small frames as well as large ones.
for start in range(0, len(sent), 50):
    produce_all(producer, sent[start : start + 50])
log(f"ok: {len(sent)} messages acknowledged by all in-sync replicas")
got = consume_all(args.bootstrap, args.topic, args.partitions, len(sent))
# Offsets start after the leaders' epoch markers (control batches a consumer skips), so
# they are checked against the delivery reports rather than counted from 0.
compare(got, sent, check_offsets=False)
check_eq(
    sorted((g.partition, g.offset) for g in got),
    sorted((s.partition, s.offset) for s in sent),
    "offsets read back vs delivery reports",
)
log(f"ok: all {len(sent)} messages read back byte-exact")
