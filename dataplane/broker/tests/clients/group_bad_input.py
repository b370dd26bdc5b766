"""Bad consumer-group requests, hand-encoded over raw sockets (non-flexible versions:
FindCoordinator v1, JoinGroup v2 and v4, SyncGroup v1, Heartbeat v1, LeaveGroup v1,
OffsetCommit v2, OffsetFetch v2), each answered with Kafka's error code, none of them
disturbing the group a raw member keeps stable between them (it heartbeats after
every step):

- OffsetCommit from an unknown member of the group -> UNKNOWN_MEMBER_ID (25)
- OffsetCommit with the previous generation -> ILLEGAL_GENERATION (22)
- Heartbeat / SyncGroup with an old generation -> ILLEGAL_GENERATION (22)
- Heartbeat for a group that does not exist -> UNKNOWN_MEMBER_ID (25)
- JoinGroup with a session timeout below the minimum or above the maximum
  -> INVALID_SESSION_TIMEOUT (26)
- JoinGroup with an empty group id -> INVALID_GROUP_ID (24)
- JoinGroup whose protocols (or protocol type) do not overlap the group's
  -> INCONSISTENT_GROUP_PROTOCOL (23)
- OffsetCommit with metadata of 4097 bytes -> OFFSET_METADATA_TOO_LARGE (12) for that
  partition, while 4096 bytes in the same request are accepted
- JoinGroup with 2 MiB of protocol metadata -> INVALID_REQUEST (42)
- JoinGroup v4 with no member id -> MEMBER_ID_REQUIRED (79) and a member id to rejoin
  with; rejoining with an id the group never gave -> UNKNOWN_MEMBER_ID (25)

Then OffsetFetch shows exactly the valid commits, the raw member leaves, and a normal
confluent-kafka consumer of the same group starts at those commits, consumes to the
end and commits. Requests go over several connections (a broker with several shards
spreads them), and the broker must keep serving all of them."""

import socket
import struct
import time

from confluent_kafka import Producer

from wire import i8, i16, i32, i64, string, nbytes, array
from e2e import (
    WAIT_S,
    Sent,
    admin,
    check,
    check_eq,
    commit_sync,
    committed_offsets,
    conf,
    create_topic,
    fail,
    group_consumer,
    log,
    parse_args,
    produce_all,
)

args = parse_args()
host, port = args.bootstrap.rsplit(":", 1)
ADDR = (host, int(port))
# How long the broker may take to answer (a JoinGroup waits for the rebalance).
ANSWER_S = 15.0

OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP = 8, 9, 10, 11
HEARTBEAT, LEAVE_GROUP, SYNC_GROUP, API_VERSIONS = 12, 13, 14, 18
NAMES = {
    OFFSET_COMMIT: "OffsetCommit", OFFSET_FETCH: "OffsetFetch", FIND_COORDINATOR: "FindCoordinator",
    JOIN_GROUP: "JoinGroup", HEARTBEAT: "Heartbeat", LEAVE_GROUP: "LeaveGroup", SYNC_GROUP: "SyncGroup",
}
# The versions this script speaks; the broker must support them.
USED = {
    FIND_COORDINATOR: [1], JOIN_GROUP: [2, 4], SYNC_GROUP: [1], HEARTBEAT: [1],
    LEAVE_GROUP: [1], OFFSET_COMMIT: [2], OFFSET_FETCH: [2],
}

NONE, OFFSET_METADATA_TOO_LARGE, ILLEGAL_GENERATION, INCONSISTENT_GROUP_PROTOCOL = 0, 12, 22, 23
INVALID_GROUP_ID, UNKNOWN_MEMBER_ID, INVALID_SESSION_TIMEOUT = 24, 25, 26
INVALID_REQUEST, MEMBER_ID_REQUIRED = 42, 79

TOPIC = "bad-group-input"
PARTITIONS = 2
MESSAGES_PER_PARTITION = 20
GROUP = "raw-group"
SESSION_MS = 6000
REBALANCE_MS = 10000


