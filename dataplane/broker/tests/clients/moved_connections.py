"""Connections that move to the shard owning their partitions (network.move_connections).

A 2-partition topic on a broker with two shards has one partition per shard (/metrics says
which). CONNECTIONS raw connections in turn each write to one partition: the first two
Produce requests back to back (so a connection that moves carries the second one's bytes
along), then the rest one at a time, then a Fetch of what it wrote. Every answer must come
in order, at the offsets expected, and the Fetch must return the connection's own values.
CONNECTIONS more connections each only fetch. Then /metrics must say where the requests ran:

- --expect-moves 1 (the default profile): every Produce and Fetch of those connections ran
  on the shard that owns its partition (ferrolog_requests_total by shard), and the shards
  moved connections (ferrolog_connections_moved_out_total / _in_total agree, above zero).
- --expect-moves 0 (a profile with move_connections = false): no connection moved, and
  some requests ran on the shard that does not own their partition (the kernel spreads
  connections over the shards; with CONNECTIONS * 2 connections all landing on their
  owner has odds of 2^-48).

Last, a confluent-kafka consumer reads every value of both partitions in the order written.
"""

import struct
import urllib.request

from confluent_kafka import OFFSET_BEGINNING

from e2e import admin, check, check_eq, consume, create_topic, log, parse_args, raw_connect, read_frame
from wire import Reader, frame, header, i8, i16, i32, i64, record_batch, string

args = parse_args(
    ("--metrics", {"required": True}),
    ("--expect-moves", {"type": int, "required": True}),
)
ANSWER_S = 20.0
API_PRODUCE, API_FETCH = 0, 1
TOPIC = "moved"
CONNECTIONS = 24
REQUESTS = 5


def connect():
    return raw_connect(args.bootstrap, ANSWER_S)


def produce(cid, partition, value):
    body = i16(-1) + i16(-1) + i32(15000)
    body += i32(1) + string(TOPIC) + i32(1)
    batch = record_batch(value)
    body += i32(partition) + i32(len(batch)) + batch
    return frame(header(API_PRODUCE, 3, cid) + body)


def produce_answer(resp, cid, what):
    r = Reader(resp)
    check_eq(r.take(">i"), cid, f"{what}: correlation id")
    check_eq(r.take(">i"), 1, f"{what}: topic count")
    check_eq(r.string(), TOPIC, f"{what}: topic")
    check_eq(r.take(">i"), 1, f"{what}: partition count")
    index, error, base = r.take(">i"), r.take(">h"), r.take(">q")
    r.take(">q")
    r.take(">i")
    r.done(what)
    return index, error, base


def fetch(cid, partition, offset):
    body = i32(-1) + i32(100) + i32(1) + i32(1 << 20) + i8(0)
    body += i32(1) + string(TOPIC) + i32(1) + i32(partition) + i64(offset) + i32(1 << 20)
    return frame(header(API_FETCH, 4, cid) + body)


def fetched_values(resp, cid, what):
    """The record values of a Fetch v4 answer for one partition (uncompressed batches of
    records without headers, as record_batch writes them)."""
    r = Reader(resp)
    check_eq(r.take(">i"), cid, f"{what}: correlation id")
    r.take(">i")  # throttle
    check_eq(r.take(">i"), 1, f"{what}: topic count")
    check_eq(r.string(), TOPIC, f"{what}: topic")
    check_eq(r.take(">i"), 1, f"{what}: partition count")
    r.take(">i")  # partition
    check_eq(r.take(">h"), 0, f"{what}: error code")
    r.take(">q")  # high watermark
    r.take(">q")  # last stable offset
    aborted = r.take(">i")
    check(aborted in (-1, 0), f"{what}: no aborted transactions")
    size = r.take(">i")
    records = r.data[r.pos : r.pos + max(size, 0)]
    r.pos += max(size, 0)
    r.done(what)
    values = []
    pos = 0
    while pos + 61 <= len(records):
        (batch_len,) = struct.unpack(">i", records[pos + 8 : pos + 12])
        end = pos + 12 + batch_len
        (count,) = struct.unpack(">i", records[pos + 57 : pos + 61])
        rec = pos + 61
        for _ in range(count):
            length, rec = varint_at(records, rec)
            body_end = rec + length
            rec += 1  # attributes
            _, rec = varint_at(records, rec)  # timestamp delta
            _, rec = varint_at(records, rec)  # offset delta
            key_len, rec = varint_at(records, rec)
            rec += max(key_len, 0)
            value_len, rec = varint_at(records, rec)
            values.append(records[rec : rec + value_len])
            rec = body_end
        pos = end
    return values


def varint_at(buf, pos):
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    return (value >> 1) ^ -(value & 1), pos


