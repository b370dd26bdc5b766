"""Clients that keep the broker busy while kafka_clients.rs stops it with SIGTERM:
on one topic a producer sending without pause and a consumer whose short fetches
(10 ms) follow each other back to back; on another, which nobody writes to,
consumers whose fetches wait in long-poll on every partition, with waits from 20 ms
(expiring and renewed all through the shutdown) to 3 s (parked across it). So at
the moment of the stop requests are in flight, and fetches wait, on every shard.
Prints "busy" once all of them run, then goes on until the test kills it. The
broker must still shut down cleanly (exit 0)."""

import json
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Producer, TopicPartition

from e2e import admin, check, conf, consumer, create_topic, log, parse_args

TOPIC = "busy"
IDLE_TOPIC = "idle"
# Enough partitions that every shard owns some.
PARTITIONS = 8
RUN_S = 30
# fetch.wait.max.ms of the consumers of the idle topic: short waits expire (and are
# renewed) all through the broker's shutdown, a long one stays parked across it.
PARKED_WAITS_MS = [20, 50, 100, 3000]

args = parse_args()
create_topic(admin(args.bootstrap), TOPIC, PARTITIONS)
create_topic(admin(args.bootstrap), IDLE_TOPIC, PARTITIONS)
stop = threading.Event()
produced = [0]


def produce():
    p = Producer(conf(args.bootstrap, acks="all", linger_ms=1, message_timeout_ms=5000))
    while not stop.is_set():
        for part in range(PARTITIONS):
            p.produce(TOPIC, value=b"x" * 100, partition=part)
        p.poll(0.005)
        produced[0] += PARTITIONS
    p.flush(0)


def consume(topic, offset, max_wait_ms, fetches):
    def on_stats(raw):
        brokers = json.loads(raw).get("brokers", {})
        fetches[0] = sum(b.get("req", {}).get("Fetch", 0) for b in brokers.values())

    c = consumer(args.bootstrap, fetch_wait_max_ms=max_wait_ms, statistics_interval_ms=100, stats_cb=on_stats)
    c.assign([TopicPartition(topic, p, offset) for p in range(PARTITIONS)])
    while not stop.is_set():
        c.poll(0.01)


parked_fetches, busy_fetches = [0], [0]
threads = [
    threading.Thread(target=produce, daemon=True),
    threading.Thread(target=consume, args=(TOPIC, OFFSET_BEGINNING, 10, busy_fetches), daemon=True),
] + [
    threading.Thread(target=consume, args=(IDLE_TOPIC, OFFSET_END, wait_ms, parked_fetches), daemon=True)
    for wait_ms in PARKED_WAITS_MS
]
for t in threads:
    t.start()
deadline = time.monotonic() + 10
while (parked_fetches[0] == 0 or busy_fetches[0] < 5 or produced[0] == 0) and time.monotonic() < deadline:
    time.sleep(0.05)
check(parked_fetches[0] > 0 and busy_fetches[0] >= 5, f"consumers sent {parked_fetches[0]} / {busy_fetches[0]} Fetches")
log("busy")
time.sleep(RUN_S)
stop.set()
