"""acks=0 and acks=1 producers land their data too: the broker must append what an
acks=0 producer sends although it sends no answer (and the connection must stay
usable), and acks=1 must deliver offsets like acks=all. Everything is read back."""

from confluent_kafka import Producer

from e2e import (
    Sent,
    admin,
    compare,
    conf,
    consume_all,
    create_topic,
    log,
    parse_args,
    payload,
    produce_all,
    wait_for_high_watermark,
)

TOPIC = "acks"
PARTITIONS = 2
PER_MODE = 100

args = parse_args()
create_topic(admin(args.bootstrap), TOPIC, PARTITIONS)

sent = []
for acks in ["0", "1", "all"]:
    batch = [
        Sent(TOPIC, i % PARTITIONS, f"acks{acks}-{i}".encode(), payload(i, 1 + i * 7))
        for i in range(PER_MODE)
    ]
    # Two flushes per producer, so an acks=0 connection is reused after a batch with no answer.
    producer = Producer(conf(args.bootstrap, acks=acks, linger_ms=2))
    for half in (batch[: PER_MODE // 2], batch[PER_MODE // 2 :]):
        produce_all(producer, half, expect_offsets=acks != "0")
    # Nobody acknowledges acks=0 writes: wait until they are in the log, so the next
    # producer's messages follow them in every partition.
    for p in range(PARTITIONS):
        wait_for_high_watermark(args.bootstrap, TOPIC, p, sum(1 for s in sent + batch if s.partition == p))
    log(f"ok: acks={acks} producer delivered {PER_MODE} messages")
    sent += batch

got = consume_all(args.bootstrap, TOPIC, PARTITIONS, len(sent))
compare(got, sent)
log(f"ok: all {len(sent)} messages (acks=0, 1, all) read back byte-exact")
