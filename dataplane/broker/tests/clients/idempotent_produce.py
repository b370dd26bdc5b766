"""The idempotent producer of librdkafka (confluent-kafka, enable.idempotence=true)
while its connections break.

Every client connection goes through a TCP proxy on 127.0.0.1:PROXY_PORT that
forwards to the broker (kafka_clients.rs started it with --advertised-kafka-addr
127.0.0.1:PROXY_PORT). The proxy parses the Produce requests it forwards and counts
the record batches (producer id, epoch, partition, base sequence) the broker
received in full more than once: retries of batches it may already have appended.
Two modes:

--mode cut: every CUT_EVERY_S the proxy cuts all connections: first it keeps
forwarding requests but drops the broker's answers for BLACKHOLE_S (Produce requests
are appended but never acknowledged, so the producer must retry batches the broker
already has), then closes both sides. At least one batch must reach the broker twice.
--mode restart: once part of the messages were acknowledged, the proxy drops the
broker's answers until the broker answered at least one Produce request more (so
the broker appended batches the producer never sees acknowledged), and the script
prints "restart-now"; kafka_clients.rs kills the broker with SIGKILL and starts it
again on the same data directory and port; the script goes on producing (and waits
until the producer saw the connection drop). The producer sends those batches again
to the new process, whose producer state, rebuilt from the log, must recognize them
as duplicates; at least one batch must reach the broker twice.

Either way N numbered messages go to 3 partitions with a short linger and small
batches, so many batches are in flight when a connection breaks. Then a group-less
consumer reads the topic from the beginning, and for each partition the values must
be exactly the ones produced there, each once, in the order produced (no gap, no
duplicate), at the offsets their delivery reports gave. A delivery failure or a
fatal idempotence error of librdkafka fails the script with its text."""

import json
import socket
import struct
import threading
import time
from collections import Counter

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer, TopicPartition

from e2e import (
    WAIT_S,
    admin,
    check,
    conf,
    consumer,
    create_topic,
    exit_on_thread_exception,
    fail,
    fail_now,
    high_watermarks,
    log,
    parse_args,
    poll_until,
)

TOPIC = "idempotent"
PARTITIONS = 3
N = 20000
# Producer pace: CHUNK messages every CHUNK_GAP_S (about 4000 messages/s, 5 s).
CHUNK = 200
CHUNK_GAP_S = 0.05
CUT_EVERY_S = 0.3
BLACKHOLE_S = 0.1
# Cuts that must have happened while the producer was producing.
MIN_CUTS = 5
# The restart mode asks for the restart once this many messages were acknowledged.
RESTART_AFTER_ACKED = N // 4
# How long librdkafka keeps retrying a message (covers a broker restart).
MESSAGE_TIMEOUT_MS = 60000

args = parse_args(
    ("--proxy-port", {"type": int, "required": True}),
    ("--mode", {"choices": ["cut", "restart"], "required": True}),
)
exit_on_thread_exception()
host, port = args.bootstrap.rsplit(":", 1)
UPSTREAM = (host, int(port))


# --- Produce request parsing ------------------------------------------------------------


def uvarint(buf, pos):
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def skip_tags(buf, pos):
    n, pos = uvarint(buf, pos)
    for _ in range(n):
        _, pos = uvarint(buf, pos)
        size, pos = uvarint(buf, pos)
        pos += size
    return pos


