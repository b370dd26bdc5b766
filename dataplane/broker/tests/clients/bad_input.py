"""Hostile and malformed input over raw TCP sockets. For each abuse the broker must
close that one connection (or, where the protocol has an error for it, answer it),
never hang it, and stay alive and useful: after every abuse a fresh connection gets
an ApiVersions answer and long-lived confluent-kafka clients still produce and
consume. Also checks the protocol details a raw socket sees: ApiVersions v0 and v3,
an unsupported ApiVersions version answered with UNSUPPORTED_VERSION (35) and a v0
body listing the supported versions, pipelined requests answered in order, and a
record batch with a bad CRC refused with CORRUPT_MESSAGE (2) and not appended."""

import os
import socket
import struct
import time

from confluent_kafka import Producer, TopicPartition

from wire import Reader, compact_string, frame, header, i16, i32, record_batch, string
from e2e import (
    WAIT_S,
    Sent,
    admin,
    check,
    check_eq,
    compare,
    conf,
    consume_all,
    consumer,
    create_topic,
    fail,
    log,
    parse_args,
    watermarks,
)

args = parse_args(
    ("--broker-pid", {"type": int, "required": True}),
    ("--max-request-bytes", {"type": int, "required": True}),
)
host, port = args.bootstrap.rsplit(":", 1)
ADDR = (host, int(port))
# How long the broker may take to answer or close a connection.
ANSWER_S = 5.0

API_PRODUCE, API_FETCH, API_LIST_OFFSETS, API_METADATA, API_VERSIONS = 0, 1, 2, 3, 18
UNSUPPORTED_VERSION, CORRUPT_MESSAGE = 35, 2
# The ranges ferrolog promises (README of the wire server); it may support more.
PROMISED = {API_PRODUCE: (3, 9), API_FETCH: (4, 12), API_METADATA: (0, 12), API_VERSIONS: (0, 3)}


# --- Kafka wire encoding, just enough for these requests -------------------------


def produce_request(correlation_id, topic, partition, batch):
    body = i16(-1) + i16(-1) + i32(10000)  # transactional id null, acks=all, timeout
    body += i32(1) + string(topic) + i32(1) + i32(partition) + i32(len(batch)) + batch
    return frame(header(API_PRODUCE, 3, correlation_id) + body)


# --- connections --------------------------------------------------------------------


def connect():
    s = socket.create_connection(ADDR, timeout=ANSWER_S)
    s.settimeout(ANSWER_S)
    return s


def recv_exact(sock, n):
    """n bytes, or None if the broker closed the connection first."""
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(sock, what):
    """The next response frame, or None if the connection was closed."""
    try:
        size = recv_exact(sock, 4)
        if size is None:
            return None
        (n,) = struct.unpack(">i", size)
        check(0 <= n <= 64 << 20, f"{what}: response frame size {n}")
        body = recv_exact(sock, n)
        check(body is not None, f"{what}: connection closed inside a response frame")
        return body
    except socket.timeout:
        fail(f"{what}: no answer and no close within {ANSWER_S}s: the connection hangs")


def expect_closed(sock, what):
    """The broker must close the connection (any bytes it sends first are ignored)."""
    deadline = time.monotonic() + ANSWER_S
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return
    except ConnectionResetError:
        return
    except socket.timeout:
        pass
    fail(f"{what}: the broker kept the connection open for {ANSWER_S}s; it must close it")


def expect_answer_or_close(sock, correlation_id, what):
    body = read_frame(sock, what)
    if body is None:
        return "closed"
    check_eq(struct.unpack(">i", body[:4])[0], correlation_id, f"{what}: correlation id of the answer")
    return "answered"


def send(payload):
    s = connect()
    s.sendall(payload)
    return s


# --- response parsing -----------------------------------------------------------------


def api_versions(version, correlation_id, response_version=None):
    """Sends ApiVersions `version` on a new connection; returns (error, {key: (min, max)})
    from the response, parsed as `response_version` (default: `version`)."""
    flexible = version >= 3
    body = (compact_string("raw-e2e") + compact_string("1.0") + b"\x00") if flexible else b""
    with send(frame(header(API_VERSIONS, version, correlation_id, flexible) + body)) as s:
        resp = read_frame(s, f"ApiVersions v{version}")
    check(resp is not None, f"ApiVersions v{version}: connection closed without an answer")
    return parse_api_versions(resp, version if response_version is None else response_version, correlation_id)


