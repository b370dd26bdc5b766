"""Pipelined requests on one raw connection. An idempotent producer's 200 Produce requests
(3 records each, sequence numbers in order) are written back to back without waiting for
answers, interleaved with Metadata requests; every answer must come back in request order
(correlation ids), every batch must be appended with no error and at the offsets its
sequence numbers imply, and a consumer must read the values in the order sent. A second
connection pipelines acks=1 requests that each write two partitions, one of them twice.
The broker's ferrolog_requests_pipelined_total counter must then say whether requests did
overlap: more than zero with the default depth, zero with --expect-pipelined 0 (a broker
started with network.pipeline_depth = 1). Last, a long-poll Fetch that waits longer than the
broker's idle timeout must be answered, not cut off as idle."""

import struct
import time
import urllib.request

from confluent_kafka import OFFSET_BEGINNING

from e2e import admin, check, check_eq, consume, create_topic, log, parse_args, raw_connect, read_frame
from wire import Reader, frame, header, i8, i16, i32, i64, record_batch, string

args = parse_args(
    ("--metrics", {"required": True}),
    ("--expect-pipelined", {"type": int, "required": True}),
    ("--long-poll-ms", {"type": int, "required": True}),
)
ANSWER_S = 20.0

API_PRODUCE, API_FETCH, API_METADATA, API_INIT_PRODUCER_ID = 0, 1, 3, 22
REQUESTS = 200
PER_BATCH = 3


def connect():
    return raw_connect(args.bootstrap, ANSWER_S)


def produce(correlation_id, acks, partitions):
    """Produce v3 to one topic; `partitions` is a list of (partition, batch)."""
    body = i16(-1) + i16(acks) + i32(15000)
    body += i32(1) + string(TOPIC) + i32(len(partitions))
    for index, batch in partitions:
        body += i32(index) + i32(len(batch)) + batch
    return frame(header(API_PRODUCE, 3, correlation_id) + body)


def produce_answer(resp, correlation_id, what):
    """[(partition, error, base offset)] of a Produce v3 answer."""
    r = Reader(resp)
    check_eq(r.take(">i"), correlation_id, f"{what}: correlation id (answers in request order)")
    check_eq(r.take(">i"), 1, f"{what}: topic count")
    check_eq(r.string(), TOPIC, f"{what}: topic")
    out = []
    for _ in range(r.take(">i")):
        index, error, base = r.take(">i"), r.take(">h"), r.take(">q")
        r.take(">q")  # log append time
        out.append((index, error, base))
    r.take(">i")  # throttle time
    r.done(what)
    return out


def metadata(correlation_id):
    return frame(header(API_METADATA, 1, correlation_id) + i32(-1))