def produce_batches(frame):
    """[(partition, producer id, epoch, base sequence, record count)] of the record
    batches in a Produce request frame (without its size); [] for other requests."""
    api_key, version = struct.unpack_from(">hh", frame, 0)
    if api_key != 0:
        return []
    flexible = version >= 9
    pos = 8  # api key, version, correlation id
    (n,) = struct.unpack_from(">h", frame, pos)  # client id (a plain string even in header v2)
    pos += 2 + max(n, 0)
    if flexible:
        pos = skip_tags(frame, pos)
        n, pos = uvarint(frame, pos)  # transactional id
        pos += max(n - 1, 0)
    else:
        (n,) = struct.unpack_from(">h", frame, pos)
        pos += 2 + max(n, 0)
    pos += 6  # acks, timeout

    def count(pos):
        if flexible:
            n, pos = uvarint(frame, pos)
            return n - 1, pos
        return struct.unpack_from(">i", frame, pos)[0], pos + 4

    out = []
    topics, pos = count(pos)
    for _ in range(topics):
        if version >= 13:
            pos += 16  # topic id
        elif flexible:
            n, pos = uvarint(frame, pos)
            pos += n - 1
        else:
            (n,) = struct.unpack_from(">h", frame, pos)
            pos += 2 + n
        partitions, pos = count(pos)
        for _ in range(partitions):
            (partition,) = struct.unpack_from(">i", frame, pos)
            size, pos = count(pos + 4)
            records = frame[pos : pos + max(size, 0)]
            pos += max(size, 0)
            off = 0
            while off + 61 <= len(records):
                (length,) = struct.unpack_from(">i", records, off + 8)
                pid, epoch, seq, n = struct.unpack_from(">qhii", records, off + 43)
                out.append((partition, pid, epoch, seq, n))
                off += 12 + length
            if flexible:
                pos = skip_tags(frame, pos)
        if flexible:
            pos = skip_tags(frame, pos)
    return out


# --- the proxy --------------------------------------------------------------------------


