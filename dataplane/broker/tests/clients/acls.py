"""ACLs end to end: CreateAcls / DescribeAcls / DeleteAcls with confluent-kafka's and
kafka-python's admin clients, and every API an unauthorised client tries refused with
Kafka's error for the resource, then allowed once an ACL grants it.

The broker runs with --authorization true --super-users User:admin and the hidden,
test-only --test-only-principal-from-client-id: a request runs as User:<client.id>,
so client.id "admin" is the superuser and "alice" a principal with no ACLs (until the
superuser gives her some). Steps:
1. admin creates topics acl-t (2 partitions) and other-t, produces to acl-t and commits
   offsets for group acl-g.
2. alice, with no ACLs, is refused on every API she tries: Metadata (the topic is left
   out of a full listing, TOPIC_AUTHORIZATION_FAILED by name), Produce, InitProducerId
   (idempotent producer), FindCoordinator/JoinGroup (group consumer), OffsetFetch,
   OffsetCommit, DescribeGroups, DeleteGroups, ListGroups (an empty list), CreateTopics,
   DeleteTopics, CreatePartitions, DescribeConfigs (topic and broker), AlterConfigs,
   IncrementalAlterConfigs, ElectLeaders, CreateAcls, DeleteAcls; with DESCRIBE only,
   Produce and Fetch themselves; with kafka-python DescribeCluster, DescribeAcls,
   ListPartitionReassignments, AlterPartitionReassignments. Her admin connection keeps
   working after the refusals.
3. admin grants alice READ+WRITE on acl-t (literal), READ on groups prefixed "acl-"
   and IDEMPOTENT_WRITE on the cluster; DescribeAcls lists exactly those (MATCH finds
   the literal and the prefixed ones). alice then produces (idempotent), reads with a
   group from the committed offsets and commits; OffsetDelete and DeleteGroups (DELETE
   on the group) stay refused.
4. A DENY WRITE for User:* on acl-t wins over alice's ALLOW: her produce is refused
   while her reads still work; DeleteAcls removes exactly that binding (and answers
   it); her produce works again. kafka-python creates, lists and deletes a binding.
5. Bad input over a raw socket as admin: a CreateAcls with an unknown resource type
   (42), an unknown operation (99) and a CLUSTER binding with a bad name, beside one
   valid binding: each bad one is answered INVALID_REQUEST with a message, the valid
   one is stored; DescribeAcls with an unknown pattern type is INVALID_REQUEST; the same
   connection then lists the ACLs, and alice's clients are unaffected. alice's raw
   ListOffsets and OffsetForLeaderEpoch (which clients send only for topics they may
   see) are TOPIC_AUTHORIZATION_FAILED on other-t and answered on acl-t.
6. The admin APIs of the other features, as alice (READ+WRITE on acl-t from step 3) and
   as admin: DeleteRecords (DELETE on the topic; alice's READ and WRITE do not imply it)
   TOPIC_AUTHORIZATION_FAILED for alice and the log start unchanged, then moved by admin;
   AlterUserScramCredentials (ALTER on the cluster) CLUSTER_AUTHORIZATION_FAILED for
   alice and no credential stored, then stored by admin;
   DescribeUserScramCredentials (DESCRIBE on the cluster) refused for alice, answered
   for admin; DescribeProducers (READ on the topic) answered for alice on acl-t and
   TOPIC_AUTHORIZATION_FAILED on other-t; AlterReplicaLogDirs (ALTER on the cluster)
   CLUSTER_AUTHORIZATION_FAILED per partition for alice, answered for admin;
   DescribeLogDirs v3 (DESCRIBE on the cluster) over a raw socket: alice gets
   CLUSTER_AUTHORIZATION_FAILED and no directory, admin the data directory.
"""

import socket
import struct
import time

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    ElectionType,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
import kafka.admin
import kafka.errors
from kafka import KafkaAdminClient
from kafka import TopicPartition as KpTopicPartition

from e2e import (
    WAIT_S,
    Sent,
    check,
    check_eq,
    commit_sync,
    conf,
    consumer,
    create_topic,
    error_code,
    expect_error,
    expect_ok,
    fail,
    group_consumer,
    log,
    parse_args,
    produce_all,
)
from wire import array, i8, i16, i32, string

