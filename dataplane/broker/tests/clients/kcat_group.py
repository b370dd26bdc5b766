"""kcat as a balanced consumer (`kcat -G GROUP TOPIC`, librdkafka's KafkaConsumer
with its defaults: auto commit on, offsets committed on close). The first run
(auto.offset.reset=earliest, so the new group starts at the beginning; not -o, which
in -G mode overrides the committed offsets; -e, so kcat exits once every assigned
partition is at its end) reads every message of a 3-partition topic
exactly once and commits the ends. After more messages are produced, a second run
of the same group reads exactly the new ones, nothing old, and commits the new
ends; a third run reads nothing and exits."""

import subprocess

from confluent_kafka import Producer

from e2e import (
    Sent,
    admin,
    check_eq,
    committed_offsets,
    conf,
    create_topic,
    fail,
    log,
    parse_args,
    produce_all,
)

TOPIC = "kcat-group"
GROUP = "kcat-group-id"
PARTITIONS = 3
TIMEOUT_S = 30

args = parse_args()
B = args.bootstrap
create_topic(admin(B), TOPIC, PARTITIONS)


def produce(first, count):
    """Messages first..first+count-1, message i to partition i % PARTITIONS."""
    produce_all(
        Producer(conf(B, acks="all")),
        [Sent(TOPIC, i % PARTITIONS, None, f"message {i}".encode()) for i in range(first, first + count)],
    )


def kcat_group():
    """[(partition, offset, value)] one `kcat -G` run printed."""
    cmd = [
        "kcat", "-b", B, "-G", GROUP, "-e", "-q", "-f", "%p:%o:%s\n",
        "-X", "auto.offset.reset=earliest",
        "-X", "socket.timeout.ms=10000",
        "-X", "session.timeout.ms=6000",
        "-X", "heartbeat.interval.ms=500",
        TOPIC,
    ]
    try:
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        fail("kcat is not installed (tools/setup.sh installs it)")
    except subprocess.TimeoutExpired as e:
        fail(f"{' '.join(cmd)} did not exit within {TIMEOUT_S}s (-e); stdout {e.stdout!r}, stderr {e.stderr!r}")
    if out.returncode != 0:
        fail(f"{' '.join(cmd)} exited {out.returncode}; stderr: {out.stderr.decode(errors='replace')}")
    records = []
    for line in out.stdout.decode().splitlines():
        p, o, v = line.split(":", 2)
        records.append((int(p), int(o), v))
    return records


def expect(records, first, count, what):
    """`records` must be messages first..first+count-1, each once, in order per partition."""
    expected = sorted((i % PARTITIONS, i // PARTITIONS, f"message {i}") for i in range(first, first + count))
    by_partition = {}
    for p, o, v in records:
        by_partition.setdefault(p, []).append(o)
    for p, offsets in by_partition.items():
        check_eq(offsets, sorted(offsets), f"{what}: order of the offsets read from {TOPIC}/{p}")
    check_eq(sorted(records), expected, f"{what}: (partition, offset, value) read")


N = 90
produce(0, N)
expect(kcat_group(), 0, N, "first kcat -G run")
check_eq(committed_offsets(B, GROUP, TOPIC, range(PARTITIONS)), {p: N // PARTITIONS for p in range(PARTITIONS)},
         "committed offsets after the first kcat -G run")
log(f"ok: kcat -G read all {N} messages once and committed the ends")

M = 30
produce(N, M)
expect(kcat_group(), N, M, "second kcat -G run")
check_eq(committed_offsets(B, GROUP, TOPIC, range(PARTITIONS)),
         {p: (N + M) // PARTITIONS for p in range(PARTITIONS)}, "committed offsets after the second kcat -G run")
log(f"ok: a second kcat -G run of {GROUP} read exactly the {M} new messages and committed the new ends")

check_eq(kcat_group(), [], "third kcat -G run (nothing new)")
log("ok: a third kcat -G run read nothing")
