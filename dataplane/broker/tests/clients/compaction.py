"""Log compaction seen by real clients (kafka_clients.rs starts the broker with a short
--log-cleaner-backoff-ms).

1. cleanup.policy is a list config: IncrementalAlterConfigs APPENDs and SUBTRACTs it,
   and refuses an empty list, an unknown policy and a bad ratio.
2. confluent-kafka produces keyed values and tombstones to a cleanup.policy=compact
   topic with small segments (segment.bytes, segment.ms) so they seal; once the
   compactor has run, a consumer reading from the beginning sees exactly one record per
   key, the latest one, at the offset it was produced at (the tombstones included while
   their delete.retention.ms lasts); after that retention the tombstones are gone too.
3. The same with batches the producer compresses (lz4) on a topic with
   compression.type=zstd and message.timestamp.type=LogAppendTime: the stored batches
   are zstd, and compaction decodes, filters and re-encodes them. DeleteRecords then
   moves that compacted log's start to a kept record: reads start there, and later
   compaction passes keep it.
"""

import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from e2e import (
    Sent,
    admin,
    check,
    check_eq,
    conf,
    consumer,
    create_topic,
    expect_error,
    expect_ok,
    fail,
    log,
    parse_args,
    payload,
    produce_all,
    watermarks,
)

KEYS = 40
ROUNDS = 12
DELETED_KEYS = 8
DELETE_RETENTION_MS = 6000
# Bounded waits for the compactor (it runs every few hundred ms in this test).
COMPACT_WAIT_S = 60.0

args = parse_args()
adm = admin(args.bootstrap)


