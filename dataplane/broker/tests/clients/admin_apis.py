"""Admin APIs tools call. --phase first: DeleteRecords with confluent-kafka (low
watermark answered, consumers start there, -1 = the high watermark, an offset beyond
it OFFSET_OUT_OF_RANGE, an unknown partition UNKNOWN_TOPIC_OR_PARTITION);
DescribeProducers, DescribeLogDirs and AlterReplicaLogDirs with kafka-python's
KafkaAdminClient. --phase restarted (the same data directory after a restart): the log
start offsets DeleteRecords set are still there."""

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer, TopicPartition
from kafka import KafkaProducer
from kafka import TopicPartition as KTopicPartition
from kafka.admin import KafkaAdminClient

from e2e import (
    WAIT_S,
    Sent,
    admin,
    check,
    check_eq,
    conf,
    consume,
    create_topic,
    error_code,
    expect_ok,
    fail,
    log,
    parse_args,
    produce_all,
    watermarks,
)

args = parse_args(("--phase", {"required": True}), ("--data-dir", {"required": True}))
TOPIC = "trim"

if args.phase == "restarted":
    check_eq(watermarks(args.bootstrap, TOPIC, 0), (4, 10), "trim/0 watermarks after the restart")
    check_eq(watermarks(args.bootstrap, TOPIC, 1), (10, 10), "trim/1 watermarks after the restart")
    got = consume(args.bootstrap, [(TOPIC, 0, OFFSET_BEGINNING)], 6, auto_offset_reset="earliest")
    check_eq(sorted(g.offset for g in got), list(range(4, 10)), "offsets read from the beginning after the restart")
    log("ok: DeleteRecords' log start offsets survived the restart")
    raise SystemExit(0)

adm = admin(args.bootstrap)
create_topic(adm, TOPIC, 2)
produce_all(
    Producer(conf(args.bootstrap, acks="all", linger_ms=0, batch_num_messages=1)),
    [Sent(TOPIC, p, f"k{i}".encode(), f"v{i}".encode()) for p in range(2) for i in range(10)],
)

# DeleteRecords.
fs = adm.delete_records([TopicPartition(TOPIC, 0, 4), TopicPartition(TOPIC, 1, -1)], request_timeout=WAIT_S)
for tp, f in fs.items():
    r = expect_ok(f, f"delete_records {tp}")
    check_eq(r.low_watermark, 4 if tp.partition == 0 else 10, f"low watermark of {tp}")
check_eq(watermarks(args.bootstrap, TOPIC, 0), (4, 10), "trim/0 watermarks")
check_eq(watermarks(args.bootstrap, TOPIC, 1), (10, 10), "trim/1 watermarks (deleted to the high watermark)")
got = consume(args.bootstrap, [(TOPIC, 0, OFFSET_BEGINNING)], 6, auto_offset_reset="earliest")
check_eq(sorted(g.offset for g in got), list(range(4, 10)), "offsets read from the beginning")
log("ok: delete_records moved the log start; consumers start there")

# Deleting below the current start changes nothing; beyond the high watermark is refused.
r = expect_ok(adm.delete_records([TopicPartition(TOPIC, 0, 2)])[TopicPartition(TOPIC, 0, 2)], "delete_records below start")
check_eq(r.low_watermark, 4, "low watermark after deleting below the start")
for tp, code in [(TopicPartition(TOPIC, 0, 11), KafkaError.OFFSET_OUT_OF_RANGE)]:
    f = adm.delete_records([tp], request_timeout=WAIT_S)[tp]
    try:
        f.result(timeout=WAIT_S)
        fail(f"delete_records {tp} succeeded")
    except Exception as exc:  # noqa: BLE001
        check_eq(error_code(exc), code, f"delete_records {tp} error ({exc!r})")
    log(f"ok: delete_records {tp} -> {KafkaError(code).name()}")
check_eq(watermarks(args.bootstrap, TOPIC, 0), (4, 10), "trim/0 watermarks after refused deletes")

