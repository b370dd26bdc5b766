"""Topic configs with confluent-kafka: compression.type recompresses what producers of
other codecs send (an idempotent producer included) and consumers read every value back;
message.timestamp.type=LogAppendTime replaces the producer's timestamp with the broker's;
message.timestamp.before/after.max.ms refuse out-of-bound CreateTime batches with
INVALID_TIMESTAMP; max.message.bytes refuses larger batches with MSG_SIZE_TOO_LARGE;
Kafka's other standard configs are accepted and described, bad values refused with
INVALID_CONFIG; CreateTopics with a manual replica assignment; DescribeConfigs of the
broker; IncrementalAlterConfigs DELETE of compression.type (back to the default) and
APPEND/SUBTRACT on a replication throttle list (APPEND to compression.type refused). The Rust test then checks the stored batches' codecs with `ferrolog log dump`."""

import time

from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, KafkaError, Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from e2e import (
    WAIT_S,
    Sent,
    admin,
    check,
    check_eq,
    compare,
    conf,
    consume_all,
    create_topic,
    expect_error,
    expect_ok,
    log,
    parse_args,
    payload,
    produce_all,
    topic_partitions,
)

args = parse_args()
adm = admin(args.bootstrap)


def create(*topics):
    return adm.create_topics(list(topics), operation_timeout=10, request_timeout=WAIT_S)


def described(resource):
    entries = expect_ok(adm.describe_configs([resource])[resource], f"describe_configs {resource}")
    return {name: e for name, e in entries.items()}


# Codecs: a gzip topic and a zstd topic, each fed by producers of other codecs.
for topic, codec in [("gz", "gzip"), ("zs", "zstd")]:
    create_topic(adm, topic, 1, config={"compression.type": codec})
    entries = described(ConfigResource(ConfigResource.Type.TOPIC, topic))
    check_eq(entries["compression.type"].value, codec, f"{topic} compression.type")
    check(not entries["compression.type"].is_default, f"{topic} compression.type is an override")
log("ok: topics gz (gzip) and zs (zstd) created and described")

sent = []
for topic, producer_codecs in [("gz", ["none", "lz4", "gzip"]), ("zs", ["snappy", "gzip", "none"])]:
    for ci, codec in enumerate(producer_codecs):
        msgs = [
            Sent(topic, 0, f"k{ci}-{i}".encode(), payload(ci * 100 + i, 200 + i * 13), [("h", b"v")])
            for i in range(40)
        ]
        p = Producer(conf(args.bootstrap, acks="all", compression_type=codec, linger_ms=20, enable_idempotence=True))
        produce_all(p, msgs)
        sent.extend(msgs)
        log(f"ok: {len(msgs)} messages to {topic} from a {codec} producer (idempotent)")
for topic in ["gz", "zs"]:
    mine = [s for s in sent if s.topic == topic]
    got = consume_all(args.bootstrap, topic, 1, len(mine))
    compare(got, mine)
log("ok: every recompressed message read back byte-exact at contiguous offsets")

# LogAppendTime: the producer's (old) timestamp is replaced by the broker's clock.
create_topic(adm, "lat", 1, config={"message.timestamp.type": "LogAppendTime", "compression.type": "lz4"})
old = 1_000_000_000_000
before_ms = int(time.time() * 1000)
produce_all(Producer(conf(args.bootstrap, acks="all")), [Sent("lat", 0, b"k", b"v", timestamp=old) for _ in range(5)])
reports = []
p = Producer(conf(args.bootstrap, acks="all"))
p.produce("lat", value=b"r", partition=0, timestamp=old, on_delivery=lambda err, msg: reports.append((err, msg.timestamp())))
check_eq(p.flush(WAIT_S), 0, "undelivered LogAppendTime message")
after_ms = int(time.time() * 1000)
err, (ts_type, ts) = reports[0]
check(err is None, f"LogAppendTime delivery: {err}")
check_eq(ts_type, TIMESTAMP_LOG_APPEND_TIME, "delivery report timestamp type (the produce response's log_append_time)")
check(before_ms - 5 <= ts <= after_ms + 5, f"delivery report log append time {ts} not in [{before_ms}, {after_ms}]")
for g in consume_all(args.bootstrap, "lat", 1, 6):
    check_eq(g.timestamp[0], TIMESTAMP_LOG_APPEND_TIME, "timestamp type of a LogAppendTime topic's message")
    check(before_ms - 5 <= g.timestamp[1] <= after_ms + 5, f"log append time {g.timestamp[1]} not in [{before_ms}, {after_ms}]")
