"""confluent-kafka producers, one per compression codec (none, gzip, snappy, lz4,
zstd), acks=all, over four partitions: keys (some null, some empty), values (some
null, some empty, one of 100 KiB per codec), headers (repeated names, a null value).
A consumer assigned from the beginning must read back every message byte for byte,
in order, at contiguous offsets; one assigned mid-partition must start exactly there."""

from confluent_kafka import TIMESTAMP_CREATE_TIME, Producer

from e2e import (
    Sent,
    admin,
    check_eq,
    compare,
    conf,
    consume,
    consume_all,
    create_topic,
    log,
    parse_args,
    payload,
    produce_all,
    watermarks,
)

TOPIC = "codecs"
PARTITIONS = 4
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
PER_CODEC = 64
BIG = 100 * 1024

args = parse_args()
create_topic(admin(args.bootstrap), TOPIC, PARTITIONS)


def message(codec_index, i):
    n = codec_index * PER_CODEC + i
    if n % 7 == 0:
        key = None
    elif n % 11 == 0:
        key = b""
    else:
        key = f"key-{n}-\x00\xff".encode("latin-1")
    if n % 13 == 0:
        value = None
    elif n % 17 == 0:
        value = b""
    elif i == 5:
        value = payload(n, BIG)
    else:
        value = payload(n, 1 + (n * 37) % 700)
    if n % 3 == 0:
        headers = []
    else:
        headers = [("trace", f"t{n}".encode()), ("dup", b"a"), ("dup", b"\x00b")]
        if n % 5 == 0:
            headers.append(("null-value", None))
    return Sent(TOPIC, n % PARTITIONS, key, value, headers)


sent = []
for ci, codec in enumerate(CODECS):
    batch = [message(ci, i) for i in range(PER_CODEC)]
    producer = Producer(
        conf(args.bootstrap, acks="all", compression_type=codec, linger_ms=20, message_max_bytes=1000000)
    )
    produce_all(producer, batch)
    log(f"ok: produced {len(batch)} messages with compression.type={codec}")
    sent.extend(batch)

got = consume_all(args.bootstrap, TOPIC, PARTITIONS, len(sent))
compare(got, sent)
for g in got:
    check_eq(g.timestamp[0], TIMESTAMP_CREATE_TIME, f"timestamp type of {g!r}")
log(f"ok: consumed {len(got)} messages byte-exact, in order, offsets contiguous")

for p in range(PARTITIONS):
    count = sum(1 for s in sent if s.partition == p)
    check_eq(watermarks(args.bootstrap, TOPIC, p), (0, count), f"watermarks of {TOPIC}/{p}")

# Fetching from the middle of a (compressed) batch starts at exactly that offset.
tail = [s for s in sent if s.partition == 1][37:]
got = consume(args.bootstrap, [(TOPIC, 1, 37)], len(tail))
check_eq(sorted(g.offset for g in got)[0], 37, "first offset consumed from offset 37")
check_eq([g.value for g in sorted(got, key=lambda g: g.offset)], [s.value for s in tail], "values from offset 37")
log("ok: watermarks match and a mid-batch start offset is honoured")
