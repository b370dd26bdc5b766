"""confluent-kafka AdminClient against ferrolog: create (with configs), the create
errors Kafka defines, CreatePartitions, DescribeConfigs, AlterConfigs (whole set),
IncrementalAlterConfigs (set and delete), DeleteTopics, and re-creating a deleted
name as a new, empty topic."""

import time

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from e2e import (
    WAIT_S,
    Sent,
    admin,
    check,
    check_eq,
    compare,
    conf,
    consume,
    create_topic,
    expect_error,
    expect_ok,
    fail,
    log,
    parse_args,
    produce_all,
    topic_partitions,
    wait_for_topic,
    watermarks,
)

SUPPORTED_CONFIGS = [
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "cleanup.policy",
    "ferrolog.durability",
]

args = parse_args()
adm = admin(args.bootstrap)


def create(*topics):
    return adm.create_topics(list(topics), operation_timeout=10, request_timeout=WAIT_S)


def describe(topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return expect_ok(adm.describe_configs([res])[res], f"describe_configs {topic}")


def config_value(topic, name):
    entries = describe(topic)
    check(name in entries, f"describe_configs {topic} lacks {name}; has {sorted(entries)}")
    return entries[name].value


# Two topics in one request, one with explicit configs, one with the default replication.
fs = create(
    NewTopic(
        "orders",
        num_partitions=3,
        replication_factor=1,
        config={"retention.ms": "3600000", "segment.bytes": "1048576", "ferrolog.durability": "direct"},
    ),
    NewTopic("events", num_partitions=2, replication_factor=-1),
)
expect_ok(fs["orders"], "create orders (3 partitions, configs)")
expect_ok(fs["events"], "create events (2 partitions, replication -1)")
wait_for_topic(adm, "orders", 3)
wait_for_topic(adm, "events", 2)
md = adm.list_topics(timeout=10)
check_eq([b.id for b in md.brokers.values()], [0], "broker ids in metadata")
log("ok: created orders(3) and events(2); metadata shows leader 0, replicas [0]")

# The errors Kafka answers for bad creates.
expect_error(create(NewTopic("orders", 3, 1))["orders"], KafkaError.TOPIC_ALREADY_EXISTS, "create orders again")
expect_error(create(NewTopic("bad/name", 1, 1))["bad/name"], KafkaError.TOPIC_EXCEPTION, "create 'bad/name'")
expect_error(create(NewTopic("..", 1, 1))[".."], KafkaError.TOPIC_EXCEPTION, "create '..'")
expect_error(create(NewTopic("x" * 250, 1, 1))["x" * 250], KafkaError.TOPIC_EXCEPTION, "create a 250-char name")
expect_error(
    create(NewTopic("three-replicas", 1, 3))["three-replicas"],
    KafkaError.INVALID_REPLICATION_FACTOR,
    "create with replication factor 3 on one node",
)
expect_error(
    create(NewTopic("compacted", 1, 1, config={"cleanup.policy": "compact,shred"}))["compacted"],
    KafkaError.INVALID_CONFIG,
    "create with cleanup.policy=compact,shred",
)
expect_error(
    create(NewTopic("bad-config", 1, 1, config={"retention.ms": "soon"}))["bad-config"],
    KafkaError.INVALID_CONFIG,
    "create with retention.ms=soon",
)
for name in ["bad/name", "..", "three-replicas", "compacted", "bad-config"]:
    check(topic_partitions(adm, name) is None, f"a rejected create left topic {name!r} behind")

# CreatePartitions: grow, refuse to shrink; the new partition takes writes.
expect_ok(adm.create_partitions([NewPartitions("orders", 5)])["orders"], "grow orders to 5 partitions")
wait_for_topic(adm, "orders", 5)
expect_error(
    adm.create_partitions([NewPartitions("orders", 2)])["orders"],
    KafkaError.INVALID_PARTITIONS,
    "shrink orders to 2 partitions",
)
expect_error(
    adm.create_partitions([NewPartitions("no-such-topic", 4)])["no-such-topic"],
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    "grow a topic that does not exist",
)
sent = [Sent("orders", 4, f"k{i}".encode(), f"v{i}".encode()) for i in range(3)]
produce_all(Producer(conf(args.bootstrap, acks="all")), sent)
compare(consume(args.bootstrap, [("orders", 4, 0)], 3), sent)
log("ok: orders grew to 5 partitions and partition 4 takes writes")

# DescribeConfigs: every supported key, explicit values as set, defaults otherwise.
entries = describe("orders")
for name in SUPPORTED_CONFIGS:
    check(name in entries, f"describe_configs orders lacks {name}; has {sorted(entries)}")
check_eq(entries["retention.ms"].value, "3600000", "orders retention.ms")
check_eq(entries["segment.bytes"].value, "1048576", "orders segment.bytes")
check_eq(entries["ferrolog.durability"].value, "direct", "orders ferrolog.durability")
check_eq(entries["cleanup.policy"].value, "delete", "orders cleanup.policy")
check(not entries["retention.ms"].is_default, "orders retention.ms reported as a default")
default_retention_ms = describe("events")["retention.ms"].value
check(default_retention_ms != "3600000", "events shares orders' retention.ms")
log(f"ok: describe_configs orders ({len(entries)} entries); events retention.ms={default_retention_ms}")

# AlterConfigs replaces the topic's whole set: what it does not name reverts to default.
res = ConfigResource(ResourceType.TOPIC, "orders", set_config={"retention.ms": "7200000"})
expect_ok(adm.alter_configs([res])[res], "alter_configs orders retention.ms=7200000")
entries = describe("orders")
check_eq(entries["retention.ms"].value, "7200000", "orders retention.ms after alter_configs")
check(
    entries["segment.bytes"].value != "1048576",
    "AlterConfigs must reset configs it does not name (segment.bytes is still 1048576)",
)
log("ok: alter_configs set retention.ms and reset segment.bytes")

# IncrementalAlterConfigs: SET two keys, then DELETE one (back to its default).
SET, DELETE = AlterConfigOpType.SET, AlterConfigOpType.DELETE
res = ConfigResource(
    ResourceType.TOPIC,
    "orders",
    incremental_configs=[
        ConfigEntry("retention.ms", "1800000", incremental_operation=SET),
        ConfigEntry("max.message.bytes", "2097152", incremental_operation=SET),
    ],
)
expect_ok(adm.incremental_alter_configs([res])[res], "incremental SET retention.ms, max.message.bytes")
entries = describe("orders")
check_eq(entries["retention.ms"].value, "1800000", "orders retention.ms after incremental SET")
check_eq(entries["max.message.bytes"].value, "2097152", "orders max.message.bytes after incremental SET")
res = ConfigResource(
    ResourceType.TOPIC,
    "orders",
    incremental_configs=[ConfigEntry("retention.ms", None, incremental_operation=DELETE)],
)
expect_ok(adm.incremental_alter_configs([res])[res], "incremental DELETE retention.ms")
entries = describe("orders")
check_eq(entries["retention.ms"].value, default_retention_ms, "orders retention.ms after incremental DELETE")
check_eq(entries["max.message.bytes"].value, "2097152", "max.message.bytes kept by an incremental DELETE of another key")
res = ConfigResource(
    ResourceType.TOPIC,
    "orders",
    incremental_configs=[ConfigEntry("cleanup.policy", "shred", incremental_operation=SET)],
)
expect_error(adm.incremental_alter_configs([res])[res], KafkaError.INVALID_CONFIG, "incremental SET cleanup.policy=shred")
res = ConfigResource(
    ResourceType.TOPIC,
    "orders",
    incremental_configs=[ConfigEntry("retention.ms", "soon", incremental_operation=SET)],
)
expect_error(adm.incremental_alter_configs([res])[res], KafkaError.INVALID_CONFIG, "incremental SET retention.ms=soon")
check_eq(config_value("orders", "cleanup.policy"), "delete", "cleanup.policy after a refused alter")
log("ok: incremental_alter_configs SET/DELETE")

# DeleteTopics: gone from metadata, a second delete fails, the other topic stays.
expect_ok(adm.delete_topics(["orders"], operation_timeout=10)["orders"], "delete orders")
deadline = time.monotonic() + WAIT_S
while topic_partitions(adm, "orders") is not None:
    if time.monotonic() > deadline:
        fail("orders still listed after delete_topics")
    time.sleep(0.1)
expect_error(adm.delete_topics(["orders"])["orders"], KafkaError.UNKNOWN_TOPIC_OR_PART, "delete orders again")
check_eq(len(topic_partitions(adm, "events") or {}), 2, "events partitions after deleting orders")
log("ok: delete_topics removed orders")

# A re-created name is a new topic: the old data is gone.
create_topic(adm, "orders", 5)
check_eq(watermarks(args.bootstrap, "orders", 4), (0, 0), "watermarks of re-created orders/4")
log("ok: re-created orders is empty")