class Proxy:
    """Forwards 127.0.0.1:listen_port to UPSTREAM, one thread per direction and
    connection; cut() breaks every connection open at that moment."""

    class Conn:
        def __init__(self, client, upstream):
            self.client = client
            self.upstream = upstream
            self.blackhole = False
            self.pumps = 2
            self.requests = bytearray()  # request bytes forwarded, not yet a whole frame

        def shut(self):
            for s in (self.client, self.upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __init__(self, listen_port):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", listen_port))
        self.lsock.listen(128)
        self.lock = threading.Lock()
        self.conns = {}  # id -> Conn
        self.accepted = 0
        self.refused = 0  # connections the broker did not accept (it was down)
        self.cuts = 0
        self.swallowed = 0  # bytes of answers dropped during cuts
        self.batches = Counter()  # batch key -> times the broker received it in full
        threading.Thread(target=self.accept_loop, name="proxy-accept", daemon=True).start()

    def accept_loop(self):
        while True:
            client, _ = self.lsock.accept()
            try:
                upstream = socket.create_connection(UPSTREAM, timeout=5)
            except OSError:
                client.close()
                with self.lock:
                    self.refused += 1
                continue
            upstream.settimeout(None)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = self.Conn(client, upstream)
            with self.lock:
                self.conns[id(conn)] = conn
                self.accepted += 1
            threading.Thread(target=self.pump, args=(conn, client, upstream, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(conn, upstream, client, True), daemon=True).start()

    def forwarded_requests(self, conn, data):
        """Counts the Produce batches of every request now forwarded in full."""
        buf = conn.requests
        buf += data
        while len(buf) >= 4:
            (size,) = struct.unpack_from(">i", buf, 0)
            if len(buf) < 4 + size:
                break
            frame = bytes(buf[4 : 4 + size])
            del buf[: 4 + size]
            try:
                batches = produce_batches(frame)
            except (struct.error, IndexError) as exc:
                fail_now(f"proxy: cannot parse a request frame ({exc!r}): {frame[:64].hex()}...")
            with self.lock:
                self.batches.update(batches)

    def pump(self, conn, src, dst, answers):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if answers and conn.blackhole:
                with self.lock:
                    self.swallowed += len(data)
                continue
            try:
                dst.sendall(data)
            except OSError:
                break
            if not answers:
                self.forwarded_requests(conn, data)
        conn.shut()
        with self.lock:
            conn.pumps -= 1
            last = conn.pumps == 0
            if last:
                self.conns.pop(id(conn), None)
        if last:
            conn.client.close()
            conn.upstream.close()

    def blackhole(self):
        """From now on the answers on every open connection are dropped; returns the
        count of answer bytes dropped so far."""
        with self.lock:
            for conn in self.conns.values():
                conn.blackhole = True
            return self.swallowed

    def cut(self):
        with self.lock:
            victims = list(self.conns.values())
        for conn in victims:
            conn.blackhole = True
        time.sleep(BLACKHOLE_S)
        for conn in victims:
            conn.shut()
        with self.lock:
            self.cuts += 1

    def resent(self):
        """Batches the broker received in full more than once."""
        with self.lock:
            return sum(1 for n in self.batches.values() if n > 1), len(self.batches)


# --- setup ------------------------------------------------------------------------------

proxy = Proxy(args.proxy_port)
bootstrap = f"127.0.0.1:{args.proxy_port}"
create_topic(admin(bootstrap), TOPIC, PARTITIONS)

acked = {}  # i -> (partition, offset)
failed = []  # (i, error text)
fatal = []
broken = [0]  # connection failures librdkafka reported
stats = [None]


def on_error(err):
    if err.fatal():
        fatal.append(str(err))
        fail_now(f"librdkafka raised a fatal error: {err}")
    if err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
        broken[0] += 1
    log(f"producer error_cb: {err}")


def on_stats(raw):
    stats[0] = json.loads(raw)


producer = Producer(
    conf(
        bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        batch_num_messages=50,
        max_in_flight_requests_per_connection=5,
        message_timeout_ms=MESSAGE_TIMEOUT_MS,
        retry_backoff_ms=50,
        reconnect_backoff_ms=50,
        reconnect_backoff_max_ms=500,
        # When all brokers are down librdkafka would otherwise forget the broker it
        # learned and start over from the bootstrap address, which takes longer than
        # the connections last between cuts.
        metadata_recovery_strategy="none",
        statistics_interval_ms=500,
        error_cb=on_error,
        stats_cb=on_stats,
    )
)


def on_delivery(err, msg):
    i = int(msg.value())
    if err is not None:
        failed.append((i, str(err)))
        if err.fatal():
            fatal.append(str(err))
    else:
        acked[i] = (msg.partition(), msg.offset())


# --- produce while connections break ----------------------------------------------------

stop_cutting = threading.Event()


def cutter():
    while not stop_cutting.wait(CUT_EVERY_S):
        proxy.cut()


cutter_thread = threading.Thread(target=cutter, name="cutter", daemon=True)
if args.mode == "cut":
    cutter_thread.start()

restart_asked = False
swallowed_before = None
i = 0
next_chunk = time.monotonic()
while i < N:
    for _ in range(min(CHUNK, N - i)):
        while True:
            try:
                producer.produce(TOPIC, value=str(i).encode(), partition=i % PARTITIONS, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        i += 1
    next_chunk += CHUNK_GAP_S
    poll_until(producer, next_chunk)
    if args.mode == "restart" and not restart_asked:
        if swallowed_before is None and len(acked) >= RESTART_AFTER_ACKED:
            # Drop the broker's answers until it answered a Produce request the
            # producer will then never see acknowledged: the killed process appended
            # those batches, and the producer sends them again to the restarted one.
            swallowed_before = proxy.blackhole()
            blackhole_deadline = time.monotonic() + WAIT_S
        elif swallowed_before is not None and proxy.swallowed > swallowed_before:
            restart_asked = True
            broken_before = broken[0]
            log("restart-now")
        elif swallowed_before is not None and time.monotonic() > blackhole_deadline:
            fail(f"the broker answered nothing within {WAIT_S}s while the producer was producing")
log(f"produced {N} messages; {len(acked)} acknowledged by then")
cuts_while_producing = proxy.cuts
if args.mode == "restart":
    check(restart_asked, f"only {len(acked)} messages acknowledged by the end of producing: never asked for the restart")
    deadline = time.monotonic() + WAIT_S
    while broken[0] == broken_before:
        if time.monotonic() > deadline:
            fail(f"the producer saw no disconnect within {WAIT_S}s of asking for the broker restart")
        producer.poll(0.05)

left = producer.flush(MESSAGE_TIMEOUT_MS / 1000 + 5)
stop_cutting.set()
if args.mode == "cut":
    cutter_thread.join(WAIT_S)
resent, batches = proxy.resent()
log(f"proxy: {proxy.accepted} connections ({proxy.refused} refused by the broker), {proxy.cuts} cuts "
    f"({cuts_while_producing} while producing), {proxy.swallowed} answer bytes dropped; "
    f"{batches} batches, {resent} of them received by the broker more than once")
eos = (stats[0] or {}).get("eos", {})
log(f"producer: eos state {eos}, {broken[0]} connection errors reported")
if fatal:
    fail(f"fatal idempotence error: {fatal}")
check(not failed, f"{len(failed)} deliveries failed, e.g. {failed[:5]}")
check(left == 0, f"{left} messages still undelivered after flush")
check(len(acked) == N, f"{len(acked)} of {N} messages acknowledged")
check(eos.get("idemp_state") == "Assigned" and eos.get("producer_id", -1) >= 0,
      f"the producer is not idempotent with a producer id: eos stats {eos}")
check(batches > 0, "the proxy saw no Produce batches")
if args.mode == "cut":
    check(cuts_while_producing >= MIN_CUTS, f"only {cuts_while_producing} cuts while producing")
    check(resent > 0, "no batch reached the broker twice: the cuts forced no retry of a batch the broker had")
else:
    check(resent > 0, "no batch reached the broker twice: no batch the killed process had was sent again")

# --- read everything back -----------------------------------------------------------------

ends = high_watermarks(bootstrap, TOPIC, range(PARTITIONS))
total = sum(ends.values())
c = consumer(bootstrap)
c.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
log_values = {p: [] for p in range(PARTITIONS)}
deadline = time.monotonic() + WAIT_S
got = 0
while got < total:
    if time.monotonic() > deadline:
        fail(f"read {got} of {total} messages back in {WAIT_S}s")
    for m in c.consume(num_messages=1000, timeout=0.2):
        if m.error() is not None:
            fail(f"consumer error: {m.error()}")
        check(m.offset() == len(log_values[m.partition()]),
              f"{TOPIC}/{m.partition()}: offset {m.offset()} after {len(log_values[m.partition()])} messages")
        log_values[m.partition()].append(int(m.value()))
        got += 1
c.close()

problems = []
for p in range(PARTITIONS):
    expected = list(range(p, N, PARTITIONS))
    actual = log_values[p]
    if actual == expected:
        continue
    seen, dups = set(), []
    for off, v in enumerate(actual):
        if v in seen:
            dups.append((off, v))
        seen.add(v)
    missing = sorted(set(expected) - seen)
    jumps = [(off, a, b) for off, (a, b) in enumerate(zip(actual, actual[1:])) if b != a + PARTITIONS]
    problems.append(
        f"{TOPIC}/{p}: {len(actual)} messages, expected {len(expected)}; "
        f"{len(dups)} duplicates (offset, value) e.g. {dups[:5]}; {len(missing)} missing e.g. {missing[:5]}; "
        f"values not followed by the next one (offset, value, next) e.g. {jumps[:5]}"
    )
for i, (p, off) in sorted(acked.items()):
    if len(problems) > 20:
        break
    if off is None or off < 0:
        continue
    if off >= len(log_values[p]) or log_values[p][off] != i:
        problems.append(f"message {i} was acknowledged at {TOPIC}/{p}@{off}, which holds "
                        f"{log_values[p][off] if off < len(log_values[p]) else 'nothing'}")
if problems:
    fail("the log does not hold every message exactly once in order:\n  " + "\n  ".join(problems))
log(f"ok: all {N} messages are in the log exactly once, in order, at their acknowledged offsets ({ends})")