def describe(topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return expect_ok(adm.describe_configs([res])[res], f"describe_configs {topic}")


def alter(topic, key, value, op, what):
    res = ConfigResource(
        ResourceType.TOPIC, topic, incremental_configs=[ConfigEntry(key, value, incremental_operation=op)]
    )
    return adm.incremental_alter_configs([res])[res]


# 1. cleanup.policy as a list.
create_topic(adm, "policies", 1)
check_eq(describe("policies")["cleanup.policy"].value, "delete", "default cleanup.policy")
expect_ok(alter("policies", "cleanup.policy", "compact", AlterConfigOpType.APPEND, ""), "APPEND compact")
check_eq(describe("policies")["cleanup.policy"].value, "delete,compact", "after APPEND compact")
expect_ok(alter("policies", "cleanup.policy", "compact", AlterConfigOpType.APPEND, ""), "APPEND compact again")
check_eq(describe("policies")["cleanup.policy"].value, "delete,compact", "APPEND of a listed item")
expect_ok(alter("policies", "cleanup.policy", "delete", AlterConfigOpType.SUBTRACT, ""), "SUBTRACT delete")
check_eq(describe("policies")["cleanup.policy"].value, "compact", "after SUBTRACT delete")
for value, op, what in [
    ("compact", AlterConfigOpType.SUBTRACT, "SUBTRACT of the last policy"),
    ("shred", AlterConfigOpType.APPEND, "APPEND of an unknown policy"),
    ("compact,compact", AlterConfigOpType.SET, "SET of a policy listed twice"),
    ("", AlterConfigOpType.SET, "SET of an empty list"),
]:
    expect_error(alter("policies", "cleanup.policy", value, op, what), KafkaError.INVALID_CONFIG, what)
expect_error(
    alter("policies", "retention.ms", "1", AlterConfigOpType.APPEND, ""),
    KafkaError.INVALID_CONFIG,
    "APPEND to a config that is not a list",
)
for key, bad in [("min.cleanable.dirty.ratio", "1.5"), ("delete.retention.ms", "-5"), ("max.compaction.lag.ms", "0")]:
    expect_error(alter("policies", key, bad, AlterConfigOpType.SET, ""), KafkaError.INVALID_CONFIG, f"{key}={bad}")
check_eq(describe("policies")["cleanup.policy"].value, "compact", "cleanup.policy after refused changes")
log("ok: cleanup.policy APPEND/SUBTRACT and bad values refused")

# 2. Compacted topics read back by a consumer: plain batches; and batches the producer
# compresses with lz4 that the topic recompresses to zstd and stamps with LogAppendTime
# (compaction decodes and re-encodes them), then DeleteRecords on the compacted log.
def scenario(topic, extra_config, producer_extra, delete_records):
    config = {
        "cleanup.policy": "compact",
        "segment.bytes": "16384",
        "segment.ms": "500",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": str(DELETE_RETENTION_MS),
        "min.compaction.lag.ms": "0",
    }
    config.update(extra_config)
    create_topic(adm, topic, 1, config)
    entries = describe(topic)
    check_eq(entries["cleanup.policy"].value, "compact", "cleanup.policy")
    check_eq(entries["min.cleanable.dirty.ratio"].value, "0.01", "min.cleanable.dirty.ratio")

    producer = Producer(conf(args.bootstrap, acks="all", linger_ms=2, **producer_extra))
    sent = []
    for r in range(ROUNDS):
        round_msgs = [Sent(topic, 0, f"key-{k}".encode(), payload(r * KEYS + k, 300)) for k in range(KEYS)]
        produce_all(producer, round_msgs)
        sent += round_msgs
    tombstones = [Sent(topic, 0, f"key-{k}".encode(), None) for k in range(DELETED_KEYS)]
    produce_all(producer, tombstones)
    tombstones_at = time.monotonic()
    sent += tombstones
    # segment.ms passes, then one more record rolls the segment: every record above is
    # in a sealed segment, which the compactor may rewrite (the active one never).
    time.sleep(0.7)
    filler = [Sent(topic, 0, b"filler", b"last")]
    produce_all(producer, filler)
    sent += filler
    latest = {}
    for s in sent:
        latest[s.key] = s
    low, high = watermarks(args.bootstrap, topic, 0)
    check_eq(high, sent[-1].offset + 1, "high watermark after producing")
    log(f"produced {len(sent)} records over {len(latest)} keys ({DELETED_KEYS} deleted), offsets {low}..{high}")


    def read_all():
        """Every record from the beginning up to the high watermark, as (offset, key, value)."""
        c = consumer(args.bootstrap)
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = []
        deadline = time.monotonic() + 20
        try:
            while not got or got[-1][0] < high - 1:
                if time.monotonic() > deadline:
                    fail(f"read {len(got)} records, last {got[-1][0] if got else None}, high watermark {high}")
                for msg in c.consume(num_messages=1000, timeout=0.2):
                    if msg.error() is not None:
                        fail(f"consumer error: {msg.error()}")
                    got.append((msg.offset(), msg.key(), msg.value()))
        finally:
            c.close()
        offsets = [o for o, _, _ in got]
        check(offsets == sorted(set(offsets)), "offsets read back are strictly increasing")
        return got


    def check_record(offset, key, value):
        want = latest.get(key)
        check(want is not None, f"record at {offset} has a key never produced: {key!r}")
        check_eq(value, want.value, f"value of {key!r} at {offset}")
        check_eq(offset, want.offset, f"offset of the latest record of {key!r}")


    # Wait for the compactor: one record per key left.
    deadline = time.monotonic() + COMPACT_WAIT_S
    while True:
        got = read_all()
        keys = [k for _, k, _ in got]
        if len(keys) == len(set(keys)):
            break
        if time.monotonic() > deadline:
            fail(f"after {COMPACT_WAIT_S}s still {len(keys)} records for {len(set(keys))} keys")
        time.sleep(0.3)
    compacted_after = time.monotonic() - tombstones_at
    for offset, key, value in got:
        check_record(offset, key, value)
    live = {k for k, s in latest.items() if s.value is not None}
    check(live <= set(keys), f"keys missing after compaction: {sorted(live - set(keys))[:5]}")
    seen_tombstones = [k for _, k, v in got if v is None]
    if compacted_after < DELETE_RETENTION_MS / 1000 - 1:
        # Read well within delete.retention.ms: the tombstones must still be there.
        check_eq(len(seen_tombstones), DELETED_KEYS, "tombstones kept within delete.retention.ms")
    log(
        f"ok: compacted to {len(got)} records, one per key, latest values at their offsets "
        f"({len(seen_tombstones)} tombstones, read {compacted_after:.1f}s after producing them)"
    )

    # After delete.retention.ms the tombstones go as well.
    deadline = time.monotonic() + COMPACT_WAIT_S + DELETE_RETENTION_MS / 1000
    while True:
        got = read_all()
        if all(v is not None for _, _, v in got):
            break
        if time.monotonic() > deadline:
            fail(f"tombstones still present {time.monotonic() - tombstones_at:.0f}s after producing them")
        time.sleep(0.3)
    check(time.monotonic() - tombstones_at >= DELETE_RETENTION_MS / 1000, "tombstones removed before their retention")
    for offset, key, value in got:
        check_record(offset, key, value)
    check_eq(sorted(k for _, k, _ in got), sorted(live), "keys left once tombstones expired")
    log(f"ok: tombstones gone after delete.retention.ms; {len(got)} records, exactly the live keys")
    if not delete_records:
        return
    # DeleteRecords on the compacted log: the log start moves to a kept record's offset
    # and reads start there; later compaction passes keep it.
    start = got[2][0]
    tp = TopicPartition(topic, 0, start)
    done = expect_ok(adm.delete_records([tp])[tp], f"delete_records {topic} to {start}")
    check_eq(done.low_watermark, start, "low watermark after DeleteRecords on a compacted log")
    time.sleep(1.0)  # a few compactor passes (--log-cleaner-backoff-ms 200)
    check_eq(watermarks(args.bootstrap, topic, 0), (start, high), "watermarks after DeleteRecords and more passes")
    after = read_all()
    check_eq(after, [g for g in got if g[0] >= start], "records read from the beginning after DeleteRecords")
    log(f"ok: DeleteRecords to {start} on the compacted log; reads start there")


scenario("compacted", {}, {}, delete_records=False)
scenario(
    "compacted-zstd",
    {"compression.type": "zstd", "message.timestamp.type": "LogAppendTime"},
    {"compression.type": "lz4"},
    delete_records=True,
)
