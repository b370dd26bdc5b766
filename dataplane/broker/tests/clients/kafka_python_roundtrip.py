"""kafka-python (a pure-Python client, independent of librdkafka): KafkaAdminClient
creates a topic, KafkaProducer (idempotent, its default; acks='all'; uncompressed
and gzip) produces keyed messages with headers, and a group-less KafkaConsumer
assign()s the partitions, seeks to the beginning and reads everything back byte for
byte, in order."""

import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from e2e import WAIT_S, check, check_eq, fail, log, parse_args, payload

TOPIC = "kafka-python"
PARTITIONS = 3
PER_CODEC = 90

args = parse_args()

adm = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="kafka-python-e2e", request_timeout_ms=10000)
try:
    adm.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)], timeout_ms=10000)
    deadline = time.monotonic() + WAIT_S
    while True:
        topics = adm.describe_topics([TOPIC])
        partitions = topics[0].get("partitions", []) if topics else []
        if topics and topics[0].get("error_code") == 0 and len(partitions) == PARTITIONS:
            break
        if time.monotonic() > deadline:
            fail(f"kafka-python describe_topics never showed {TOPIC} with {PARTITIONS} partitions: {topics!r}")
        time.sleep(0.1)
    for p in partitions:
        check_eq(p["leader_id"], 0, f"leader of {TOPIC}/{p['partition_index']}")
finally:
    adm.close()
log(f"ok: KafkaAdminClient created {TOPIC} with {PARTITIONS} partitions")

# (partition, key, value, headers) in production order.
sent = []
for codec in [None, "gzip"]:
    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        compression_type=codec,
        linger_ms=5,
        request_timeout_ms=10000,
    )
    futures = []
    for i in range(PER_CODEC):
        n = len(sent)
        key = None if n % 10 == 0 else f"kp-{n}".encode()
        value = b"" if n % 15 == 0 else payload(n, 1 + (n * 53) % 2000)
        headers = [("n", str(n).encode())] if n % 2 else []
        partition = n % PARTITIONS
        futures.append(
            (producer.send(TOPIC, key=key, value=value, headers=headers, partition=partition), partition)
        )
        sent.append((partition, key, value, headers))
    producer.flush(timeout=WAIT_S)
    for f, partition in futures:
        md = f.get(timeout=WAIT_S)
        check_eq(md.partition, partition, "partition in kafka-python RecordMetadata")
        check(md.offset >= 0, f"offset in kafka-python RecordMetadata: {md.offset}")
    producer.close(timeout=WAIT_S)
    log(f"ok: KafkaProducer compression_type={codec} produced {PER_CODEC} messages")

consumer = KafkaConsumer(
    bootstrap_servers=args.bootstrap,
    group_id=None,
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    request_timeout_ms=15000,
    fetch_max_wait_ms=100,
)
tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
consumer.assign(tps)
consumer.seek_to_beginning(*tps)
got = {p: [] for p in range(PARTITIONS)}
deadline = time.monotonic() + WAIT_S
while sum(len(v) for v in got.values()) < len(sent):
    if time.monotonic() > deadline:
        fail(f"kafka-python consumed {sum(len(v) for v in got.values())} of {len(sent)} messages")
    for tp, records in consumer.poll(timeout_ms=200).items():
        for r in records:
            got[tp.partition].append((r.offset, r.key, r.value, [(k, v) for k, v in r.headers]))
consumer.close()

for p in range(PARTITIONS):
    expected = [(k, v, h) for q, k, v, h in sent if q == p]
    actual = got[p]
    check_eq([o for o, _, _, _ in actual], list(range(len(expected))), f"offsets of {TOPIC}/{p}")
    for i, ((_, k, v, h), (ek, ev, eh)) in enumerate(zip(actual, expected)):
        check_eq(k, ek, f"{TOPIC}/{p} offset {i}: key")
        check_eq(v, ev, f"{TOPIC}/{p} offset {i}: value")
        check_eq(h, eh, f"{TOPIC}/{p} offset {i}: headers")
log(f"ok: KafkaConsumer (no group, assign + seek_to_beginning) read all {len(sent)} messages byte-exact")
