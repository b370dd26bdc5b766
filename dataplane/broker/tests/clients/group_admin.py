"""Static membership and the group admin APIs, with confluent-kafka's AdminClient
(ListGroups, DescribeGroups, DeleteGroups, OffsetFetch / OffsetCommit through
list/alter_consumer_group_offsets) and kafka-python's KafkaAdminClient (OffsetDelete,
LeaveGroup v3+ removing static members by group.instance.id).

Two static members (group.instance.id static-a, static-b; static-a joins first, so
it leads) share a 4-partition topic. DescribeGroups shows them with their instance
ids and the assignments they report, ListGroups lists the group as Stable. Member
static-b is closed (a static member does not leave) and started again with the same
instance id: it gets the same partitions back and static-a sees no rebalance at all.
While members are there, DeleteGroups fails with NON_EMPTY_GROUP (68) and OffsetDelete
of the subscribed topic with GROUP_SUBSCRIBED_TO_TOPIC (86). Both members close;
static-a is removed by instance id, static-b when its session times out (6 s),
and the group is Empty. Then offsets are altered and read
through the admin API, OffsetDelete removes one partition's, and DeleteGroups
deletes the group: it is no longer listed and has no committed offsets."""

import threading
import time

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaError, Producer, TopicPartition
from kafka import KafkaAdminClient
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import MemberToRemove
import kafka.errors as kerrors

from e2e import (
    GROUP_SESSION_TIMEOUT_MS,
    WAIT_S,
    Sent,
    admin,
    check,
    check_eq,
    commit_sync,
    committed_offsets,
    conf,
    create_topic,
    exit_on_thread_exception,
    expect_error,
    expect_ok,
    fail,
    fail_now,
    group_consumer,
    log,
    parse_args,
    produce_all,
)

TOPIC = "admin-groups"
PARTITIONS = 4
PER_PARTITION = 10
GROUP = "g-static"

args = parse_args()
B = args.bootstrap
exit_on_thread_exception()
adm = admin(B)
create_topic(adm, TOPIC, PARTITIONS)
produce_all(
    Producer(conf(B, acks="all")),
    [Sent(TOPIC, p, None, f"{p}-{i}".encode()) for p in range(PARTITIONS) for i in range(PER_PARTITION)],
)