def parse_api_versions(resp, version, correlation_id):
    what = f"ApiVersions v{version} response"
    r = Reader(resp)
    # The ApiVersions response header is always v0 (no tagged fields), even when flexible.
    check_eq(r.take(">i"), correlation_id, f"{what}: correlation id")
    error = r.take(">h")
    flexible = version >= 3
    n = r.uvarint() - 1 if flexible else r.take(">i")
    check(0 <= n < 1000, f"{what}: api_keys count {n}")
    apis = {}
    for _ in range(n):
        key, lo, hi = r.take(">h"), r.take(">h"), r.take(">h")
        check(lo <= hi, f"{what}: api {key} range {lo}..{hi}")
        apis[key] = (lo, hi)
        if flexible:
            r.skip_tags()
    if version >= 1:
        r.take(">i")  # throttle time
    if flexible:
        r.skip_tags()
    r.done(what)
    return error, apis


def check_promised(apis, what):
    for key, (lo, hi) in PROMISED.items():
        check(key in apis, f"{what}: api key {key} not listed: {sorted(apis)}")
        got_lo, got_hi = apis[key]
        check(got_lo <= lo and got_hi >= hi, f"{what}: api {key} versions {got_lo}..{got_hi}, promised {lo}..{hi}")


def produce_raw(batch, correlation_id):
    """Produce v3 of `batch` to raw/0 on a new connection; returns the partition error code."""
    with send(produce_request(correlation_id, "raw", 0, batch)) as s:
        resp = read_frame(s, "raw Produce v3")
    check(resp is not None, "raw Produce v3: connection closed without an answer")
    r = Reader(resp)
    check_eq(r.take(">i"), correlation_id, "raw Produce v3: correlation id")
    check_eq(r.take(">i"), 1, "raw Produce v3: topic count")
    check_eq(r.string(), "raw", "raw Produce v3: topic")
    check_eq(r.take(">i"), 1, "raw Produce v3: partition count")
    check_eq(r.take(">i"), 0, "raw Produce v3: partition")
    error = r.take(">h")
    r.take(">q")  # base offset
    r.take(">q")  # log append time
    r.take(">i")  # throttle time
    r.done("raw Produce v3 response")
    return error


# --- the checks -----------------------------------------------------------------------

adm = admin(args.bootstrap)
create_topic(adm, "health", 1)
create_topic(adm, "raw", 1)

error, apis = api_versions(0, 7)
check_eq(error, 0, "ApiVersions v0 error code")
check_promised(apis, "ApiVersions v0")
error, apis = api_versions(3, 8)
check_eq(error, 0, "ApiVersions v3 error code")
check_promised(apis, "ApiVersions v3")
log(f"ok: ApiVersions v0 and v3 list {len(apis)} APIs: {dict(sorted(apis.items()))}")

# Kafka answers an ApiVersions version it does not know with a v0 body (KIP-511).
error, v99_apis = api_versions(99, 9, response_version=0)
check_eq(error, UNSUPPORTED_VERSION, "ApiVersions v99 error code")
check_promised(v99_apis, "ApiVersions v99 (v0 body)")
log("ok: ApiVersions v99 -> UNSUPPORTED_VERSION with the supported versions in a v0 body")

with connect() as s:
    s.sendall(b"".join(frame(header(API_VERSIONS, 2, 100 + i)) for i in range(5)))
    for i in range(5):
        resp = read_frame(s, f"pipelined ApiVersions #{i}")
        check(resp is not None, f"pipelined ApiVersions #{i}: connection closed")
        parse_api_versions(resp, 2, 100 + i)
log("ok: five pipelined requests answered in order")