TOPIC = "acl-t"
GROUP = "acl-g"
# A topic alice never gets an ACL for.
OTHER = "other-t"
PARTITIONS = 2
TAF = KafkaError.TOPIC_AUTHORIZATION_FAILED
GAF = KafkaError.GROUP_AUTHORIZATION_FAILED
CAF = KafkaError.CLUSTER_AUTHORIZATION_FAILED

args = parse_args()
B = args.bootstrap


def as_user(user, **extra):
    """librdkafka settings of a client whose principal is User:<user> (the
    test-only client.id mapping)."""
    return conf(B, client_id=user, **extra)


def admin_of(user):
    return AdminClient(as_user(user))


def kp_free_alter_configs():
    """alice's AlterConfigs (API 33; deprecated in confluent-kafka, still sent)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        res = ConfigResource(ConfigResource.Type.TOPIC, TOPIC, set_config={"retention.ms": "1000"})
        return alice.alter_configs([res])


def kp_admin(user):
    return KafkaAdminClient(bootstrap_servers=B, client_id=user, request_timeout_ms=int(WAIT_S * 1000))


adm = admin_of("admin")
alice = admin_of("alice")

# 1. The superuser sets the stage.
create_topic(adm, TOPIC, PARTITIONS)
create_topic(adm, OTHER, 1)
produce_all(
    Producer(as_user("admin", acks="all")),
    [Sent(TOPIC, i % PARTITIONS, None, f"admin-{i}".encode()) for i in range(10)],
)
admin_group = group_consumer(B, GROUP, client_id="admin")
err = commit_sync(admin_group, [TopicPartition(TOPIC, 0, 3), TopicPartition(TOPIC, 1, 2)])
check(err is None, f"admin's commit for {GROUP}: {err}")
admin_group.close()
log("ok: admin created the topic, produced and committed")


# 2. alice has no ACLs.
def one_future(fs, what):
    check_eq(len(fs), 1, f"futures of {what}")
    return next(iter(fs.values()))


def produce_refused(user, code, what, **extra):
    """One message from `user` must fail delivery with `code`."""
    p = Producer(as_user(user, acks="all", message_timeout_ms=int(WAIT_S * 1000), **extra))
    results = []
    p.produce(TOPIC, b"refused?", partition=0, on_delivery=lambda e, m: results.append(e))
    deadline = time.monotonic() + WAIT_S
    while not results and time.monotonic() < deadline:
        p.poll(0.1)
    check(results, f"{what}: no delivery report within {WAIT_S}s")
    got = results[0]
    check(got is not None, f"{what}: delivered, expected {KafkaError(code).name()}")
    if got.code() == KafkaError._FATAL:
        # librdkafka makes an idempotent producer's InitProducerId refusal a fatal
        # error; the delivery report says _FATAL and the text names the cause.
        check(KafkaError(code).name() in str(got) or "uthorization" in str(got), f"{what}: {got}")
    else:
        check_eq(got.code(), code, f"{what}: delivery error {got}")
    log(f"ok: {what} -> {got}")


def produce_ok(user, what, **extra):
    p = Producer(as_user(user, acks="all", **extra))
    produce_all(p, [Sent(TOPIC, i % PARTITIONS, None, f"{user}-{i}".encode()) for i in range(4)])
    log(f"ok: {what}")


def consumer_error(c, code, what, ignore=()):
    """The consumer's next error, other than those in `ignore`, must be `code`."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for msg in c.consume(num_messages=100, timeout=0.2):
            if msg.error() is None:
                fail(f"{what}: consumed {msg.topic()}/{msg.partition()}@{msg.offset()}, expected an error")
            if msg.error().code() in ignore:
                continue
            if msg.error().code() == code:
                log(f"ok: {what} -> {msg.error().name()}")
                return
            fail(f"{what}: expected {KafkaError(code).name()}, got {msg.error()}")
    fail(f"{what}: no error within {WAIT_S}s")


def metadata_of(client):
    return client.list_topics(timeout=WAIT_S)


