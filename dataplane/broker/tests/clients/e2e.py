"""Helpers shared by the end-to-end client scripts that ../kafka_clients.rs runs.

Every script takes --bootstrap HOST:PORT (one ferrolog broker started for that test
alone), checks one scenario with a real Kafka client, prints what it measured, and
exits 0; on the first mismatch it prints "FAIL: ..." to stderr and exits 1. Every
wait is bounded, so a broker that never answers fails the script instead of hanging
it. consumer() never joins a group: it assign()s explicit partitions at explicit
offsets and never commits. The consumer-group scripts (group_*.py and others that
say so) use group_consumer(), committed() and friends below. A script with threads
calls exit_on_thread_exception() and fails from a thread with fail_now().
"""

import argparse
import os
import random
import socket
import struct
import sys
import threading
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

# Upper bound on any single wait for the broker (a create, a flush, a consume).
WAIT_S = 20.0


def _fail_on_exception(kind, exc, tb):
    """An exception the script did not expect is a failure too: traceback, then a FAIL line."""
    sys.__excepthook__(kind, exc, tb)
    print(f"FAIL: unexpected {kind.__name__}: {exc}", file=sys.stderr, flush=True)


sys.excepthook = _fail_on_exception


def log(msg):
    print(msg, flush=True)


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def fail_now(msg):
    """fail() for any thread: sys.exit() outside the main thread would end only that
    thread, so this prints the FAIL line and ends the whole process at once."""
    sys.stdout.flush()
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    os._exit(1)


def exit_on_thread_exception():
    """An exception that ends a thread (or escapes a client callback run on it) fails
    the whole script at once, instead of leaving the main thread waiting on it."""

    def hook(a):
        threading.__excepthook__(a)
        fail_now(f"unexpected {a.exc_type.__name__} in thread {a.thread.name if a.thread else '?'}: {a.exc_value}")

    threading.excepthook = hook


def short(value, limit=120):
    """repr() of a value, cut to `limit` characters (100 KiB values stay readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} bytes)"


def check(cond, msg):
    if not cond:
        fail(msg)


def check_eq(actual, expected, what):
    if actual != expected:
        fail(f"{what}: expected {short(expected)}, got {short(actual)}")


def parse_args(*extra):
    """--bootstrap plus `extra` as (flag, argparse kwargs) pairs."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    for flag, kwargs in extra:
        parser.add_argument(flag, **kwargs)
    return parser.parse_args()


def payload(seed, size):
    """Deterministic bytes: a random half (incompressible) and a repetitive half."""
    rng = random.Random(seed)
    half = size // 2
    return rng.randbytes(half) + bytes([seed % 251]) * (size - half)


def librdkafka_keys(extra):
    """Python keyword names to librdkafka property names (linger_ms -> linger.ms); the
    Python callbacks (stats_cb, error_cb) keep theirs."""
    return {k if k.endswith("_cb") else k.replace("_", "."): v for k, v in extra.items()}


def conf(bootstrap, **extra):
    """Client configuration shared by every librdkafka handle of the scripts."""
    c = {
        "bootstrap.servers": bootstrap,
        "client.id": os.path.basename(sys.argv[0]),
        "socket.timeout.ms": 10000,
    }
    c.update(librdkafka_keys(extra))
    return c


def admin(bootstrap):
    return AdminClient(conf(bootstrap))


def error_code(exc):
    """The KafkaError code carried by a KafkaException (or None)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].code()
    return None


def expect_ok(future, what):
    try:
        return future.result(timeout=WAIT_S)
    except Exception as exc:  # noqa: BLE001 - any failure is the message
        fail(f"{what}: expected success, got {exc!r}")


def expect_error(future, code, what):
    """The future must fail with KafkaError `code` (e.g. KafkaError.TOPIC_ALREADY_EXISTS)."""
    try:
        result = future.result(timeout=WAIT_S)
    except Exception as exc:  # noqa: BLE001
        got = error_code(exc)
        if got != code:
            fail(f"{what}: expected error {KafkaError(code).name()} ({code}), got {exc!r}")
        log(f"ok: {what} -> {KafkaError(code).name()}")
        return
    fail(f"{what}: expected error {KafkaError(code).name()} ({code}), but it succeeded: {result!r}")


def topic_partitions(adm, topic):
    """Partition ids of `topic` in the broker's metadata, or None if it is absent."""
    md = adm.list_topics(timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return t.partitions


def wait_for_topic(adm, topic, partitions):
    """Waits until metadata shows `topic` with `partitions` partitions, each led by node 0."""
    deadline = time.monotonic() + WAIT_S
    seen = None
    while time.monotonic() < deadline:
        seen = topic_partitions(adm, topic)
        if seen is not None and len(seen) == partitions:
            for pid, p in seen.items():
                check_eq(p.leader, 0, f"leader of {topic}/{pid}")
                check_eq(list(p.replicas), [0], f"replicas of {topic}/{pid}")
                check_eq(list(p.isrs), [0], f"ISR of {topic}/{pid}")
            return
        time.sleep(0.1)
    fail(f"metadata never showed {topic} with {partitions} partitions; last seen {seen!r}")


def create_topic(adm, topic, partitions, config=None):
    fs = adm.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=10,
        request_timeout=WAIT_S,
    )
    expect_ok(fs[topic], f"create topic {topic}")
    wait_for_topic(adm, topic, partitions)


