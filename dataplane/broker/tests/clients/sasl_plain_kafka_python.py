"""kafka-python over SASL_PLAINTEXT with PLAIN (../security.rs): the broker requires
authentication and knows the user from its users file. The producer and a group-less
consumer round-trip messages; a wrong password is refused with an authentication
error; a client that does not authenticate gets nothing."""

import logging
import socket
import struct
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError, SaslAuthenticationFailedError

from e2e import WAIT_S, check, check_eq, fail, log, parse_args
from wire import i16, i32, string

args = parse_args(("--user", {"required": True}), ("--password", {"required": True}))
TOPIC = "kafka-python-plain"


def conf(password):
    return dict(
        bootstrap_servers=args.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username=args.user,
        sasl_plain_password=password,
        request_timeout_ms=10000,
    )


producer = KafkaProducer(acks="all", **conf(args.password))
values = [f"plain-{i}".encode() for i in range(100)]
futures = [producer.send(TOPIC, value=v, partition=0) for v in values]
producer.flush(timeout=WAIT_S)
for f in futures:
    check(f.get(timeout=WAIT_S).offset >= 0, "offset in RecordMetadata")
producer.close(timeout=WAIT_S)
log(f"ok: kafka-python produced {len(values)} messages as {args.user} with SASL PLAIN")

consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100, **conf(args.password))
tp = TopicPartition(TOPIC, 0)
consumer.assign([tp])
consumer.seek_to_beginning(tp)
got = []
deadline = time.monotonic() + WAIT_S
while len(got) < len(values):
    if time.monotonic() > deadline:
        fail(f"consumed {len(got)} of {len(values)} in {WAIT_S}s")
    for recs in consumer.poll(timeout_ms=200).values():
        got.extend(r.value for r in recs)
check_eq(got, values, "what kafka-python consumed")
consumer.close()
log("ok: kafka-python consumed them back with SASL PLAIN")


class Captured(logging.Handler):
    """kafka-python reports a failed authentication in its log and then keeps
    trying to bootstrap; the broker's message must be there."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


captured = Captured()
logging.getLogger("kafka").addHandler(captured)
try:
    bad = KafkaProducer(max_block_ms=5000, bootstrap_timeout_ms=5000, **conf("wrong-password"))
    bad.send(TOPIC, b"never").get(timeout=WAIT_S)
    fail("a producer with a wrong password was served")
except (SaslAuthenticationFailedError, KafkaTimeoutError) as e:
    said = [m for m in captured.messages + [str(e)] if "Authentication failed" in m]
    check(said, f"no clear authentication error: {e!r}; kafka-python logged {captured.messages[-5:]}")
    log(f"ok: wrong password refused: {said[0]}")

# SaslHandshake v0 by hand: the PLAIN token then goes unframed (a size and the bytes) and the
# broker answers an empty token the same way; a wrong password closes the connection.
HOST, PORT = args.bootstrap.rsplit(":", 1)


def v0_plain(password):
    s = socket.create_connection((HOST, int(PORT)), timeout=10)
    body = i16(17) + i16(0) + i32(1) + string("raw-v0") + string("PLAIN")
    s.sendall(i32(len(body)) + body)
    size = struct.unpack(">i", recv_exact(s, 4))[0]
    resp = recv_exact(s, size)
    check_eq(struct.unpack(">h", resp[4:6])[0], 0, "SaslHandshake v0 error code")
    token = b"\0" + args.user.encode() + b"\0" + password.encode()
    s.sendall(i32(len(token)) + token)
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


s = v0_plain(args.password)
check_eq(recv_exact(s, 4), i32(0), "the empty PLAIN reply after SaslHandshake v0")
body = i16(3) + i16(1) + i32(2) + string("raw-v0") + i32(-1)
s.sendall(i32(len(body)) + body)
size = recv_exact(s, 4)
check(size is not None, "Metadata after a v0 PLAIN exchange: connection closed")
check_eq(recv_exact(s, struct.unpack(">i", size)[0])[:4], i32(2), "Metadata correlation id after v0 PLAIN")
s.close()
log("ok: SaslHandshake v0 + an unframed PLAIN token authenticates, then Metadata is served")
s = v0_plain("wrong-password")
try:
    check_eq(s.recv(4), b"", "a wrong v0 PLAIN password: expected the connection closed")
except ConnectionResetError:
    pass
log("ok: a wrong password after SaslHandshake v0 closes the connection")