md = metadata_of(alice)
check(TOPIC not in md.topics, f"a full Metadata listing shows alice {TOPIC}: {list(md.topics)}")
named = alice.list_topics(topic=TOPIC, timeout=WAIT_S).topics[TOPIC]
check(named.error is not None and named.error.code() == TAF, f"Metadata of {TOPIC} for alice: {named.error}")
log("ok: Metadata leaves the topic out, and names it TOPIC_AUTHORIZATION_FAILED")

produce_refused("alice", TAF, "alice's Produce")


def init_producer_id_refused(user):
    """An idempotent producer asks InitProducerId at start, before any topic; the
    refusal reaches error_cb (librdkafka makes it a fatal error)."""
    errors = []
    p = Producer(as_user(user, enable_idempotence=True, error_cb=errors.append))
    deadline = time.monotonic() + WAIT_S
    while not errors and time.monotonic() < deadline:
        try:
            p.poll(0.1)
        except KafkaException as exc:  # a fatal error may be raised from poll()
            errors.append(exc.args[0])
    check(errors, f"{user}'s idempotent producer: no error within {WAIT_S}s")
    e = errors[0]
    check(
        e.code() == CAF or (e.code() == KafkaError._FATAL and "luster authorization" in str(e)),
        f"{user}'s idempotent producer: expected CLUSTER_AUTHORIZATION_FAILED, got {e}",
    )
    log(f"ok: {user}'s InitProducerId -> {e}")


init_producer_id_refused("alice")

grouped = group_consumer(B, GROUP, client_id="alice")
grouped.subscribe([TOPIC])
consumer_error(grouped, GAF, "alice's group consumer (FindCoordinator/JoinGroup)")
grouped.close()

expect_error(
    one_future(alice.list_consumer_group_offsets([ConsumerGroupTopicPartitions(GROUP)]), "offsets"),
    GAF,
    "alice's OffsetFetch",
)
expect_error(
    one_future(
        alice.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(GROUP, [TopicPartition(TOPIC, 0, 1)])]
        ),
        "alter offsets",
    ),
    GAF,
    "alice's OffsetCommit",
)
expect_error(one_future(alice.describe_consumer_groups([GROUP]), "describe groups"), GAF, "alice's DescribeGroups")
expect_error(one_future(alice.delete_consumer_groups([GROUP]), "delete groups"), GAF, "alice's DeleteGroups")
listed = expect_ok(alice.list_consumer_groups(request_timeout=WAIT_S), "alice's ListGroups")
check_eq([g.group_id for g in listed.valid], [], "groups listed to alice")
log("ok: alice's ListGroups lists no group")
expect_error(
    one_future(alice.create_topics([NewTopic("acl-new", 1, 1)], request_timeout=WAIT_S), "create"),
    TAF,
    "alice's CreateTopics",
)
expect_error(one_future(alice.delete_topics([TOPIC], request_timeout=WAIT_S), "delete"), TAF, "alice's DeleteTopics")
expect_error(
    one_future(alice.create_partitions([NewPartitions(TOPIC, 4)], request_timeout=WAIT_S), "partitions"),
    TAF,
    "alice's CreatePartitions",
)
topic_res = ConfigResource(ConfigResource.Type.TOPIC, TOPIC)
broker_res = ConfigResource(ConfigResource.Type.BROKER, "0")
expect_error(one_future(alice.describe_configs([topic_res]), "describe configs"), TAF, "alice's DescribeConfigs (topic)")
expect_error(one_future(alice.describe_configs([broker_res]), "describe configs"), CAF, "alice's DescribeConfigs (broker)")
expect_error(
    one_future(
        alice.incremental_alter_configs(
            [
                ConfigResource(
                    ConfigResource.Type.TOPIC,
                    TOPIC,
                    incremental_configs=[
                        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
                    ],
                )
            ]
        ),
        "incremental alter",
    ),
    TAF,
    "alice's IncrementalAlterConfigs",
)
expect_error(
    one_future(kp_free_alter_configs(), "alter"),
    TAF,
    "alice's AlterConfigs",
)
expect_error(
    alice.elect_leaders(ElectionType.PREFERRED, [TopicPartition(TOPIC, 0)]),
    CAF,
    "alice's ElectLeaders",
)
mine = AclBinding(
    ResourceType.TOPIC,
    TOPIC,
    ResourcePatternType.LITERAL,
    "User:alice",
    "*",
    AclOperation.ALL,
    AclPermissionType.ALLOW,
)
expect_error(one_future(alice.create_acls([mine], request_timeout=WAIT_S), "create acls"), CAF, "alice's CreateAcls")
any_filter = AclBindingFilter(
    ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY, AclPermissionType.ANY
)
expect_error(
    one_future(alice.delete_acls([any_filter], request_timeout=WAIT_S), "delete acls"), CAF, "alice's DeleteAcls"
)