log("ok: LogAppendTime topic: consumers see the broker's append time, not the producer's")

# CreateTime bounds.
create_topic(
    adm,
    "bounded",
    1,
    config={"message.timestamp.before.max.ms": "60000", "message.timestamp.after.max.ms": "60000"},
)


def produce_expecting(topic, timestamp, want, what, value=b"v", **extra):
    """Produces one message; `want` None = must succeed, else the KafkaError code."""
    result = []
    p = Producer(conf(args.bootstrap, acks="all", retries=0, **extra))
    kwargs = {"partition": 0, "on_delivery": lambda err, msg: result.append(err)}
    if timestamp is not None:
        kwargs["timestamp"] = timestamp
    p.produce(topic, value=value, **kwargs)
    check_eq(p.flush(WAIT_S), 0, f"{what}: undelivered after flush")
    err = result[0] if result else "no delivery report"
    if want is None:
        check(err is None, f"{what}: expected success, got {err}")
    else:
        check(err is not None and err.code() == want, f"{what}: expected {KafkaError(want).name()}, got {err}")
    log(f"ok: {what} -> {'delivered' if want is None else KafkaError(want).name()}")


now = int(time.time() * 1000)
produce_expecting("bounded", now, None, "a CreateTime message within the bounds")
produce_expecting("bounded", now - 3_600_000, KafkaError.INVALID_TIMESTAMP, "a message an hour old")
produce_expecting("bounded", now + 3_600_000, KafkaError.INVALID_TIMESTAMP, "a message an hour ahead")
got = consume_all(args.bootstrap, "bounded", 1, 1)
check_eq(got[0].timestamp, (TIMESTAMP_CREATE_TIME, now), "the accepted message's CreateTime")

# max.message.bytes.
create_topic(adm, "small", 1, config={"max.message.bytes": "2000"})
produce_expecting("small", None, None, "a 1000-byte message under max.message.bytes=2000", value=b"x" * 1000)
produce_expecting(
    "small", None, KafkaError.MSG_SIZE_TOO_LARGE, "a 5000-byte message over max.message.bytes=2000", value=b"y" * 5000
)

# Configs that have no effect here are accepted, stored and described.
accepted_only = {
    "unclean.leader.election.enable": "true",
    "preallocate": "true",
    "message.downconversion.enable": "false",
    "follower.replication.throttled.replicas": "0:0",
    "segment.jitter.ms": "1000",
    "flush.messages": "1",
    "file.delete.delay.ms": "0",
    "compression.zstd.level": "7",
    "index.interval.bytes": "100",
}
create_topic(adm, "accepting", 1, config=accepted_only)
entries = described(ConfigResource(ConfigResource.Type.TOPIC, "accepting"))
for k, v in accepted_only.items():
    check_eq(entries[k].value, v, f"described {k}")
for k, default in [("message.timestamp.type", "CreateTime"), ("compression.type", "producer"), ("local.retention.ms", "-2")]:
    check_eq(entries[k].value, default, f"default of {k}")
    check(entries[k].is_default, f"{k} reported as a default")
log(f"ok: {len(accepted_only)} accepted-only configs stored and described; defaults listed ({len(entries)} entries)")

for name, config in [
    ("bad-codec", {"compression.type": "brotli"}),
    ("bad-ts-type", {"message.timestamp.type": "Now"}),
    ("bad-bound", {"message.timestamp.before.max.ms": "-5"}),
    ("bad-bool", {"preallocate": "yes"}),
    ("bad-tiered", {"remote.storage.enable": "true"}),
    ("bad-unknown", {"no.such.config": "1"}),
]:
    expect_error(create(NewTopic(name, 1, 1, config=config))[name], KafkaError.INVALID_CONFIG, f"create {name} {config}")
    check(topic_partitions(adm, name) is None, f"refused topic {name} exists")

