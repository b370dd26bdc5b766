"""min.insync.replicas with librdkafka on one broker: the topic config is accepted (and a
bad value refused with INVALID_CONFIG), DescribeConfigs shows it, an acks=all producer
is refused NOT_ENOUGH_REPLICAS while it is above the one replica, an acks=1 producer is
not, and after IncrementalAlterConfigs lowers it acks=all delivers. A consumer then reads
everything back: librdkafka's fetches carry the partition's leader epoch (KIP-320), which
the broker checks."""

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from e2e import (
    WAIT_S,
    Sent,
    admin,
    check_eq,
    compare,
    conf,
    consume_all,
    create_topic,
    expect_error,
    expect_ok,
    fail,
    log,
    parse_args,
    produce_all,
)

TOPIC = "min-insync"
KEY = "min.insync.replicas"

args = parse_args()
adm = admin(args.bootstrap)

fs = adm.create_topics(
    [NewTopic("min-insync-bad", num_partitions=1, replication_factor=1, config={KEY: "0"})],
    request_timeout=WAIT_S,
)
expect_error(fs["min-insync-bad"], KafkaError.INVALID_CONFIG, "create with min.insync.replicas=0")
create_topic(adm, TOPIC, 1, config={KEY: "2"})

resource = ConfigResource(ConfigResource.Type.TOPIC, TOPIC)
described = expect_ok(adm.describe_configs([resource])[resource], "describe configs")
check_eq(described[KEY].value, "2", f"{KEY} described")
log(f"ok: {KEY}=2 accepted and described")

# retries=0: NOT_ENOUGH_REPLICAS is retriable, librdkafka would retry until its timeout.
refused = []
strict = Producer(conf(args.bootstrap, acks="all", retries=0, enable_idempotence=False))
strict.produce(TOPIC, partition=0, value=b"refused", on_delivery=lambda err, _msg: refused.append(err))
strict.flush(WAIT_S)
if len(refused) != 1 or refused[0] is None or refused[0].code() != KafkaError.NOT_ENOUGH_REPLICAS:
    fail(f"acks=all with {KEY}=2 on one replica: expected NOT_ENOUGH_REPLICAS, got {refused!r}")
log("ok: acks=all refused with NOT_ENOUGH_REPLICAS")

sent = [Sent(TOPIC, 0, b"k1", b"acks=1 is not checked")]
produce_all(Producer(conf(args.bootstrap, acks="1")), sent)
log("ok: acks=1 delivered")

alter = ConfigResource(
    ConfigResource.Type.TOPIC,
    TOPIC,
    incremental_configs=[ConfigEntry(KEY, "1", incremental_operation=AlterConfigOpType.SET)],
)
expect_ok(adm.incremental_alter_configs([alter])[alter], f"set {KEY}=1")
batch = [Sent(TOPIC, 0, b"k2", b"acks=all after lowering")]
produce_all(Producer(conf(args.bootstrap, acks="all")), batch)
sent += batch
log("ok: acks=all delivered once lowered to 1")

got = consume_all(args.bootstrap, TOPIC, 1, len(sent))
compare(got, sent)
log(f"ok: {len(sent)} messages read back")