# With DESCRIBE only (Metadata answers, so the clients send the requests themselves),
# Produce and Fetch are refused by those APIs.
describe_only = AclBinding(
    ResourceType.TOPIC, TOPIC, ResourcePatternType.LITERAL, "User:alice", "*", AclOperation.DESCRIBE, AclPermissionType.ALLOW
)
expect_ok(one_future(adm.create_acls([describe_only], request_timeout=WAIT_S), "describe"), "admin grants DESCRIBE")
check(TOPIC in metadata_of(alice).topics, "alice's Metadata listing with DESCRIBE")
produce_refused("alice", TAF, "alice's Produce with DESCRIBE only")
fetcher = group_consumer(B, "unused", client_id="alice", auto_offset_reset="earliest")
fetcher.assign([TopicPartition(TOPIC, 0, 0)])
# The Python client needs a group.id, so librdkafka also looks for that group's
# coordinator: GROUP_AUTHORIZATION_FAILED errors for it may come first.
consumer_error(fetcher, TAF, "alice's Fetch with DESCRIBE only", ignore=(GAF,))
fetcher.close()
removed = expect_ok(
    one_future(
        adm.delete_acls(
            [
                AclBindingFilter(
                    ResourceType.TOPIC,
                    TOPIC,
                    ResourcePatternType.LITERAL,
                    "User:alice",
                    "*",
                    AclOperation.DESCRIBE,
                    AclPermissionType.ALLOW,
                )
            ],
            request_timeout=WAIT_S,
        ),
        "delete describe",
    ),
    "admin deletes the DESCRIBE grant",
)
check_eq(list(map(str, removed)), [str(describe_only)], "DeleteAcls of the DESCRIBE grant")

# kafka-python for the APIs confluent-kafka does not send.
def kp_refused(call, code, what):
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - the error class carries the code
        got = getattr(exc, "errno", None)
        check(got == code, f"{what}: expected error {code}, got {exc!r}")
        log(f"ok: {what} -> {type(exc).__name__}")
        return
    fail(f"{what}: expected error {code}, but it succeeded: {repr(result)[:300]}")


kp_alice = kp_admin("alice")
kp_refused(lambda: kp_alice.describe_cluster(), CAF, "alice's DescribeCluster")
# confluent-kafka 2.16's describe_acls drops DescribeAcls' top-level error (it
# returns []); kafka-python reports it.
kp_refused(
    lambda: kp_alice.describe_acls(kafka.admin.ACLFilter(
        principal=None,
        host="*",
        operation=kafka.admin.ACLOperation.ANY,
        permission_type=kafka.admin.ACLPermissionType.ANY,
        resource_pattern=kafka.admin.ResourcePatternFilter(kafka.admin.ResourceType.ANY, None, kafka.admin.ACLResourcePatternType.ANY),
    )),
    CAF,
    "alice's DescribeAcls",
)
kp_refused(lambda: kp_alice.list_partition_reassignments(), CAF, "alice's ListPartitionReassignments")
kp_refused(
    lambda: kp_alice.alter_partition_reassignments({KpTopicPartition(TOPIC, 0): [0]}),
    CAF,
    "alice's AlterPartitionReassignments",
)
kp_alice.close()
# The refusals left alice's admin connection serving.
check(TOPIC not in metadata_of(alice).topics, "alice's admin client after the refusals")

# 3. The superuser grants alice what a producer and a group consumer need.
grants = [
    AclBinding(ResourceType.TOPIC, TOPIC, ResourcePatternType.LITERAL, "User:alice", "*", AclOperation.READ, AclPermissionType.ALLOW),
    AclBinding(ResourceType.TOPIC, TOPIC, ResourcePatternType.LITERAL, "User:alice", "*", AclOperation.WRITE, AclPermissionType.ALLOW),
    AclBinding(ResourceType.GROUP, "acl-", ResourcePatternType.PREFIXED, "User:alice", "*", AclOperation.READ, AclPermissionType.ALLOW),
    AclBinding(ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL, "User:alice", "*", AclOperation.IDEMPOTENT_WRITE, AclPermissionType.ALLOW),
]
for b, f in adm.create_acls(grants, request_timeout=WAIT_S).items():
    expect_ok(f, f"admin's CreateAcls {b}")