def pipelined_counter():
    with urllib.request.urlopen(args.metrics, timeout=ANSWER_S) as resp:
        text = resp.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("ferrolog_requests_pipelined_total{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


TOPIC = "pipelined"
adm = admin(args.bootstrap)
# Small segments: appends that roll a segment await; turns must keep the order anyway.
create_topic(adm, TOPIC, 2, config={"segment.bytes": "4096"})

with connect() as s:
    s.sendall(frame(header(API_INIT_PRODUCER_ID, 0, 1) + string(None) + i32(60000)))
    r = Reader(read_frame(s))
    check_eq(r.take(">i"), 1, "InitProducerId: correlation id")
    r.take(">i")  # throttle time
    check_eq(r.take(">h"), 0, "InitProducerId: error code")
    pid, epoch = r.take(">q"), r.take(">h")
    r.done("InitProducerId v0")
log(f"producer id {pid} epoch {epoch}")

# 1. An idempotent producer's requests, back to back, with Metadata requests between.
requests = []
expected = []  # (correlation id, kind, i)
values = []
for i in range(REQUESTS):
    batch_values = [f"v{i}-{j}".encode() for j in range(PER_BATCH)]
    values += batch_values
    batch = record_batch(None, values=batch_values, producer_id=pid, producer_epoch=epoch, base_sequence=i * PER_BATCH)
    cid = 1000 + len(requests)
    requests.append(produce(cid, -1, [(0, batch)]))
    expected.append((cid, "produce", i))
    if i % 10 == 5:
        cid = 1000 + len(requests)
        requests.append(metadata(cid))
        expected.append((cid, "metadata", i))
with connect() as s:
    s.sendall(b"".join(requests))
    for cid, kind, i in expected:
        resp = read_frame(s)
        if kind == "metadata":
            check_eq(struct.unpack(">i", resp[:4])[0], cid, f"Metadata after produce #{i}: correlation id")
            continue
        [(index, error, base)] = produce_answer(resp, cid, f"produce #{i}")
        check_eq((index, error), (0, 0), f"produce #{i}: partition and error code")
        check_eq(base, i * PER_BATCH, f"produce #{i}: base offset (sequence {i * PER_BATCH})")
log(f"ok: {REQUESTS} pipelined idempotent Produce requests and {len(expected) - REQUESTS} Metadata answered in order at offsets 0..{REQUESTS * PER_BATCH - 1}")

got = consume(args.bootstrap, [(TOPIC, 0, OFFSET_BEGINNING)], REQUESTS * PER_BATCH)
check_eq([m.value for m in got], values, "partition 0 values in the order produced")
log(f"ok: a consumer reads the {len(got)} values in order")

# 2. acks=1 requests writing partition 1 twice and partition 0 once each, pipelined.
requests = []
for i in range(50):
    parts = [
        (1, record_batch(f"a{i}".encode())),
        (0, record_batch(f"b{i}".encode())),
        (1, record_batch(f"c{i}".encode())),
    ]
    requests.append(produce(5000 + i, 1, parts))
p0_base = REQUESTS * PER_BATCH
with connect() as s:
    s.sendall(b"".join(requests))
    for i in range(50):
        answers = produce_answer(read_frame(s), 5000 + i, f"two-partition produce #{i}")
        check_eq(
            answers,
            [(1, 0, 2 * i), (0, 0, p0_base + i), (1, 0, 2 * i + 1)],
            f"two-partition produce #{i}: (partition, error, base offset) per entry",
        )
got = consume(args.bootstrap, [(TOPIC, 1, OFFSET_BEGINNING)], 100)
check_eq([m.value for m in got], [f"{x}{i}".encode() for i in range(50) for x in "ac"], "partition 1 values")
log("ok: 50 pipelined two-partition requests keep the entries' order within and across requests")

# 3. A long poll longer than the broker's idle timeout: the connection is not idle while its
# request is in progress, so the Fetch is answered (empty, after its wait) and the connection
# stays open.
fetch = i32(-1) + i32(args.long_poll_ms) + i32(1) + i32(1 << 20) + i8(0)
fetch += i32(1) + string(TOPIC) + i32(1) + i32(0) + i64(REQUESTS * PER_BATCH + 50) + i32(1 << 20)
with connect() as s:
    started = time.monotonic()
    s.sendall(frame(header(API_FETCH, 4, 77) + fetch))
    resp = read_frame(s)
    waited = time.monotonic() - started
    check_eq(struct.unpack(">i", resp[:4])[0], 77, "long-poll Fetch: correlation id")
    check(waited >= args.long_poll_ms / 1000 * 0.9, f"long-poll Fetch answered after {waited:.2f}s, before its wait")
    # Still open: the broker did not count the long poll as idle time.
    s.sendall(metadata(78))
    check_eq(struct.unpack(">i", read_frame(s)[:4])[0], 78, "Metadata after the long poll: correlation id")
log(f"ok: a {args.long_poll_ms} ms long poll is answered after {waited:.2f}s and the connection stays open")

pipelined = pipelined_counter()
log(f"ferrolog_requests_pipelined_total = {pipelined}")
if args.expect_pipelined:
    check(pipelined > 0, "requests were pipelined: the counter must be above zero")
else:
    check_eq(pipelined, 0, "with pipeline_depth = 1 no request overlaps another")
log("ok")