class Sent:
    """One message as produced, and where the broker said it landed."""

    def __init__(self, topic, partition, key, value, headers=None, timestamp=None):
        self.topic = topic
        self.partition = partition
        self.key = key
        self.value = value
        self.headers = headers or []
        self.timestamp = timestamp
        self.offset = None


def produce_all(producer, msgs, expect_offsets=True):
    """Produces `msgs` (Sent) in order and flushes; every delivery must succeed.

    With expect_offsets (acks 1/all) each Sent gets the offset of its delivery report;
    with acks=0 the broker never answers, so librdkafka reports no offset.
    """
    errors = []

    def report(sent):
        def cb(err, msg):
            if err is not None:
                errors.append(f"{sent.topic}/{sent.partition} key={short(sent.key)}: {err}")
            elif msg.partition() != sent.partition:
                errors.append(f"delivered to partition {msg.partition()}, asked {sent.partition}")
            elif msg.offset() is not None and msg.offset() >= 0:
                # acks=0: no answer, so no offset (None or a negative logical offset).
                sent.offset = msg.offset()

        return cb

    for sent in msgs:
        kwargs = {"partition": sent.partition, "on_delivery": report(sent)}
        if sent.key is not None:
            kwargs["key"] = sent.key
        if sent.value is not None:
            kwargs["value"] = sent.value
        if sent.headers:
            kwargs["headers"] = sent.headers
        if sent.timestamp is not None:
            kwargs["timestamp"] = sent.timestamp
        while True:
            try:
                producer.produce(sent.topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(WAIT_S)
    check(not errors, f"delivery failed: {errors[:5]}")
    check_eq(left, 0, "messages still undelivered after flush")
    if expect_offsets:
        missing = [s for s in msgs if s.offset is None or s.offset < 0]
        check(not missing, f"{len(missing)} deliveries had no offset")


def poll_until(producer, deadline):
    """Serves `producer`'s callbacks until time.monotonic() reaches `deadline` (poll()
    returns early whenever it served something, so it alone does not pace a loop)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        producer.poll(left)


class Got:
    """One consumed message, reduced to what a test compares."""

    def __init__(self, msg):
        self.topic = msg.topic()
        self.partition = msg.partition()
        self.offset = msg.offset()
        self.key = msg.key()
        self.value = msg.value()
        self.headers = msg.headers() or []
        self.timestamp = msg.timestamp()

    def __repr__(self):
        return f"{self.topic}/{self.partition}@{self.offset} key={short(self.key, 40)}"


def consumer(bootstrap, **extra):
    """A consumer that only ever assign()s: group.id is set because librdkafka wants
    one, but nothing subscribes or commits."""
    base = {
        "group.id": "ferrolog-e2e-unused",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "enable.partition.eof": False,
    }
    base.update(librdkafka_keys(extra))
    return Consumer(conf(bootstrap, **base))


def consume(bootstrap, assignment, count, **extra):
    """Assigns `assignment` ([(topic, partition, offset)]) and returns `count` messages
    (Got), failing on a client error, a duplicate, or a timeout."""
    c = consumer(bootstrap, **extra)
    c.assign([TopicPartition(t, p, o) for t, p, o in assignment])
    got = []
    seen = set()
    deadline = time.monotonic() + WAIT_S
    try:
        while len(got) < count:
            if time.monotonic() > deadline:
                fail(f"consumed {len(got)} of {count} messages in {WAIT_S}s from {assignment}")
            for msg in c.consume(num_messages=1000, timeout=0.2):
                if msg.error() is not None:
                    fail(f"consumer error: {msg.error()}")
                g = Got(msg)
                where = (g.topic, g.partition, g.offset)
                check(where not in seen, f"message {where} delivered twice")
                seen.add(where)
                got.append(g)
        extra_msgs = c.consume(num_messages=1000, timeout=0.3)
        check(not extra_msgs, f"consumed more than {count} messages: {extra_msgs[:3]}")
    finally:
        c.close()
    return got


def consume_all(bootstrap, topic, partitions, count, **extra):
    return consume(bootstrap, [(topic, p, OFFSET_BEGINNING) for p in range(partitions)], count, **extra)


def compare(got, sent, check_offsets=True, check_timestamps=False):
    """Every partition's consumed messages must equal what was sent there, in the
    order it was sent, byte for byte, at contiguous offsets from 0 (and at the
    offsets of the delivery reports)."""
    by_partition = {}
    for s in sent:
        by_partition.setdefault((s.topic, s.partition), []).append(s)
    got_by_partition = {}
    for g in got:
        got_by_partition.setdefault((g.topic, g.partition), []).append(g)
    check_eq(sorted(got_by_partition), sorted(by_partition), "partitions that hold messages")
    for tp, expected in by_partition.items():
        actual = sorted(got_by_partition[tp], key=lambda g: g.offset)
        check_eq(len(actual), len(expected), f"message count of {tp}")
        for i, (g, s) in enumerate(zip(actual, expected)):
            where = f"{tp[0]}/{tp[1]} message #{i} (offset {g.offset})"
            if check_offsets:
                check_eq(g.offset, i, f"{where}: offset (offsets must be contiguous from 0)")
                if s.offset is not None:
                    check_eq(g.offset, s.offset, f"{where}: offset vs delivery report")
            check_eq(g.key, s.key, f"{where}: key")
            check_eq(g.value, s.value, f"{where}: value")
            check_eq(g.headers, s.headers, f"{where}: headers")
            if check_timestamps and s.timestamp is not None:
                check_eq(g.timestamp[1], s.timestamp, f"{where}: timestamp")


def watermarks(bootstrap, topic, partition):
    c = consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


def wait_for_high_watermark(bootstrap, topic, partition, high):
    """Waits until `topic`/`partition` holds `high` messages (for writes nobody acknowledges)."""
    deadline = time.monotonic() + WAIT_S
    c = consumer(bootstrap)
    try:
        while True:
            seen = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
            if seen[1] == high:
                return
            if time.monotonic() > deadline:
                fail(f"{topic}/{partition} high watermark stayed at {seen[1]}, expected {high}")
            time.sleep(0.05)
    finally:
        c.close()


# --- consumer groups ------------------------------------------------------------------

# Client settings of the group scripts: the brokers of these tests run with
# --group-min-session-timeout-ms 6000 (Kafka's default minimum), and a heartbeat
# every 500 ms lets members notice a rebalance quickly.
GROUP_SESSION_TIMEOUT_MS = 6000
GROUP_HEARTBEAT_MS = 500


def group_consumer(bootstrap, group, **extra):
    """A consumer that joins `group` when it subscribe()s. Nothing is committed
    unless the script commits (enable.auto.commit=false); offsets of the messages
    consume() returns are stored for those commits."""
    base = {
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "session.timeout.ms": GROUP_SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": GROUP_HEARTBEAT_MS,
    }
    base.update(librdkafka_keys(extra))
    return Consumer(conf(bootstrap, **base))


def committed(bootstrap, group, topic, partitions):
    """{partition: (offset, metadata)} committed by `group` for `topic` (OffsetFetch
    from a consumer that never joins); a partition without a committed offset reads
    as OFFSET_INVALID (-1001). Fails on a per-partition error."""
    c = Consumer(conf(bootstrap, **{"group.id": group, "enable.auto.commit": False}))
    try:
        result = c.committed([TopicPartition(topic, p) for p in partitions], timeout=WAIT_S)
    except KafkaException as exc:
        fail(f"committed() of group {group} on {topic}: {exc!r}")
    finally:
        c.close()
    out = {}
    for tp in result:
        check(tp.error is None, f"committed() of group {group}: {topic}/{tp.partition}: {tp.error}")
        out[tp.partition] = (tp.offset, tp.metadata)
    return out


def committed_offsets(bootstrap, group, topic, partitions):
    """{partition: offset} of committed(); OFFSET_INVALID (-1001) where none is committed."""
    return {p: o for p, (o, _) in committed(bootstrap, group, topic, partitions).items()}


def commit_sync(c, offsets=None):
    """A synchronous commit of `offsets` ([TopicPartition]) or, if None, of the offsets
    stored for the current assignment. Returns None on success, else the error text
    (per-partition errors included). Nothing stored to commit counts as success."""
    try:
        if offsets is None:
            result = c.commit(asynchronous=False)
        else:
            result = c.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        if error_code(exc) == KafkaError._NO_OFFSET:
            return None
        return repr(exc)
    bad = [f"{tp.topic}/{tp.partition}: {tp.error}" for tp in result or [] if tp.error is not None]
    return "; ".join(bad) if bad else None


def high_watermarks(bootstrap, topic, partitions):
    """{partition: high watermark} of `topic`."""
    c = consumer(bootstrap)
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in partitions
        }
    finally:
        c.close()


# --- raw connections (scripts that write requests themselves, with wire.py) -------------


def raw_connect(bootstrap, timeout):
    """A plain socket to `bootstrap` (HOST:PORT) with `timeout` on every operation."""
    host, port = bootstrap.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exact(sock, n):
    """n bytes; fails the script if the broker closes the connection first."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        check(chunk, f"connection closed with {n - len(buf)} bytes of an answer missing")
        buf += chunk
    return buf


def read_frame(sock):
    """One response frame without its size prefix."""
    (n,) = struct.unpack(">i", recv_exact(sock, 4))
    return recv_exact(sock, n)