# DescribeProducers: an idempotent kafka-python producer shows up with its epoch and
# last sequence (10 records: sequences 0..9).
kadm = KafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=int(WAIT_S * 1000))
# A partition the topic does not have, sent to the broker directly (librdkafka refuses
# it on the client side, having no leader for it).
try:
    kadm.delete_records({KTopicPartition(TOPIC, 7): 1}, partition_leader_id=0)
    fail("delete_records of trim/7 succeeded")
except Exception as exc:  # noqa: BLE001
    check_eq(getattr(exc, "errno", None), 3, f"delete_records trim/7 error ({exc!r})")
log("ok: delete_records trim/7 (no such partition) -> UNKNOWN_TOPIC_OR_PARTITION")
create_topic(adm, "idem", 1)
kp = KafkaProducer(bootstrap_servers=args.bootstrap, enable_idempotence=True, acks="all", linger_ms=0)
for i in range(10):
    kp.send("idem", value=f"m{i}".encode(), partition=0).get(timeout=WAIT_S)
kp.flush()
kp.close()
states = kadm.describe_producers([KTopicPartition("idem", 0)])
state = states[KTopicPartition("idem", 0)]
producers = list(state.active_producers)
check_eq(len(producers), 1, f"active producers of idem/0: {producers}")
p = producers[0]
check(p.producer_id >= 0, f"producer id {p.producer_id}")
check_eq((p.producer_epoch, p.last_sequence), (0, 9), "producer epoch and last sequence")
empty = kadm.describe_producers([KTopicPartition(TOPIC, 0)])[KTopicPartition(TOPIC, 0)]
check_eq(list(empty.active_producers), [], "producers of a topic written without idempotence")
log(f"ok: describe_producers: id {p.producer_id} epoch {p.producer_epoch} last sequence {p.last_sequence}")

# DescribeLogDirs: the data directory with each partition's size and the file system's space.
dirs = kadm.describe_log_dirs()
log(f"describe_log_dirs: {dirs!r}"[:600])
check_eq(len(dirs), 1, "brokers answering describe_log_dirs")
check_eq(dirs[0]["broker"], 0, "broker of describe_log_dirs")
log_dirs = dirs[0]["log_dirs"]
check_eq([d["log_dir"] for d in log_dirs], [args.data_dir], "log dirs")
d = log_dirs[0]
check_eq(d["error_code"], 0, "log dir error")
check(0 < d["usable_bytes"] <= d["total_bytes"], f"usable {d['usable_bytes']} of total {d['total_bytes']} bytes")
sizes = {(t["name"], p["partition_index"]): p for t in d["topics"] for p in t["partitions"]}
check_eq(sorted(sizes), [("idem", 0), (TOPIC, 0), (TOPIC, 1)], "partitions in the log dir (internal topic left out)")
for where, p in sizes.items():
    check(p["partition_size"] > 0, f"size of {where}: {p}")
    check_eq((p["offset_lag"], p["is_future_key"]), (0, False), f"lag and future flag of {where}")
only = kadm.describe_log_dirs(topic_partitions={TOPIC: [1]})[0]["log_dirs"][0]["topics"]
check_eq([(t["name"], [p["partition_index"] for p in t["partitions"]]) for t in only], [(TOPIC, [1])], "asked for trim/1 only")
log("ok: describe_log_dirs lists the data directory and its partitions")

# AlterReplicaLogDirs: another directory does not exist here; the data directory is a no-op.
answers = kadm.alter_replica_log_dirs({(TOPIC, 0, 0): "/elsewhere", ("idem", 0, 0): args.data_dir, ("nope", 0, 0): args.data_dir})
by_topic = {k[0] if isinstance(k, tuple) else k.topic: v for k, v in answers.items()}
log(f"alter_replica_log_dirs: { {t: getattr(e, '__name__', e) for t, e in by_topic.items()} }")
check_eq(getattr(by_topic[TOPIC], "errno", None), 57, "a move to another directory: LOG_DIR_NOT_FOUND")
check_eq(getattr(by_topic["idem"], "errno", None), 0, "a 'move' to the data directory: no error")
check_eq(getattr(by_topic["nope"], "errno", None), 3, "an unknown topic: UNKNOWN_TOPIC_OR_PARTITION")
log("ok: alter_replica_log_dirs answered per partition")
kadm.close()