# --- encoding -------------------------------------------------------------------------


def subscription(topics):
    """ConsumerProtocolSubscription v0."""
    return i16(0) + array(string(t) for t in topics) + nbytes(None)


def assignment(partitions):
    """ConsumerProtocolAssignment v0 for TOPIC."""
    return i16(0) + array([string(TOPIC) + array(i32(p) for p in partitions)]) + nbytes(None)


class Reader:
    def __init__(self, data, what):
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, fmt):
        try:
            (v,) = struct.unpack_from(fmt, self.data, self.pos)
        except struct.error:
            fail(f"{self.what}: response truncated at byte {self.pos} of {len(self.data)}")
        self.pos += struct.calcsize(fmt)
        return v

    def i16(self):
        return self.take(">h")

    def i32(self):
        return self.take(">i")

    def i64(self):
        return self.take(">q")

    def string(self):
        n = self.i16()
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def nbytes(self):
        n = self.i32()
        if n < 0:
            return None
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def array(self, item):
        n = self.i32()
        check(-1 <= n < 100000, f"{self.what}: array length {n}")
        return None if n < 0 else [item() for _ in range(n)]

    def done(self):
        check_eq(len(self.data) - self.pos, 0, f"{self.what}: unparsed bytes at the end of the response")


class Conn:
    """One connection; call() sends one request and returns a Reader of the answer body."""

    next_id = 1

    def __init__(self):
        self.sock = socket.create_connection(ADDR, timeout=ANSWER_S)
        self.sock.settimeout(ANSWER_S)

    def recv_exact(self, n, what):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                fail(f"{what}: no answer within {ANSWER_S}s")
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                fail(f"{what}: the broker closed the connection instead of answering")
            buf += chunk
        return buf

    def call(self, api, version, body, what):
        what = f"{what} ({NAMES.get(api, api)} v{version})"
        cid = Conn.next_id
        Conn.next_id += 1
        header = i16(api) + i16(version) + i32(cid) + string("raw-group-e2e")
        payload = header + body
        self.sock.sendall(i32(len(payload)) + payload)
        (n,) = struct.unpack(">i", self.recv_exact(4, what))
        check(0 <= n <= 64 << 20, f"{what}: response frame size {n}")
        r = Reader(self.recv_exact(n, what), what)
        check_eq(r.i32(), cid, f"{what}: correlation id")
        return r

    def close(self):
        self.sock.close()


def api_versions():
    c = Conn()
    r = c.call(API_VERSIONS, 0, b"", "ApiVersions")
    check_eq(r.i16(), NONE, "ApiVersions error")
    apis = {}
    for key, lo, hi in r.array(lambda: (r.i16(), r.i16(), r.i16())):
        apis[key] = (lo, hi)
    c.close()
    return apis


# --- the requests -----------------------------------------------------------------------


def find_coordinator(c, group):
    r = c.call(FIND_COORDINATOR, 1, string(group) + i8(0), f"FindCoordinator {group}")
    r.i32()  # throttle
    error, message, node, chost, cport = r.i16(), r.string(), r.i32(), r.string(), r.i32()
    r.done()
    return error, message, node, chost, cport


class Joined:
    def __init__(self, r, version):
        r.i32()  # throttle (v2+)
        self.error = r.i16()
        self.generation = r.i32()
        self.protocol = r.string()
        self.leader = r.string()
        self.member_id = r.string()
        self.members = r.array(lambda: (r.string(), r.nbytes()))
        r.done()

    def __repr__(self):
        return (f"error={self.error} generation={self.generation} protocol={self.protocol!r} "
                f"leader={self.leader!r} member_id={self.member_id!r} members={[m for m, _ in self.members or []]}")


def join(c, group, member_id="", protocols=None, protocol_type="consumer", session_ms=SESSION_MS, version=2,
         what="JoinGroup"):
    protocols = protocols if protocols is not None else [("range", subscription([TOPIC]))]
    body = (
        string(group) + i32(session_ms) + i32(REBALANCE_MS) + string(member_id) + string(protocol_type)
        + array(string(name) + nbytes(meta) for name, meta in protocols)
    )
    return Joined(c.call(JOIN_GROUP, version, body, what), version)