# Manual replica assignment.
expect_ok(create(NewTopic("manual", 3, replica_assignment=[[0], [0], [0]]))["manual"], "create with a manual assignment")
deadline = time.monotonic() + WAIT_S
parts = None
while time.monotonic() < deadline:
    parts = topic_partitions(adm, "manual")
    if parts is not None and len(parts) == 3:
        break
    time.sleep(0.1)
check(parts is not None and len(parts) == 3, f"manual topic partitions: {parts}")
for pid, p in parts.items():
    check_eq(list(p.replicas), [0], f"replicas of manual/{pid}")
produce_all(Producer(conf(args.bootstrap, acks="all")), [Sent("manual", p, b"k", b"v") for p in range(3)])
for name, assignment, code in [
    ("manual-unknown-node", [[0], [7]], KafkaError.INVALID_REPLICA_ASSIGNMENT),
    ("manual-repeated", [[0, 0]], KafkaError.INVALID_REPLICA_ASSIGNMENT),
]:
    expect_error(create(NewTopic(name, len(assignment), replica_assignment=assignment))[name], code, f"create {name} {assignment}")
    check(topic_partitions(adm, name) is None, f"refused topic {name} exists")
log("ok: manual replica assignment served and checked")

# The broker's settings under Kafka's names.
entries = described(ConfigResource(ConfigResource.Type.BROKER, "0"))
for k in ["log.dirs", "num.partitions", "message.max.bytes", "log.retention.ms", "log.segment.bytes", "listeners", "log.cleaner.backoff.ms"]:
    check(k in entries, f"broker config {k} missing; has {sorted(entries)}")
    check(entries[k].is_read_only, f"broker config {k} read-only")
check_eq(entries["broker.id"].value, "0", "broker.id")
check_eq(entries["compression.type"].value, "producer", "broker compression.type")
log(f"ok: describe_configs BROKER 0: {len(entries)} entries, log.dirs={entries['log.dirs'].value}")


# IncrementalAlterConfigs on these configs: DELETE returns to the default; the throttle
# lists are list configs (APPEND, SUBTRACT); compression.type is not.
create_topic(adm, "incr", 1, config={"compression.type": "lz4"})
incr = ConfigResource.Type.TOPIC


def incremental(key, value, op):
    res = ConfigResource(incr, "incr", incremental_configs=[ConfigEntry(key, value, incremental_operation=op)])
    return adm.incremental_alter_configs([res])[res]


expect_ok(incremental("compression.type", None, AlterConfigOpType.DELETE), "DELETE compression.type")
entries = described(ConfigResource(incr, "incr"))
check_eq(entries["compression.type"].value, "producer", "compression.type after DELETE")
check(entries["compression.type"].is_default, "compression.type is the default after DELETE")
throttle = "leader.replication.throttled.replicas"
expect_ok(incremental(throttle, "0:0", AlterConfigOpType.APPEND), f"APPEND {throttle}")
expect_ok(incremental(throttle, "1:0", AlterConfigOpType.APPEND), f"APPEND {throttle} again")
expect_ok(incremental(throttle, "0:0", AlterConfigOpType.SUBTRACT), f"SUBTRACT {throttle}")
check_eq(described(ConfigResource(incr, "incr"))[throttle].value, "1:0", f"{throttle} after APPEND/SUBTRACT")
expect_error(incremental(throttle, "x", AlterConfigOpType.APPEND), KafkaError.INVALID_CONFIG, f"APPEND x to {throttle}")
expect_error(
    incremental("compression.type", "gzip", AlterConfigOpType.APPEND),
    KafkaError.INVALID_CONFIG,
    "APPEND to compression.type (not a list)",
)
log("ok: IncrementalAlterConfigs DELETE / APPEND / SUBTRACT on the standard configs")
