"""Fetch long-poll: a confluent-kafka consumer at the end of an empty partition with
fetch.wait.max.ms=10000 and fetch.min.bytes=1 must get a message produced by another
client long before its fetch would time out, so the broker must wake the parked
fetch on append. While idle the consumer must also not spin: a parked fetch means
few Fetch requests. Three rounds; the wake-up latency of each is printed.

This is a functional check with a generous bound, not a benchmark."""

import json
import threading
import time

from confluent_kafka import OFFSET_END, Producer, TopicPartition

from e2e import admin, check, conf, consumer, create_topic, fail, log, parse_args

TOPIC = "long-poll"
MAX_WAIT_MS = 10_000
WAKE_BOUND_S = 5.0
IDLE_S = 2.0
ROUNDS = 3

args = parse_args()
create_topic(admin(args.bootstrap), TOPIC, 1)

fetch_requests = [0]


def on_stats(raw):
    brokers = json.loads(raw).get("brokers", {})
    fetch_requests[0] = sum(b.get("req", {}).get("Fetch", 0) for b in brokers.values())


c = consumer(
    args.bootstrap,
    fetch_wait_max_ms=MAX_WAIT_MS,
    fetch_min_bytes=1,
    statistics_interval_ms=100,
    stats_cb=on_stats,
)
c.assign([TopicPartition(TOPIC, 0, OFFSET_END)])
producer = Producer(conf(args.bootstrap, acks="all", linger_ms=0))
producer.list_topics(TOPIC, timeout=10)  # connected before the clock starts


def poll_idle(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        msg = c.poll(0.05)
        if msg is not None:
            fail(f"consumer got {msg.error() or msg.value()!r} before anything was produced")


latencies_ms = []
try:
    for r in range(ROUNDS):
        poll_idle(IDLE_S / 2)
        before = fetch_requests[0]
        poll_idle(IDLE_S / 2)
        idle_fetches = fetch_requests[0] - before
        check(fetch_requests[0] >= 1, "the consumer never sent a Fetch request")
        check(
            idle_fetches <= 5,
            f"{idle_fetches} Fetch requests in {IDLE_S / 2:.1f}s of idling with fetch.wait.max.ms="
            f"{MAX_WAIT_MS}: the broker answers empty fetches at once instead of parking them",
        )

        value = f"wake-up {r}".encode()
        sent_at = [0.0]

        def produce():
            sent_at[0] = time.monotonic()
            producer.produce(TOPIC, value=value, partition=0)
            producer.flush(10)

        t = threading.Thread(target=produce)
        t.start()
        deadline = time.monotonic() + MAX_WAIT_MS / 1000 + 5
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = c.poll(0.01)
        received_at = time.monotonic()
        t.join()
        if msg is None:
            fail(f"round {r}: the produced message never arrived")
        if msg.error() is not None:
            fail(f"round {r}: consumer error {msg.error()}")
        check(msg.value() == value, f"round {r}: got {msg.value()!r}, expected {value!r}")
        check(msg.offset() == r, f"round {r}: offset {msg.offset()}, expected {r}")
        latency_s = received_at - sent_at[0]
        latencies_ms.append(latency_s * 1000)
        log(f"round {r}: produce -> consume wake-up {latency_s * 1000:.1f} ms "
            f"(fetch.wait.max.ms={MAX_WAIT_MS}; {idle_fetches} Fetch requests while idle)")
        check(
            latency_s < WAKE_BOUND_S,
            f"round {r}: the message took {latency_s:.2f}s to arrive: the parked fetch was not woken by the append",
        )
finally:
    c.close()
log("ok: long-poll wake-up latencies (ms): " + ", ".join(f"{x:.1f}" for x in latencies_ms))
