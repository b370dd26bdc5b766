"""Restart persistence, in two phases around a broker restart (kafka_clients.rs sends
SIGTERM in between and starts a new broker process on the same data directory).

produce: create a 3-partition topic with a non-default retention.ms and produce N
deterministic messages with acks=all.
verify: the topic is back with its partition count and config, every message reads
back byte for byte at its offset, and a new message is appended after them (offsets
are never reused)."""

from confluent_kafka import Producer
from confluent_kafka.admin import ConfigResource, ResourceType

from e2e import (
    Sent,
    admin,
    check_eq,
    compare,
    conf,
    consume,
    consume_all,
    create_topic,
    expect_ok,
    log,
    parse_args,
    payload,
    produce_all,
    wait_for_topic,
    watermarks,
)

TOPIC = "durable"
PARTITIONS = 3
N = 300
RETENTION_MS = "123456789"

args = parse_args(("--phase", {"choices": ["produce", "verify"], "required": True}))
adm = admin(args.bootstrap)


def message(i):
    headers = [("i", str(i).encode())] if i % 2 else []
    return Sent(TOPIC, i % PARTITIONS, f"key-{i}".encode(), payload(i, 1 + (i * 131) % 3000), headers)


sent = [message(i) for i in range(N)]
if args.phase == "produce":
    create_topic(adm, TOPIC, PARTITIONS, {"retention.ms": RETENTION_MS})
    for codec in ["none", "zstd"]:
        half = sent[: N // 2] if codec == "none" else sent[N // 2 :]
        produce_all(Producer(conf(args.bootstrap, acks="all", compression_type=codec)), half)
    log(f"ok: produced {N} messages to {TOPIC} ({PARTITIONS} partitions) with acks=all")
else:
    wait_for_topic(adm, TOPIC, PARTITIONS)
    res = ConfigResource(ResourceType.TOPIC, TOPIC)
    entries = expect_ok(adm.describe_configs([res])[res], f"describe_configs {TOPIC}")
    check_eq(entries["retention.ms"].value, RETENTION_MS, f"{TOPIC} retention.ms after restart")
    got = consume_all(args.bootstrap, TOPIC, PARTITIONS, N)
    compare(got, sent)
    log(f"ok: after restart {TOPIC} has {PARTITIONS} partitions, retention.ms={RETENTION_MS}, all {N} messages")

    per_partition = N // PARTITIONS
    extra = Sent(TOPIC, 0, b"after-restart", b"appended after the restart")
    produce_all(Producer(conf(args.bootstrap, acks="all")), [extra])
    check_eq(extra.offset, per_partition, "offset of the first message appended after the restart")
    compare(consume(args.bootstrap, [(TOPIC, 0, per_partition)], 1), [extra], check_offsets=False)
    check_eq(watermarks(args.bootstrap, TOPIC, 0), (0, per_partition + 1), f"watermarks of {TOPIC}/0")
    log(f"ok: a new message lands at offset {per_partition}, after the recovered ones")
