"""ListOffsets through confluent-kafka: messages produced with explicit create
timestamps in three groups (one flush, so one or more batches, per group);
offsets_for_times must return the first offset whose timestamp is >= the query
(group starts, inside a group, before everything, after everything), the
timestamps must come back on fetch, and get_watermark_offsets and the admin
list_offsets must report the earliest and latest offsets."""

import time

from confluent_kafka import TIMESTAMP_CREATE_TIME, Producer, TopicPartition
from confluent_kafka.admin import OffsetSpec

from e2e import (
    Sent,
    admin,
    check_eq,
    compare,
    conf,
    consume_all,
    consumer,
    create_topic,
    expect_ok,
    log,
    parse_args,
    produce_all,
    watermarks,
)

TOPIC = "timed"
PARTITIONS = 2
GROUP_SIZE = 10
# An hour ago: recent enough that no retention check could delete the messages.
T0 = int(time.time() * 1000) - 3_600_000
GROUP_STARTS = [T0, T0 + 60_000, T0 + 120_000]

args = parse_args()
adm = admin(args.bootstrap)
create_topic(adm, TOPIC, PARTITIONS)

producer = Producer(conf(args.bootstrap, acks="all", linger_ms=5))
sent = []
for start in GROUP_STARTS:
    group = []
    for p in range(PARTITIONS):
        group += [Sent(TOPIC, p, f"k{i}".encode(), f"{start}+{i}".encode(), timestamp=start + i) for i in range(GROUP_SIZE)]
    produce_all(producer, group)
    sent += group
got = consume_all(args.bootstrap, TOPIC, PARTITIONS, len(sent))
compare(got, sent, check_timestamps=True)
for g in got:
    check_eq(g.timestamp[0], TIMESTAMP_CREATE_TIME, f"timestamp type of {g!r}")
log(f"ok: {len(sent)} messages with explicit timestamps round-trip")

# (query timestamp, expected offset): -1 means no message is that late.
queries = []
for gi, start in enumerate(GROUP_STARTS):
    queries.append((start, gi * GROUP_SIZE))
    queries.append((start + 3, gi * GROUP_SIZE + 3))
    queries.append((start + GROUP_SIZE + 1000, (gi + 1) * GROUP_SIZE if gi + 1 < len(GROUP_STARTS) else -1))
queries.append((T0 - 86_400_000, 0))
queries.append((GROUP_STARTS[-1] + 3_600_000, -1))

c = consumer(args.bootstrap)
try:
    for p in range(PARTITIONS):
        for ts, want in queries:
            [res] = c.offsets_for_times([TopicPartition(TOPIC, p, ts)], timeout=10)
            check_eq(res.error, None, f"offsets_for_times {TOPIC}/{p} ts={ts} error")
            check_eq(res.offset, want, f"offsets_for_times {TOPIC}/{p} ts={ts} (T0{ts - T0:+d} ms)")
finally:
    c.close()
log(f"ok: offsets_for_times answered {len(queries)} queries per partition")

end = len(GROUP_STARTS) * GROUP_SIZE
for p in range(PARTITIONS):
    check_eq(watermarks(args.bootstrap, TOPIC, p), (0, end), f"watermarks of {TOPIC}/{p}")

# The same through the admin client's ListOffsets (earliest, latest, max timestamp, by time).
specs = {
    "earliest": (OffsetSpec.earliest(), 0),
    "latest": (OffsetSpec.latest(), end),
    "for_timestamp(group 2)": (OffsetSpec.for_timestamp(GROUP_STARTS[1]), GROUP_SIZE),
}
for name, (spec, want) in specs.items():
    tp = TopicPartition(TOPIC, 1)
    res = expect_ok(adm.list_offsets({tp: spec})[tp], f"admin list_offsets {name}")
    check_eq(res.offset, want, f"admin list_offsets {name} offset")
log("ok: watermarks and admin list_offsets earliest/latest/by time")