def metrics():
    with urllib.request.urlopen(args.metrics, timeout=ANSWER_S) as resp:
        return resp.read().decode().splitlines()


def samples(lines, name):
    """{labels text: value} of one metric."""
    out = {}
    for line in lines:
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            out[labels] = float(value)
    return out


def label(labels, key):
    for part in labels.split(","):
        k, _, v = part.partition("=")
        if k == key:
            return v.strip('"')
    return None


def requests_by_shard(lines, api):
    out = {}
    for labels, v in samples(lines, "ferrolog_requests_total").items():
        if label(labels, "api") == api:
            out[label(labels, "shard")] = int(v)
    return out


def delta(after, before):
    return {s: after.get(s, 0) - before.get(s, 0) for s in set(after) | set(before)}


def total(lines, name):
    return int(sum(samples(lines, name).values()))


adm = admin(args.bootstrap)
create_topic(adm, TOPIC, 2)

# Where each partition lives.
owner = {}
for labels in samples(metrics(), "ferrolog_partition_log_end_offset"):
    if label(labels, "topic") == TOPIC:
        owner[int(label(labels, "partition"))] = label(labels, "shard")
check_eq(sorted(owner), [0, 1], "both partitions listed in /metrics")
check(owner[0] != owner[1], f"the partitions live on different shards: {owner}")
log(f"partition owners (shard): {owner}")

before = metrics()
written = {0: [], 1: []}
sent = {owner[0]: {"Produce": 0, "Fetch": 0}, owner[1]: {"Produce": 0, "Fetch": 0}}
cid = 0
for c in range(CONNECTIONS):
    p = c % 2
    with connect() as s:
        values = [f"c{c}-r{r}".encode() for r in range(REQUESTS)]
        # Two requests back to back, then one at a time.
        s.sendall(produce(cid, p, values[0]) + produce(cid + 1, p, values[1]))
        answers = [produce_answer(read_frame(s), cid + i, f"connection {c} produce {i}") for i in range(2)]
        cid += 2
        for i in range(2, REQUESTS):
            s.sendall(produce(cid, p, values[i]))
            answers.append(produce_answer(read_frame(s), cid, f"connection {c} produce {i}"))
            cid += 1
        first = len(written[p])
        check_eq(
            answers,
            [(p, 0, first + i) for i in range(REQUESTS)],
            f"connection {c}: (partition, error, base offset) of its produce answers",
        )
        written[p] += values
        s.sendall(fetch(cid, p, first))
        got = fetched_values(read_frame(s), cid, f"connection {c} fetch")
        cid += 1
        check_eq(got, values, f"connection {c}: the values it wrote, fetched")
        sent[owner[p]]["Produce"] += REQUESTS
        sent[owner[p]]["Fetch"] += 1
for c in range(CONNECTIONS):
    p = c % 2
    with connect() as s:
        s.sendall(fetch(cid, p, 0))
        got = fetched_values(read_frame(s), cid, f"fetch-only connection {c}")
        cid += 1
        check_eq(got, written[p][: len(got)], f"fetch-only connection {c}: a prefix of partition {p}")
        check(got, f"fetch-only connection {c}: records")
        sent[owner[p]]["Fetch"] += 1
log(f"ok: {CONNECTIONS} producing and {CONNECTIONS} fetching connections answered in order")

after = metrics()
moved_out = total(after, "ferrolog_connections_moved_out_total") - total(before, "ferrolog_connections_moved_out_total")
moved_in = total(after, "ferrolog_connections_moved_in_total") - total(before, "ferrolog_connections_moved_in_total")
ran = {api: delta(requests_by_shard(after, api), requests_by_shard(before, api)) for api in ("Produce", "Fetch")}
log(f"moved out {moved_out}, in {moved_in}; requests by shard {ran}; by owner {sent}")
elsewhere = sum(
    n for api in ran for shard, n in ran[api].items() if n > sent.get(shard, {}).get(api, 0)
)
if args.expect_moves:
    check_eq(moved_out, moved_in, "connections moved out and in")
    check(moved_out > 0, "some connections landed on the other shard and moved")
    for api in ("Produce", "Fetch"):
        for shard, n in sent.items():
            check_eq(ran[api].get(shard, 0), n[api], f"{api} requests that ran on shard {shard}, its owner")
else:
    check_eq((moved_out, moved_in), (0, 0), "connections moved with move_connections = false")
    check(elsewhere > 0, "with no moves, some requests ran on the shard that does not own their partition")

for p in (0, 1):
    got = consume(args.bootstrap, [(TOPIC, p, OFFSET_BEGINNING)], len(written[p]))
    check_eq([m.value for m in got], written[p], f"partition {p}: values in the order written")
log("ok")
