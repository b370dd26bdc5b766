"""kafka-python 3.x with its defaults: KafkaProducer() (idempotent by default, so it
gets a producer id with InitProducerId first; acks=all) sends N keyed messages to a
3-partition topic; KafkaConsumer(TOPIC, group_id=..., auto_offset_reset='earliest')
joins the group, consumes all of them exactly once and commits. A second consumer
of the same group afterwards gets exactly the messages produced since, nothing old,
and the group's committed offsets end at the partition ends."""

import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from e2e import WAIT_S, check, check_eq, committed_offsets, fail, log, parse_args

TOPIC = "kafka-python-group"
GROUP = "kafka-python-group-id"
PARTITIONS = 3
N = 300
LATER = 30

args = parse_args()

adm = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="kafka-python-group-e2e")
try:
    adm.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)], timeout_ms=10000)
    deadline = time.monotonic() + WAIT_S
    while True:
        topics = adm.describe_topics([TOPIC])
        if topics and topics[0].get("error_code") == 0 and len(topics[0].get("partitions", [])) == PARTITIONS:
            break
        if time.monotonic() > deadline:
            fail(f"describe_topics never showed {TOPIC} with {PARTITIONS} partitions: {topics!r}")
        time.sleep(0.1)
finally:
    adm.close()


def produce(first, count):
    """Messages first..first+count-1 (message i to partition i % PARTITIONS) with a
    default KafkaProducer; returns {(partition, offset): value}."""
    producer = KafkaProducer(bootstrap_servers=args.bootstrap)
    futures = [
        (producer.send(TOPIC, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % PARTITIONS), i)
        for i in range(first, first + count)
    ]
    producer.flush(timeout=WAIT_S)
    sent = {}
    for f, i in futures:
        md = f.get(timeout=WAIT_S)
        check_eq(md.partition, i % PARTITIONS, f"partition of message {i}")
        sent[(md.partition, md.offset)] = f"v{i}".encode()
    tm = producer._transaction_manager
    check(tm is not None, "KafkaProducer() with defaults is not idempotent (kafka-python disabled idempotence)")
    pid = tm.producer_id_and_epoch
    check(pid.producer_id >= 0 and pid.epoch >= 0, f"the idempotent producer has no producer id: {pid}")
    producer.close(timeout=WAIT_S)
    log(f"ok: a default (idempotent, producer id {pid.producer_id} epoch {pid.epoch}) KafkaProducer sent {count} messages")
    return sent


def consume_group(want, what):
    """A KafkaConsumer of GROUP reads until it got every (partition, offset) in `want`
    ({(partition, offset): value}); anything else, or a repeat, fails. Commits, closes."""
    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=args.bootstrap,
        group_id=GROUP,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    got = {}
    deadline = time.monotonic() + WAIT_S
    try:
        while len(got) < len(want):
            if time.monotonic() > deadline:
                fail(f"{what}: consumed {len(got)} of {len(want)} messages in {WAIT_S}s")
            for tp, records in consumer.poll(timeout_ms=200).items():
                for r in records:
                    where = (tp.partition, r.offset)
                    check(where not in got, f"{what}: {TOPIC}/{where[0]}@{where[1]} consumed twice")
                    check(where in want, f"{what}: consumed {TOPIC}/{where[0]}@{where[1]} ({r.value!r}), "
                          f"which is not among the expected messages")
                    check_eq(r.value, want[where], f"{what}: value at {TOPIC}/{where[0]}@{where[1]}")
                    got[where] = r.value
        extra = consumer.poll(timeout_ms=300)
        check(not any(extra.values()), f"{what}: more messages than expected: {extra!r}")
        consumer.commit()
        mine = {p: consumer.committed(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)}
    finally:
        consumer.close()
    log(f"ok: {what}: KafkaConsumer of {GROUP} consumed {len(got)} messages once each; committed {mine}")
    return mine


first = produce(0, N)
ends = {p: N // PARTITIONS for p in range(PARTITIONS)}
check_eq(consume_group(first, "first consumer"), ends, "committed offsets (KafkaConsumer.committed)")
check_eq(committed_offsets(args.bootstrap, GROUP, TOPIC, range(PARTITIONS)), ends,
         "committed offsets (confluent-kafka committed())")

later = produce(N, LATER)
ends = {p: (N + LATER) // PARTITIONS for p in range(PARTITIONS)}
check_eq(consume_group(later, "second consumer"), ends, "committed offsets after the second consumer")
log(f"ok: the second consumer of {GROUP} got exactly the {LATER} new messages, nothing old")