described = expect_ok(adm.describe_acls(any_filter, request_timeout=WAIT_S), "admin's DescribeAcls")
check_eq(sorted(map(str, described)), sorted(map(str, grants)), "DescribeAcls after the grants")
topic_filter = AclBindingFilter(
    ResourceType.TOPIC, TOPIC, ResourcePatternType.MATCH, None, None, AclOperation.ANY, AclPermissionType.ANY
)
matched = expect_ok(adm.describe_acls(topic_filter, request_timeout=WAIT_S), "DescribeAcls MATCH")
check_eq(len(matched), 2, f"bindings that MATCH topic {TOPIC}: {matched}")
group_filter = AclBindingFilter(
    ResourceType.GROUP, GROUP, ResourcePatternType.MATCH, None, None, AclOperation.ANY, AclPermissionType.ANY
)
matched = expect_ok(adm.describe_acls(group_filter, request_timeout=WAIT_S), "DescribeAcls MATCH group")
check_eq(len(matched), 1, f"bindings that MATCH group {GROUP} (the prefix): {matched}")
log("ok: CreateAcls stored the grants; DescribeAcls lists them, MATCH finds literal and prefixed")

check(TOPIC in metadata_of(alice).topics, "alice's Metadata listing after the grants")
produce_ok("alice", "alice produces (idempotent) after the grants", enable_idempotence=True)
c = group_consumer(B, GROUP, client_id="alice")
c.subscribe([TOPIC])
got = 0
deadline = time.monotonic() + WAIT_S
while got < 9 and time.monotonic() < deadline:
    for msg in c.consume(num_messages=100, timeout=0.2):
        check(msg.error() is None, f"alice's group consumer: {msg.error()}")
        got += 1
# From the committed 3 and 2: 5 of admin's 10 (5 per partition), plus alice's 4.
check_eq(got, 9, "messages alice's group consumer read from the committed offsets")
check(commit_sync(c) is None, "alice's commit after the grants")
c.close()
log("ok: alice's group consumer reads from the committed offsets and commits")
# READ on the group does not allow DELETE: OffsetDelete and DeleteGroups stay refused
# (their FindCoordinator passes, since READ implies DESCRIBE).
kp_alice = kp_admin("alice")
kp_refused(lambda: kp_alice.delete_group_offsets(GROUP, [KpTopicPartition(TOPIC, 0)]), GAF, "alice's OffsetDelete")
kp_alice.close()
expect_error(one_future(alice.delete_consumer_groups([GROUP]), "delete groups"), GAF, "alice's DeleteGroups with READ only")

# 4. DENY wins over ALLOW, and DeleteAcls answers what it removed.
deny = AclBinding(ResourceType.TOPIC, TOPIC, ResourcePatternType.LITERAL, "User:*", "*", AclOperation.WRITE, AclPermissionType.DENY)
expect_ok(one_future(adm.create_acls([deny], request_timeout=WAIT_S), "deny"), "admin's CreateAcls DENY")
produce_refused("alice", TAF, "alice's Produce under a DENY WRITE for User:*")
reader = group_consumer(B, "acl-reader", client_id="alice")
reader.assign([TopicPartition(TOPIC, 0, 0)])
msgs = []
deadline = time.monotonic() + WAIT_S
while not msgs and time.monotonic() < deadline:
    msgs = [m for m in reader.consume(num_messages=10, timeout=0.2)]
check(msgs and msgs[0].error() is None, f"alice's Fetch under the DENY WRITE: {msgs[:1]}")
reader.close()
deny_filter = AclBindingFilter(
    ResourceType.TOPIC, TOPIC, ResourcePatternType.LITERAL, None, None, AclOperation.ANY, AclPermissionType.DENY
)
removed = expect_ok(one_future(adm.delete_acls([deny_filter], request_timeout=WAIT_S), "delete deny"), "DeleteAcls")
check_eq(list(map(str, removed)), [str(deny)], "bindings DeleteAcls removed")
produce_ok("alice", "alice produces again once the DENY is deleted")
log("ok: DENY wins over ALLOW; DeleteAcls returned the binding it removed")