check_eq(produce_raw(record_batch(b"valid raw batch"), 11), 0, "raw Produce of a valid batch: error code")
check_eq(produce_raw(record_batch(b"bad crc", corrupt_crc=True), 12), CORRUPT_MESSAGE, "raw Produce with a bad CRC")
check_eq(watermarks(args.bootstrap, "raw", 0), (0, 1), "raw/0 watermarks: the bad-CRC batch must not be appended")
log("ok: a bad-CRC batch is refused with CORRUPT_MESSAGE and not appended")

# Long-lived clients: after every abuse they must still produce and consume.
producer = Producer(conf(args.bootstrap, acks="all"))
live = consumer(args.bootstrap)
live.assign([TopicPartition("health", 0, 0)])
health_sent = []


def healthy(after):
    try:
        os.kill(args.broker_pid, 0)
    except ProcessLookupError:
        fail(f"the broker process died after: {after}")
    error, _ = api_versions(3, 1)
    check_eq(error, 0, f"ApiVersions on a new connection after: {after}")
    value = f"still alive after: {after}".encode()
    producer.produce("health", value=value, partition=0)
    check_eq(producer.flush(WAIT_S), 0, f"produce after: {after}")
    health_sent.append(Sent("health", 0, None, value))
    deadline = time.monotonic() + WAIT_S
    while True:
        msg = live.poll(0.1)
        if msg is not None:
            check(msg.error() is None, f"consume after {after}: {msg.error()}")
            check_eq(msg.value(), value, f"message consumed after: {after}")
            break
        if time.monotonic() > deadline:
            fail(f"the long-lived consumer got nothing after: {after}")
    log(f"ok: {after}: connection handled, broker healthy")


healthy("setup")

limit = args.max_request_bytes

s = send(b"\xde\xad\xbe\xef" * 64)
expect_closed(s, "garbage bytes (negative frame size)")
s.close()
healthy("garbage bytes (negative frame size)")

s = send(b"GET / HTTP/1.1\r\nHost: ferrolog\r\n\r\n")
expect_closed(s, "an HTTP request")
s.close()
healthy("an HTTP request")

s = send(i32(limit + 1) + b"\x00" * 1024)
expect_closed(s, f"a frame of {limit + 1} bytes (> --max-request-bytes {limit})")
s.close()
healthy("an oversized frame size")

s = send(i32(0))
expect_closed(s, "a zero-length frame")
s.close()
healthy("a zero-length frame")

s = send(i32(3) + b"\x00\x12\x00")
expect_closed(s, "a frame shorter than a request header")
s.close()
healthy("a frame shorter than a request header")

s = send(i32(100) + b"\x00\x12\x00\x00\x00\x00\x00\x01\x00")
s.close()
healthy("a truncated frame, then the client closed")

s = send(frame(header(9999, 0, 21)))
outcome = expect_answer_or_close(s, 21, "an unknown api key (9999)")
s.close()
healthy(f"an unknown api key ({outcome})")

s = send(frame(header(API_PRODUCE, 99, 22) + b"\x00" * 16))
outcome = expect_answer_or_close(s, 22, "Produce v99")
s.close()
healthy(f"an unsupported Produce version ({outcome})")

# Metadata v1 claiming 2^31-1 topics with none present: must not allocate or hang.
s = send(frame(header(API_METADATA, 1, 23) + i32(0x7FFFFFFF)))
outcome = expect_answer_or_close(s, 23, "Metadata with a huge topic count and no topics")
s.close()
healthy(f"a Metadata request with a lying array length ({outcome})")

# A Produce whose records field claims more bytes than the frame holds.
s = send(frame(header(API_PRODUCE, 3, 24) + i16(-1) + i16(1) + i32(1000) + i32(1) + string("raw") + i32(1) + i32(0) + i32(1 << 20) + b"\x00" * 8))
outcome = expect_answer_or_close(s, 24, "Produce with a records length beyond the frame")
s.close()
healthy(f"a Produce with a lying records length ({outcome})")

check_eq(watermarks(args.bootstrap, "raw", 0), (0, 1), "raw/0 watermarks after the abuses")
producer.flush(WAIT_S)
live.close()
compare(consume_all(args.bootstrap, "health", 1, len(health_sent)), health_sent)
log(f"ok: after every abuse the broker (pid {args.broker_pid}) served fresh and long-lived clients")