class Member(threading.Thread):
    """A static member polling in its own thread; records its assignment and every
    rebalance callback."""

    def __init__(self, instance):
        super().__init__(name=instance)
        self.instance = instance
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.owned = set()
        self.events = []
        self.member_id = None

    def run(self):
        c = group_consumer(B, GROUP, group_instance_id=self.instance, client_id=self.instance,
                           partition_assignment_strategy="range")

        def on_assign(consumer, partitions):
            with self.lock:
                self.events.append(("assign", sorted(tp.partition for tp in partitions)))
                self.owned |= {tp.partition for tp in partitions}

        def on_revoke(consumer, partitions):
            err = commit_sync(consumer)
            with self.lock:
                self.events.append(("revoke", sorted(tp.partition for tp in partitions), err))
                self.owned -= {tp.partition for tp in partitions}

        def on_lost(consumer, partitions):
            with self.lock:
                self.events.append(("lost", sorted(tp.partition for tp in partitions)))
                self.owned -= {tp.partition for tp in partitions}

        c.subscribe([TOPIC], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        while not self.stop.is_set():
            for m in c.consume(num_messages=100, timeout=0.1):
                if m.error() is not None:
                    fail_now(f"{self.instance}: consumer error {m.error()}")
            if self.member_id is None and self.owned:
                self.member_id = c.memberid()
        c.close()

    def snapshot(self):
        with self.lock:
            return set(self.owned), list(self.events)


def wait_owned(members, what):
    """Waits until `members` own all partitions, PARTITIONS / len(members) each."""
    deadline = time.monotonic() + WAIT_S
    while True:
        owned = {m.instance: m.snapshot()[0] for m in members}
        if all(len(o) == PARTITIONS // len(members) for o in owned.values()) and \
                set().union(*owned.values()) == set(range(PARTITIONS)):
            return owned
        if time.monotonic() > deadline:
            fail(f"{what}: assignment never settled: {owned}; events {[m.snapshot()[1] for m in members]}")
        time.sleep(0.05)


def describe():
    return expect_ok(adm.describe_consumer_groups([GROUP])[GROUP], f"describe_consumer_groups {GROUP}")


def listed():
    """{group id: state} of list_consumer_groups."""
    result = expect_ok(adm.list_consumer_groups(request_timeout=10), "list_consumer_groups")
    check(not result.errors, f"list_consumer_groups errors: {result.errors}")
    return {g.group_id: g.state for g in result.valid}


def stop(member):
    member.stop.set()
    member.join(WAIT_S)
    check(not member.is_alive(), f"{member.instance} did not close within {WAIT_S}s")


# --- static members -----------------------------------------------------------------------

a = Member("static-a")
a.start()
wait_owned([a], "static-a alone")
b = Member("static-b")
b.start()
owned = wait_owned([a, b], "static-a and static-b")
log(f"ok: static members own {owned}")

d = describe()
check_eq(d.state, ConsumerGroupState.STABLE, f"state of {GROUP}")
check_eq(d.partition_assignor, "range", f"assignor of {GROUP}")
check_eq(d.is_simple_consumer_group, False, f"{GROUP} is a simple consumer group")
members = {m.group_instance_id: m for m in d.members}
check_eq(sorted(members), ["static-a", "static-b"], f"group instance ids in DescribeGroups of {GROUP}")
for inst, m in members.items():
    check_eq({tp.partition for tp in m.assignment.topic_partitions if tp.topic == TOPIC}, owned[inst],
             f"{inst}'s assignment in DescribeGroups")
    check_eq(m.client_id, inst, f"{inst}'s client id in DescribeGroups")
old_b_member_id = members["static-b"].member_id
check_eq(listed().get(GROUP), ConsumerGroupState.STABLE, f"{GROUP} in list_consumer_groups")
log(f"ok: DescribeGroups and ListGroups show {GROUP} Stable with both static members and their assignments")

# static-b restarts with the same instance id: same partitions, no rebalance for static-a.
a_events = len(a.snapshot()[1])
stop(b)
b2 = Member("static-b")
b2.start()
again = wait_owned([a, b2], "static-b restarted")
check_eq(again, owned, "assignment after static-b restarted with the same group.instance.id")
check_eq(a.snapshot()[1][a_events:], [], "static-a's rebalance callbacks while static-b restarted")
new_b = {m.group_instance_id: m.member_id for m in describe().members}
check_eq(sorted(new_b), ["static-a", "static-b"], "group instance ids after static-b restarted")
check(new_b["static-b"] != old_b_member_id, f"static-b kept member id {old_b_member_id} across its restart")
log("ok: static-b rejoined with a new member id, got its partitions back, static-a never rebalanced")

expect_error(adm.delete_consumer_groups([GROUP], request_timeout=10)[GROUP], KafkaError.NON_EMPTY_GROUP,
             f"delete_consumer_groups of {GROUP} with members")
kp = KafkaAdminClient(bootstrap_servers=B, client_id="group-admin-e2e")
try:
    res = kp.delete_group_offsets(GROUP, [KpTopicPartition(TOPIC, 0)])
    check_eq({tp.partition: e for tp, e in res.items()}, {0: kerrors.GroupSubscribedToTopicError},
             f"OffsetDelete of {TOPIC}/0 while {GROUP} is subscribed to it")
    log("ok: OffsetDelete of a subscribed topic -> GROUP_SUBSCRIBED_TO_TOPIC")

    stop(a)
    stop(b2)
    # Static members do not leave when they close: static-a is removed by instance id,
    # static-b must be removed when its session times out, in the rebalance that the
    # removal of static-a started.
    closed = time.monotonic()
    res = kp.remove_group_members(GROUP, [MemberToRemove(group_instance_id="static-a")])
    # (kafka-python keys the result by the member id or instance id the broker echoes)
    check_eq(list(res.values()), [kerrors.NoError], f"remove_group_members static-a by instance id: {res}")
    d = describe()
    check_eq(sorted(m.group_instance_id for m in d.members), ["static-b"], f"members of {GROUP} after removing static-a")
    log(f"ok: LeaveGroup by group.instance.id removed static-a from {GROUP} ({d.state})")
    bound = GROUP_SESSION_TIMEOUT_MS / 1000 + WAIT_S
    while True:
        d = describe()
        if d.state == ConsumerGroupState.EMPTY and not d.members:
            break
        if time.monotonic() - closed > bound:
            fail(f"static-b was not removed {bound:.0f}s after it closed (session.timeout.ms "
                 f"{GROUP_SESSION_TIMEOUT_MS}): {GROUP} is {d.state} with {[m.group_instance_id for m in d.members]}")
        time.sleep(0.25)
    log(f"ok: static-b's session expired {time.monotonic() - closed:.1f}s after it closed; {GROUP} is Empty")

    # --- offsets of the empty group through the admin APIs ----------------------------
    want = [TopicPartition(TOPIC, p, 3 + p) for p in range(PARTITIONS)]
    got = expect_ok(adm.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(GROUP, want)])[GROUP],
                    f"alter_consumer_group_offsets of {GROUP}")
    check(all(tp.error is None for tp in got.topic_partitions), f"alter_consumer_group_offsets: {got.topic_partitions}")
    got = expect_ok(adm.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(GROUP, [TopicPartition(TOPIC, p) for p in range(PARTITIONS)])])[GROUP],
        f"list_consumer_group_offsets of {GROUP}")
    check_eq({tp.partition: tp.offset for tp in got.topic_partitions}, {p: 3 + p for p in range(PARTITIONS)},
             "offsets listed after alter_consumer_group_offsets")

    res = kp.delete_group_offsets(GROUP, [KpTopicPartition(TOPIC, 1)])
    check_eq({tp.partition: e for tp, e in res.items()}, {1: kerrors.NoError}, f"OffsetDelete of {TOPIC}/1")
    check_eq(committed_offsets(B, GROUP, TOPIC, range(PARTITIONS)), {0: 3, 1: -1001, 2: 5, 3: 6},
             f"committed offsets of {GROUP} after OffsetDelete of partition 1")
    log("ok: alter/list_consumer_group_offsets and OffsetDelete on the empty group")
finally:
    kp.close()

expect_ok(adm.delete_consumer_groups([GROUP], request_timeout=10)[GROUP], f"delete_consumer_groups of {GROUP}")
check(GROUP not in listed(), f"{GROUP} is still listed after DeleteGroups: {listed()}")
check_eq(committed_offsets(B, GROUP, TOPIC, range(PARTITIONS)), {p: -1001 for p in range(PARTITIONS)},
         f"committed offsets of {GROUP} after DeleteGroups")
expect_error(adm.delete_consumer_groups([GROUP], request_timeout=10)[GROUP], KafkaError.GROUP_ID_NOT_FOUND,
             f"delete_consumer_groups of the deleted {GROUP}")
log(f"ok: DeleteGroups removed {GROUP} and its offsets")