# kafka-python's ACL API against the same broker: create, describe, delete.
kp = kp_admin("admin")
kp_acl = kafka.admin.ACL(
    principal="User:bob",
    host="*",
    operation=kafka.admin.ACLOperation.READ,
    permission_type=kafka.admin.ACLPermissionType.ALLOW,
    resource_pattern=kafka.admin.ResourcePattern(
        kafka.admin.ResourceType.TOPIC, "kp-", kafka.admin.ACLResourcePatternType.PREFIXED
    ),
)
created = kp.create_acls([kp_acl])
check(not created["failed"] and len(created["succeeded"]) == 1, f"kafka-python create_acls: {created}")
bob = kafka.admin.ACLFilter(
    principal="User:bob",
    host=None,
    operation=kafka.admin.ACLOperation.ANY,
    permission_type=kafka.admin.ACLPermissionType.ANY,
    resource_pattern=kafka.admin.ResourcePatternFilter(
        kafka.admin.ResourceType.ANY, None, kafka.admin.ACLResourcePatternType.ANY
    ),
)
listed, err = kp.describe_acls(bob)
check(err is kafka.errors.NoError and list(map(repr, listed)) == [repr(kp_acl)], f"kafka-python describe_acls: {listed} {err}")
[(_, gone, err)] = kp.delete_acls([bob])
check(err is kafka.errors.NoError and list(map(repr, gone)) == [repr(kp_acl)], f"kafka-python delete_acls: {gone} {err}")
check_eq(kp.describe_acls(bob)[0], [], "User:bob's ACLs after kafka-python's delete_acls")
kp.close()
log("ok: kafka-python create_acls / describe_acls / delete_acls")

# 5. Bad input over a raw socket, as the superuser.
ADDR = (B.rsplit(":", 1)[0], int(B.rsplit(":", 1)[1]))


def request(sock, api_key, version, correlation_id, body):
    head = i16(api_key) + i16(version) + i32(correlation_id) + string("admin")
    payload = head + body
    sock.sendall(i32(len(payload)) + payload)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    resp = recv_exact(sock, size)
    check_eq(struct.unpack(">i", resp[:4])[0], correlation_id, "correlation id")
    return resp[4:]


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            fail("the broker closed the connection")
        buf += chunk
    return buf


def creation(rt, name, pt, op, perm=3, principal="User:bob", host="*"):
    return i8(rt) + string(name) + i8(pt) + string(principal) + string(host) + i8(op) + i8(perm)


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s


sock = socket.create_connection(ADDR, timeout=WAIT_S)
body = array(
    [
        creation(42, "t", 3, 3),  # unknown resource type
        creation(2, "bad-op", 3, 99),  # unknown operation
        creation(4, "not-the-cluster", 3, 7),  # CLUSTER must be kafka-cluster
        creation(2, "raw-ok", 3, 3),  # valid
    ]
)
r = Reader(request(sock, 30, 1, 1, body))
r.take(">i")  # throttle
n = r.take(">i")
check_eq(n, 4, "CreateAcls results")
results = [(r.take(">h"), r.string()) for _ in range(n)]
for (code, msg), why in zip(results[:3], ["resource type 42", "operation 99", "kafka-cluster"]):
    check_eq(code, KafkaError.INVALID_REQUEST, f"CreateAcls error for a binding with {why}")
    check(msg and why in msg, f"CreateAcls message for {why}: {msg!r}")
check_eq(results[3], (0, None), "CreateAcls of the valid binding beside them")
log(f"ok: CreateAcls refuses bad bindings with INVALID_REQUEST: {[m for _, m in results[:3]]}")