def sync(c, group, generation, member_id, assignments, what="SyncGroup"):
    body = string(group) + i32(generation) + string(member_id) + array(
        string(m) + nbytes(a) for m, a in assignments
    )
    r = c.call(SYNC_GROUP, 1, body, what)
    r.i32()
    error, data = r.i16(), r.nbytes()
    r.done()
    return error, data


def heartbeat(c, group, generation, member_id, what="Heartbeat"):
    r = c.call(HEARTBEAT, 1, string(group) + i32(generation) + string(member_id), what)
    r.i32()
    error = r.i16()
    r.done()
    return error


def leave(c, group, member_id):
    r = c.call(LEAVE_GROUP, 1, string(group) + string(member_id), f"LeaveGroup {group}")
    r.i32()
    error = r.i16()
    r.done()
    return error


def offset_commit(c, group, generation, member_id, offsets, what="OffsetCommit"):
    """offsets: [(partition, offset, metadata)] of TOPIC; returns {partition: error}."""
    body = (
        string(group) + i32(generation) + string(member_id) + i64(-1)
        + array([string(TOPIC) + array(i32(p) + i64(o) + string(m) for p, o, m in offsets)])
    )
    r = c.call(OFFSET_COMMIT, 2, body, what)
    out = {}
    for name, parts in r.array(lambda: (r.string(), r.array(lambda: (r.i32(), r.i16())))):
        check_eq(name, TOPIC, f"{what}: topic in the response")
        for p, e in parts:
            out[p] = e
    r.done()
    check_eq(sorted(out), sorted(p for p, _, _ in offsets), f"{what}: partitions in the response")
    return out


def offset_fetch(c, group, partitions):
    what = f"OffsetFetch {group}"
    r = c.call(OFFSET_FETCH, 2, string(group) + array([string(TOPIC) + array(i32(p) for p in partitions)]), what)
    out = {}
    for name, parts in r.array(lambda: (r.string(), r.array(lambda: (r.i32(), r.i64(), r.string(), r.i16())))):
        check_eq(name, TOPIC, f"{what}: topic in the response")
        for p, o, m, e in parts:
            check_eq(e, NONE, f"{what}: error of partition {p}")
            out[p] = (o, m)
    check_eq(r.i16(), NONE, f"{what}: error")
    r.done()
    return out


# --- the checks -------------------------------------------------------------------------

apis = api_versions()
for key, versions in USED.items():
    lo, hi = apis.get(key, (None, None))
    check(lo is not None and all(lo <= v <= hi for v in versions),
          f"the broker supports {NAMES[key]} {'v%d..v%d' % (lo, hi) if lo is not None else 'not at all'}; "
          f"this script uses v{versions}")

create_topic(admin(args.bootstrap), TOPIC, PARTITIONS)
produce_all(
    Producer(conf(args.bootstrap, acks="all")),
    [Sent(TOPIC, p, None, f"{p}-{i}".encode()) for p in range(PARTITIONS) for i in range(MESSAGES_PER_PARTITION)],
)

main = Conn()
error, message, node, chost, cport = find_coordinator(main, GROUP)
check_eq((error, node, f"{chost}:{cport}"), (NONE, 0, args.bootstrap), f"FindCoordinator {GROUP} (message {message!r})")
log(f"ok: the coordinator of {GROUP} is node 0 at {chost}:{cport}")

# A raw member forms the group: generation 1, leader of itself.
j = join(main, GROUP, what="first JoinGroup")
check_eq((j.error, j.generation, j.protocol), (NONE, 1, "range"), f"first JoinGroup v2 of {GROUP}: {j}")
check(j.member_id, f"first JoinGroup: no member id: {j}")
check_eq(j.leader, j.member_id, "leader of a group of one")
check_eq([m for m, _ in j.members], [j.member_id], "members in the leader's JoinGroup answer")
check_eq(j.members[0][1], subscription([TOPIC]), "the member's protocol metadata, as the leader sees it")
MEMBER = j.member_id
MINE = assignment(range(PARTITIONS))
check_eq(sync(main, GROUP, 1, MEMBER, [(MEMBER, MINE)]), (NONE, MINE), "SyncGroup of generation 1")
check_eq(offset_commit(main, GROUP, 1, MEMBER, [(0, 3, "gen1"), (1, 4, None)]), {0: NONE, 1: NONE},
         "OffsetCommit of generation 1")