# DescribeAcls v1 with an unknown pattern type (9), then a valid one, same connection.
describe = lambda pattern: i8(1) + string(None) + i8(pattern) + string(None) + string(None) + i8(1) + i8(1)  # noqa: E731
r = Reader(request(sock, 29, 1, 2, describe(9)))
r.take(">i")
code, msg = r.take(">h"), r.string()
check_eq(code, KafkaError.INVALID_REQUEST, f"DescribeAcls with pattern type 9 ({msg!r})")
r = Reader(request(sock, 29, 1, 3, describe(1)))
r.take(">i")
code, msg = r.take(">h"), r.string()
check_eq(code, 0, f"DescribeAcls on the same connection ({msg!r})")
names = []
for _ in range(r.take(">i")):
    r.take(">b")
    names.append(r.string())
    r.take(">b")
    for _ in range(r.take(">i")):
        r.string(), r.string(), r.take(">b"), r.take(">b")
check("raw-ok" in names and "t" not in names, f"resources DescribeAcls lists: {names}")
sock.close()
produce_ok("alice", "alice's producer after the bad CreateAcls")

# ListOffsets and OffsetForLeaderEpoch, which the clients send only for topics
# whose Metadata they may see, as alice over a raw socket: refused on the topic she
# has no ACL for, answered on hers.
sock = socket.create_connection(ADDR, timeout=WAIT_S)


def as_alice(api_key, version, correlation_id, body):
    head = i16(api_key) + i16(version) + i32(correlation_id) + string("alice")
    sock.sendall(i32(len(head + body)) + head + body)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    resp = recv_exact(sock, size)
    check_eq(struct.unpack(">i", resp[:4])[0], correlation_id, "correlation id")
    return Reader(resp[4:])


for cid, (topic, want) in enumerate([(OTHER, TAF), (TOPIC, 0)], start=10):
    # ListOffsets v1: replica -1, one topic, partition 0, latest (-1).
    r = as_alice(2, 1, cid, i32(-1) + array([string(topic) + array([i32(0) + struct.pack(">q", -1)])]))
    check_eq(r.take(">i"), 1, "ListOffsets topics")
    check_eq(r.string(), topic, "ListOffsets topic")
    check_eq(r.take(">i"), 1, "ListOffsets partitions")
    r.take(">i")
    check_eq(r.take(">h"), want, f"alice's ListOffsets error for {topic}")
    # OffsetForLeaderEpoch v2: one topic, partition 0, current epoch -1, epoch 0.
    r = as_alice(23, 2, cid + 100, array([string(topic) + array([i32(0) + i32(-1) + i32(0)])]))
    r.take(">i")  # throttle
    check_eq(r.take(">i"), 1, "OffsetForLeaderEpoch topics")
    check_eq(r.string(), topic, "OffsetForLeaderEpoch topic")
    check_eq(r.take(">i"), 1, "OffsetForLeaderEpoch partitions")
    check_eq(r.take(">h"), want, f"alice's OffsetForLeaderEpoch error for {topic}")
sock.close()
log("ok: alice's ListOffsets and OffsetForLeaderEpoch: TOPIC_AUTHORIZATION_FAILED for other-t, answered for acl-t")
log("ok: the bad requests' connection kept serving and other clients were unaffected")

# 6. The admin APIs of the other features: DeleteRecords, SCRAM credentials,
# DescribeProducers, AlterReplicaLogDirs, DescribeLogDirs.
def delete_records_future(client, offset):
    tp = TopicPartition(TOPIC, 0, offset)
    return client.delete_records([tp], request_timeout=WAIT_S)[tp]


def log_start():
    """acl-t/0's log start offset, as the superuser sees it (ListOffsets)."""
    c = consumer(B, client_id="admin")
    try:
        return c.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=WAIT_S, cached=False)[0]
    finally:
        c.close()


low_before = log_start()
expect_error(delete_records_future(alice, 1), TAF, "alice's DeleteRecords with READ and WRITE only")
check_eq(log_start(), low_before, "the log start after alice's refused DeleteRecords")
deleted = expect_ok(delete_records_future(adm, low_before + 1), "admin's DeleteRecords")
check_eq(deleted.low_watermark, low_before + 1, "low watermark after admin's DeleteRecords")
check_eq(log_start(), low_before + 1, "the log start after admin's DeleteRecords")
log("ok: DeleteRecords needs DELETE on the topic: refused for alice, done for admin")

SCRAM_USER = "scram-carol"