log(f"ok: a raw member {MEMBER!r} formed {GROUP} (generation 1) and committed")

# The leader rejoins: generation 2.
j = join(main, GROUP, member_id=MEMBER, what="the leader's rejoin")
check_eq((j.error, j.generation, j.member_id, j.leader), (NONE, 2, MEMBER, MEMBER), f"rejoin of the leader: {j}")
check_eq(sync(main, GROUP, 2, MEMBER, [(MEMBER, MINE)]), (NONE, MINE), "SyncGroup of generation 2")
GENERATION = 2


def healthy(after):
    """The raw member is still in a stable group with the same generation."""
    check_eq(heartbeat(main, GROUP, GENERATION, MEMBER, f"heartbeat after {after}"), NONE,
             f"the raw member's heartbeat after {after}")
    log(f"ok: {after}")


healthy("the rejoin: generation 2")

other = Conn()
check_eq(offset_commit(other, GROUP, 1, MEMBER, [(0, 900, "stale"), (1, 900, "stale")]),
         {0: ILLEGAL_GENERATION, 1: ILLEGAL_GENERATION}, "OffsetCommit with the previous generation")
healthy("OffsetCommit with generation 1 -> ILLEGAL_GENERATION")
check_eq(offset_commit(other, GROUP, GENERATION, MEMBER, [(0, 5, "m0"), (1, 7, None)]), {0: NONE, 1: NONE},
         "OffsetCommit of generation 2 (from another connection)")
healthy("OffsetCommit of generation 2 from another connection")

check_eq(offset_commit(other, GROUP, GENERATION, "no-such-member", [(0, 901, None), (1, 901, None)]),
         {0: UNKNOWN_MEMBER_ID, 1: UNKNOWN_MEMBER_ID}, "OffsetCommit from an unknown member")
healthy("OffsetCommit from an unknown member -> UNKNOWN_MEMBER_ID")

check_eq(heartbeat(other, GROUP, 1, MEMBER), ILLEGAL_GENERATION, "Heartbeat with the previous generation")
check_eq(sync(other, GROUP, 1, MEMBER, [])[0], ILLEGAL_GENERATION, "SyncGroup with the previous generation")
healthy("Heartbeat and SyncGroup with generation 1 -> ILLEGAL_GENERATION")

check_eq(heartbeat(other, "no-such-group", 1, "nobody"), UNKNOWN_MEMBER_ID, "Heartbeat for a group that does not exist")
healthy("Heartbeat for an unknown group -> UNKNOWN_MEMBER_ID")

for session_ms in [1000, 5999, 1800001]:
    j = join(other, GROUP, session_ms=session_ms, what=f"JoinGroup with session timeout {session_ms} ms")
    check_eq(j.error, INVALID_SESSION_TIMEOUT, f"JoinGroup with session timeout {session_ms} ms: {j}")
healthy("JoinGroup with session timeouts 1000, 5999 and 1800001 ms -> INVALID_SESSION_TIMEOUT")

j = join(other, "", what="JoinGroup with an empty group id")
check_eq(j.error, INVALID_GROUP_ID, f"JoinGroup with an empty group id: {j}")
healthy("JoinGroup with an empty group id -> INVALID_GROUP_ID")