def upsert(client, what):
    up = UserScramCredentialUpsertion(
        SCRAM_USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), b"carol-secret"
    )
    return one_future(client.alter_user_scram_credentials([up], request_timeout=WAIT_S), what)


def describe_scram(client, what):
    return one_future(client.describe_user_scram_credentials([SCRAM_USER], request_timeout=WAIT_S), what)


expect_error(upsert(alice, "alice's upsert"), CAF, "alice's AlterUserScramCredentials")
# confluent-kafka 2.16 (librdkafka 2.16.0) crashes the process on a
# DescribeUserScramCredentials response with a top-level error, which is how Kafka
# refuses it: kafka-python asks for alice.
kp_alice = kp_admin("alice")
kp_refused(
    lambda: kp_alice.describe_user_scram_credentials([SCRAM_USER]), CAF, "alice's DescribeUserScramCredentials"
)
kp_alice.close()
# Nothing was stored by alice's attempt: the user has no credentials yet.
expect_error(describe_scram(adm, "admin's describe"), KafkaError.RESOURCE_NOT_FOUND, "admin's describe before the upsert")
expect_ok(upsert(adm, "admin's upsert"), "admin's AlterUserScramCredentials")
described = expect_ok(describe_scram(adm, "admin's describe"), "admin's DescribeUserScramCredentials")
infos = [(i.mechanism, i.iterations) for i in described.scram_credential_infos]
check_eq(infos, [(ScramMechanism.SCRAM_SHA_256, 4096)], f"{SCRAM_USER}'s credentials")
log("ok: SCRAM credential APIs need ALTER / DESCRIBE on the cluster: refused for alice, done for admin")

kp_alice = kp_admin("alice")
mine = kp_alice.describe_producers([KpTopicPartition(TOPIC, 0)])[KpTopicPartition(TOPIC, 0)]
log(f"ok: alice's DescribeProducers on {TOPIC} (READ) -> {len(list(mine.active_producers))} producers")
kp_refused(
    lambda: kp_alice.describe_producers([KpTopicPartition(OTHER, 0)], broker_id=0),
    TAF,
    f"alice's DescribeProducers on {OTHER}",
)
moved = kp_alice.alter_replica_log_dirs({(TOPIC, 0, 0): "/elsewhere"})
check_eq([getattr(e, "errno", None) for e in moved.values()], [CAF], "alice's AlterReplicaLogDirs")
log("ok: alice's AlterReplicaLogDirs -> CLUSTER_AUTHORIZATION_FAILED")
kp_alice.close()
kp = kp_admin("admin")
moved = kp.alter_replica_log_dirs({(TOPIC, 0, 0): "/elsewhere"})
# Authorised, the request reaches the log directory check: no such directory here.
check_eq([getattr(e, "errno", None) for e in moved.values()], [57], "admin's AlterReplicaLogDirs (LOG_DIR_NOT_FOUND)")
kp.close()
log("ok: admin's AlterReplicaLogDirs passes authorization (LOG_DIR_NOT_FOUND for another directory)")


def describe_log_dirs_v3(user, correlation_id):
    """DescribeLogDirs v3 (flexible: header v2, null compact topic array), the
    response's top-level error code and number of log directories."""
    head = i16(35) + i16(3) + i32(correlation_id) + string(user) + b"\x00"
    body = b"\x00" + b"\x00"  # null topics (all), no tagged fields
    s = socket.create_connection(ADDR, timeout=WAIT_S)
    s.sendall(i32(len(head + body)) + head + body)
    size = struct.unpack(">i", recv_exact(s, 4))[0]
    resp = recv_exact(s, size)
    s.close()
    check_eq(struct.unpack(">i", resp[:4])[0], correlation_id, "correlation id")
    r = Reader(resp[5:])  # after the header's empty tagged fields
    r.take(">i")  # throttle
    code = r.take(">h")
    dirs = r.take(">B") - 1  # a compact array's length + 1 (one byte while below 127)
    return code, dirs


check_eq(describe_log_dirs_v3("alice", 40), (CAF, 0), "alice's DescribeLogDirs (error, directories)")
check_eq(describe_log_dirs_v3("admin", 41), (0, 1), "admin's DescribeLogDirs (error, directories)")
log("ok: DescribeLogDirs needs DESCRIBE on the cluster: refused for alice, answered for admin")