j = join(other, GROUP, protocols=[("roundrobin", subscription([TOPIC]))], what="JoinGroup with another protocol")
check_eq(j.error, INCONSISTENT_GROUP_PROTOCOL, f"JoinGroup offering only roundrobin to a range group: {j}")
j = join(other, GROUP, protocol_type="connect", what="JoinGroup with another protocol type")
check_eq(j.error, INCONSISTENT_GROUP_PROTOCOL, f"JoinGroup with protocol type connect to a consumer group: {j}")
healthy("JoinGroup with no common protocol / another protocol type -> INCONSISTENT_GROUP_PROTOCOL")

check_eq(offset_commit(other, GROUP, GENERATION, MEMBER, [(0, 902, "x" * 4097), (1, 8, "y" * 4096)]),
         {0: OFFSET_METADATA_TOO_LARGE, 1: NONE}, "OffsetCommit with 4097 bytes of metadata (p0) and 4096 (p1)")
healthy("OffsetCommit with 4097 bytes of metadata -> OFFSET_METADATA_TOO_LARGE; 4096 accepted")

big = Conn()
j = join(big, "big-metadata-group", protocols=[("range", b"\x00" * (2 << 20))], what="JoinGroup with 2 MiB metadata")
check_eq(j.error, INVALID_REQUEST, f"JoinGroup with 2 MiB of protocol metadata: {j}")
big.close()
healthy("JoinGroup with 2 MiB of protocol metadata -> INVALID_REQUEST")

v4 = Conn()
j = join(v4, "v4-group", version=4, what="JoinGroup v4 without a member id")
check_eq(j.error, MEMBER_ID_REQUIRED, f"JoinGroup v4 without a member id: {j}")
check(j.member_id, f"MEMBER_ID_REQUIRED came without a member id: {j}")
given = j.member_id
j = join(v4, "v4-group", member_id=given + "-forged", version=4, what="JoinGroup v4 with a forged member id")
check_eq(j.error, UNKNOWN_MEMBER_ID, f"JoinGroup v4 with a member id the group never gave: {j}")
j = join(v4, "v4-group", member_id=given, version=4, what="JoinGroup v4 with the given member id")
check_eq((j.error, j.generation, j.member_id, j.leader), (NONE, 1, given, given), f"JoinGroup v4 rejoin: {j}")
check_eq(leave(v4, "v4-group", given), NONE, "LeaveGroup of v4-group")
v4.close()
healthy("JoinGroup v4: MEMBER_ID_REQUIRED, then UNKNOWN_MEMBER_ID for a forged id, then joined")

expected = {0: (5, "m0"), 1: (8, "y" * 4096)}
check_eq(offset_fetch(other, GROUP, range(PARTITIONS)), expected, f"OffsetFetch of {GROUP} after all of it")
check_eq(leave(main, GROUP, MEMBER), NONE, f"LeaveGroup of the raw member")
main.close()
other.close()
log("ok: only the valid commits are there; the raw member left")

# A normal consumer of the same group starts at those commits and finishes the job.
c = group_consumer(args.bootstrap, GROUP, auto_offset_reset="error")
c.subscribe([TOPIC])
first = {}
count = 0
want = sum(MESSAGES_PER_PARTITION - o for o, _ in expected.values())
deadline = time.monotonic() + WAIT_S
while count < want:
    if time.monotonic() > deadline:
        fail(f"the confluent-kafka consumer of {GROUP} got {count} of {want} messages in {WAIT_S}s")
    for m in c.consume(num_messages=100, timeout=0.2):
        if m.error() is not None:
            fail(f"the confluent-kafka consumer of {GROUP}: {m.error()}")
        first.setdefault(m.partition(), m.offset())
        count += 1
check_eq(first, {p: o for p, (o, _) in expected.items()}, f"first offsets the confluent-kafka consumer of {GROUP} read")
err = commit_sync(c)
check(err is None, f"commit of the confluent-kafka consumer: {err}")
c.close()
check_eq(committed_offsets(args.bootstrap, GROUP, TOPIC, range(PARTITIONS)),
         {p: MESSAGES_PER_PARTITION for p in range(PARTITIONS)}, f"committed offsets of {GROUP} at the end")
log(f"ok: a confluent-kafka consumer of {GROUP} resumed at the raw member's commits and committed the ends")
