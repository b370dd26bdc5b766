"""Admin steps of the multi-node tests (../cluster.rs), with confluent-kafka's AdminClient.

  cluster_admin.py --bootstrap ADDR create TOPIC PARTITIONS RF
      CreateTopics on this node (any node forwards to the controller leader); retried on
      retriable errors (no controller yet, a leader just killed) until WAIT_S; prints
      "created TOPIC in N ms" measured from the first attempt.
  cluster_admin.py --bootstrap ADDR expect-create-error TOPIC PARTITIONS RF CODE_NAME
      CreateTopics must fail with that Kafka error (e.g. INVALID_REPLICATION_FACTOR).
  cluster_admin.py --bootstrap ADDR wait-topics BROKERS TOPIC:PARTITIONS...
      Metadata from this node must list exactly BROKERS brokers and every TOPIC with
      that many partitions, each with a leader among the brokers, within WAIT_S.
  cluster_admin.py --bootstrap ADDR describe-cluster BROKERS
      DescribeCluster: a cluster id, a controller among the brokers, BROKERS brokers.
  cluster_admin.py --bootstrap ADDR roundtrip TOPIC
      Produces 20 messages with acks=all to partition 0 and reads them back.
  cluster_admin.py --bootstrap ADDR elect-preferred TOPIC
      ElectLeaders (preferred) until every partition is led by its first replica.
  cluster_admin.py --bootstrap ADDR verify-other-clients TOPIC
      kcat and kafka-python read partition 0 from the beginning: the 20 values of an earlier
      roundtrip, in order (the leaders' epoch markers are control batches they skip).
  cluster_admin.py --bootstrap ADDR reassign TOPIC
      Creates TOPIC (2 partitions, 3 replicas of 4 nodes), produces 20 messages with acks=all
      to each, reassigns partition 0 to its leader, the node outside its set and one follower,
      and partition 1 to the three nodes other than its leader (which leaves), with
      kafka-python's AdminClient (confluent-kafka 2.16 has no
      AlterPartitionReassignments), checks the refusals (unknown partition, bad target,
      cancel with none pending), waits until ListPartitionReassignments is empty, and
      checks Metadata lists the targets and the messages are all still readable; prints
      "left N0 N1", the node that left each partition.
  cluster_admin.py --bootstrap ADDR compacted TOPIC
      Creates TOPIC (1 partition, 3 replicas, cleanup.policy=compact, 16 KiB segments),
      produces keyed lz4 batches with acks=all (ROUNDS values per key, then tombstones for
      some keys, kept for an hour), rolls the segment, and waits until a consumer reads
      one record per key, the latest, at the offset it was produced at (the leader
      compacted). Prints "compacted END KEYS": every record below END is in a sealed
      segment, and KEYS keys were produced.
  cluster_admin.py --bootstrap ADDR verify TOPIC
      Reads partition 0 from offset 0: the 20 acknowledged messages of an earlier roundtrip
      must be there, in order, byte for byte (after kills and restarts).
  cluster_admin.py --bootstrap ADDR create-acl PRINCIPAL TOPIC
      CreateAcls: ALLOW PRINCIPAL to READ the literal TOPIC, from any host; retried on
      retriable errors until WAIT_S (creating an existing binding succeeds).
  cluster_admin.py --bootstrap ADDR wait-acls PRINCIPAL TOPIC...
      DescribeAcls of PRINCIPAL on this node must list exactly those topics (READ,
      literal, any host) within WAIT_S.
"""

import argparse
import subprocess
import sys
import time

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from e2e import WAIT_S, Sent, conf, consumer, fail, log, payload, produce_all


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})


def create(bootstrap, topic, partitions, rf):
    started = time.monotonic()
    deadline = started + WAIT_S
    last = None
    while time.monotonic() < deadline:
        a = admin(bootstrap)
        fut = a.create_topics([NewTopic(topic, partitions, rf)], operation_timeout=10, request_timeout=10)[topic]
        try:
            fut.result(timeout=WAIT_S)
            log(f"created {topic} in {(time.monotonic() - started) * 1000:.0f} ms")
            return
        except KafkaException as e:
            err = e.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS and last is not None:
                # An attempt that timed out on our side was applied after all.
                log(f"created {topic} (an earlier attempt was applied) in {(time.monotonic() - started) * 1000:.0f} ms")
                return
            if not err.retriable() and err.code() not in (
                KafkaError._TIMED_OUT,
                KafkaError._TRANSPORT,
                KafkaError.NOT_CONTROLLER,
                KafkaError.REQUEST_TIMED_OUT,
            ):
                fail(f"create {topic}: {err}")
            last = err
        time.sleep(0.2)
    fail(f"create {topic}: not created within {WAIT_S} s; last error {last}")


def expect_create_error(bootstrap, topic, partitions, rf, code_name):
    want = getattr(KafkaError, code_name)
    a = admin(bootstrap)
    fut = a.create_topics([NewTopic(topic, partitions, rf)], request_timeout=10)[topic]
    try:
        fut.result(timeout=WAIT_S)
    except KafkaException as e:
        got = e.args[0]
        if got.code() != want:
            fail(f"create {topic}: expected {code_name}, got {got}")
        log(f"create {topic} refused as expected: {got.str()}")
        return
    fail(f"create {topic} with replication factor {rf} succeeded; expected {code_name}")


def wait_topics(bootstrap, brokers, specs):
    want = {}
    for s in specs:
        name, n = s.rsplit(":", 1)
        want[name] = int(n)
    deadline = time.monotonic() + WAIT_S
    problem = "no metadata yet"
    while time.monotonic() < deadline:
        try:
            md = admin(bootstrap).list_topics(timeout=5)
        except KafkaException as e:
            problem = f"metadata: {e}"
            time.sleep(0.2)
            continue
        ids = set(md.brokers.keys())
        problem = None
        if len(ids) != brokers:
            problem = f"{len(ids)} brokers listed ({sorted(ids)}), expected {brokers}"
        for name, n in want.items():
            t = md.topics.get(name)
            if problem:
                break
            if t is None or t.error is not None:
                problem = f"topic {name} not listed ({t.error if t else 'absent'})"
            elif len(t.partitions) != n:
                problem = f"topic {name} has {len(t.partitions)} partitions, expected {n}"
            else:
                for p in t.partitions.values():
                    if p.leader not in ids:
                        problem = f"{name}/{p.id} leader {p.leader} is not a listed broker {sorted(ids)}"
                        break
        if problem is None:
            log(f"{bootstrap}: {brokers} brokers, topics {sorted(want)} listed")
            return
        time.sleep(0.2)
    fail(f"{bootstrap}: {problem} after {WAIT_S} s")


def describe_cluster(bootstrap, brokers):
    a = admin(bootstrap)
    d = a.describe_cluster(request_timeout=10).result(timeout=WAIT_S)
    ids = sorted(n.id for n in d.nodes)
    if not d.cluster_id:
        fail("DescribeCluster returned no cluster id")
    if d.controller is None or d.controller.id not in ids:
        fail(f"DescribeCluster controller {d.controller} not among brokers {ids}")
    if len(ids) != brokers:
        fail(f"DescribeCluster lists {ids}, expected {brokers} brokers")
    log(f"cluster {d.cluster_id}: controller {d.controller.id}, brokers {ids}")


def roundtrip(bootstrap, topic):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": int(WAIT_S * 1000)})
    errors = []
    values = roundtrip_values(topic)
    for v in values:
        p.produce(topic, v, partition=0, on_delivery=lambda err, msg: errors.append(err) if err else None)
    if p.flush(WAIT_S) != 0 or errors:
        fail(f"produce to {topic}: {errors[:3]} (unflushed: {len(p)})")
    read_back(bootstrap, topic, values)
    log(f"{topic}: 20 messages produced with acks=all and read back")


def roundtrip_values(topic):
    return [f"{topic}-{i}".encode() for i in range(20)]


def read_back(bootstrap, topic, values, partition=0):
    """The partition from offset 0 must start with exactly `values`."""
    c = consumer(bootstrap)
    c.assign([TopicPartition(topic, partition, 0)])
    got = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < len(values) and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value())
    c.close()
    if got != values:
        fail(f"read back {len(got)} of {len(values)} messages from {topic}: {got[:3]}...")


def verify_other_clients(bootstrap, topic):
    """kcat and kafka-python (a client independent of librdkafka) read partition 0
    from the beginning: the 20 values of an earlier roundtrip, in order, and the leader's
    epoch markers (control batches) never show up as messages."""
    values = roundtrip_values(topic)
    out = subprocess.run(
        ["kcat", "-b", bootstrap, "-X", "socket.timeout.ms=10000", "-C", "-t", topic, "-p", "0",
         "-o", "beginning", "-e", "-f", "%s\n"],
        capture_output=True, timeout=WAIT_S,
    )
    got = out.stdout.splitlines()[: len(values)]
    if out.returncode != 0 or got != values:
        fail(f"kcat read {got[:3]}... from {topic}: {out.stderr.decode()[-300:]}")
    from kafka import KafkaConsumer, TopicPartition as KTopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=int(WAIT_S * 1000))
    tp = KTopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    got = []
    for m in c:
        got.append(m.value)
        if len(got) == len(values):
            break
    c.close()
    if got != values:
        fail(f"kafka-python read {len(got)} of {len(values)} messages from {topic}: {got[:3]}...")
    log(f"{topic}: kcat and kafka-python read the 20 messages in order")


def elect_preferred(bootstrap, topic):
    """ElectLeaders (preferred) for every partition of TOPIC, retried while the preferred
    replica is still catching up (PREFERRED_LEADER_NOT_AVAILABLE) until WAIT_S; then
    Metadata must show each partition led by its first replica."""
    from confluent_kafka import ElectionType

    a = admin(bootstrap)
    deadline = time.monotonic() + WAIT_S
    pending = None
    first = None
    elected = set()
    while time.monotonic() < deadline:
        try:
            md = a.list_topics(topic, timeout=5)
        except KafkaException as e:
            log(f"metadata: {e}; retrying")
            continue
        t = md.topics[topic]
        pending = [TopicPartition(topic, p.id) for p in t.partitions.values() if p.leader != p.replicas[0]]
        if not pending:
            if first and not elected:
                fail(f"{topic}: ElectLeaders elected none of {first}")
            log(f"{topic}: every partition is led by its preferred replica (ElectLeaders elected {sorted(elected)})")
            return
        if first is None:
            first = sorted(tp.partition for tp in pending)
        try:
            results = a.elect_leaders(ElectionType.PREFERRED, pending).result(timeout=WAIT_S)
        except KafkaException as e:
            err = e.args[0]
            if err.code() not in (KafkaError.PREFERRED_LEADER_NOT_AVAILABLE, KafkaError.ELECTION_NOT_NEEDED):
                fail(f"elect_leaders {topic}: {err}")
            results = {}
        for tp, err in results.items():
            if err is None:
                elected.add(tp.partition)
            elif err.code() not in (KafkaError.PREFERRED_LEADER_NOT_AVAILABLE, KafkaError.ELECTION_NOT_NEEDED):
                fail(f"elect_leaders {topic}/{tp.partition}: {err}")
        time.sleep(0.5)
    fail(f"{topic}: partitions {[tp.partition for tp in pending]} not led by their preferred replica within {WAIT_S} s")


def reassign(bootstrap, topic):
    from kafka import TopicPartition as KTopicPartition
    from kafka.admin import KafkaAdminClient

    create(bootstrap, topic, 2, 3)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": int(WAIT_S * 1000)})
    errors = []
    values = roundtrip_values(topic)
    for partition in (0, 1):
        for v in values:
            p.produce(topic, v, partition=partition, on_delivery=lambda err, msg: errors.append(err) if err else None)
    if p.flush(WAIT_S) != 0 or errors:
        fail(f"produce to {topic}: {errors[:3]} (unflushed: {len(p)})")
    log(f"{topic}: 20 messages produced with acks=all to partitions 0 and 1")

    # Partition 0 keeps its leader and swaps a follower for the node outside its set;
    # partition 1 moves to the three nodes other than its leader.
    parts = admin(bootstrap).list_topics(topic, timeout=10).topics[topic].partitions
    nodes = {1, 2, 3, 4}
    r0, r1 = parts[0], parts[1]
    outside0 = (nodes - set(r0.replicas)).pop()
    kept0 = [n for n in r0.replicas if n != r0.leader][0]
    targets = {0: [r0.leader, outside0, kept0], 1: sorted(nodes - {r1.leader})}
    left = {p: sorted(set(parts[p].replicas) - set(t)) for p, t in targets.items()}
    ka = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    wanted = {KTopicPartition(topic, p): t for p, t in targets.items()}
    result = ka.alter_partition_reassignments(wanted)
    if any(err is not None for err in result.values()) or len(result) != 2:
        fail(f"alter_partition_reassignments: {result}")
    log(f"{topic}: reassigning {targets}; pending: {ka.list_partition_reassignments()}")
    target = targets[0]

    refusals = [
        ({KTopicPartition(topic, 9): target}, 3),  # UNKNOWN_TOPIC_OR_PARTITION
        ({KTopicPartition("__consumer_offsets", 0): target}, 3),
        ({KTopicPartition(topic, 0): [2, 2, 3]}, 39),  # INVALID_REPLICA_ASSIGNMENT
        ({KTopicPartition(topic, 0): [2, 3, 99]}, 39),
    ]
    for request, errno in refusals:
        got = list(ka.alter_partition_reassignments(request).values())
        if len(got) != 1 or got[0] is None or got[0].errno != errno:
            fail(f"alter_partition_reassignments {request}: expected error {errno}, got {got}")

    pending = None
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        pending = ka.list_partition_reassignments({topic: [0, 1]})
        if not pending:
            break
        time.sleep(0.2)
    if pending:
        fail(f"{topic}: reassignments still pending after {WAIT_S} s: {pending}")
    got = list(ka.alter_partition_reassignments({KTopicPartition(topic, 0): None}).values())
    if len(got) != 1 or got[0] is None or got[0].errno != 85:  # NO_REASSIGNMENT_IN_PROGRESS
        fail(f"cancel with none pending: {got}")
    ka.close()

    md = admin(bootstrap).list_topics(topic, timeout=10)
    for part in md.topics[topic].partitions.values():
        t = targets[part.id]
        if list(part.replicas) != t or part.leader not in t:
            fail(f"{topic}/{part.id}: replicas {part.replicas} led by {part.leader}, expected {t}")
    for partition in (0, 1):
        read_back(bootstrap, topic, values, partition)
    log(f"{topic}: reassigned to {targets}; the 20 messages of each partition are all there")
    print(f"left {left[0][0]} {left[1][0]}")


def acl_read(principal, topic):
    return AclBinding(
        ResourceType.TOPIC,
        topic,
        ResourcePatternType.LITERAL,
        principal,
        "*",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )


def create_acl(bootstrap, principal, topic):
    deadline = time.monotonic() + WAIT_S
    last = None
    while time.monotonic() < deadline:
        a = admin(bootstrap)  # kept until the future resolves: dropping it cancels the request
        fut = next(iter(a.create_acls([acl_read(principal, topic)], request_timeout=10).values()))
        try:
            fut.result(timeout=WAIT_S)
            log(f"created ACL {principal} READ {topic}")
            return
        except KafkaException as e:
            err = e.args[0]
            if not err.retriable() and err.code() not in (
                KafkaError._TIMED_OUT,
                KafkaError._TRANSPORT,
                KafkaError.NOT_CONTROLLER,
                KafkaError.REQUEST_TIMED_OUT,
            ):
                fail(f"create ACL {principal} READ {topic}: {err}")
            last = err
        time.sleep(0.2)
    fail(f"create ACL {principal} READ {topic}: not created within {WAIT_S} s; last error {last}")


def wait_acls(bootstrap, principal, topics):
    want = sorted(str(acl_read(principal, t)) for t in topics)
    flt = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, principal, None, AclOperation.ANY, AclPermissionType.ANY
    )
    deadline = time.monotonic() + WAIT_S
    got = None
    while time.monotonic() < deadline:
        try:
            a = admin(bootstrap)
            got = sorted(str(b) for b in a.describe_acls(flt, request_timeout=10).result(timeout=WAIT_S))
        except KafkaException as e:
            got = repr(e)
        if got == want:
            log(f"{bootstrap} lists the ACLs of {principal} on {topics}")
            return
        time.sleep(0.2)
    fail(f"DescribeAcls of {principal} on {bootstrap}: expected {want}, last got {got}")


COMPACT_KEYS = 30
COMPACT_ROUNDS = 10
COMPACT_DELETED = 6


def compacted(bootstrap, topic):
    config = {
        "cleanup.policy": "compact",
        "segment.bytes": "16384",
        "segment.ms": "500",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "3600000",
    }
    a = admin(bootstrap)
    fut = a.create_topics([NewTopic(topic, 1, 3, config=config)], operation_timeout=10, request_timeout=10)[topic]
    fut.result(timeout=WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while True:
        t = a.list_topics(topic, timeout=5).topics.get(topic)
        if t is not None and t.error is None and 0 in t.partitions and t.partitions[0].leader >= 0:
            break
        if time.monotonic() > deadline:
            fail(f"{topic}: no leader within {WAIT_S} s")
        time.sleep(0.1)
    p = Producer(conf(bootstrap, acks="all", linger_ms=2, compression_type="lz4"))
    sent = []
    for r in range(COMPACT_ROUNDS):
        msgs = [Sent(topic, 0, f"key-{k}".encode(), payload(r * COMPACT_KEYS + k, 200)) for k in range(COMPACT_KEYS)]
        produce_all(p, msgs)
        sent += msgs
    tombstones = [Sent(topic, 0, f"key-{k}".encode(), None) for k in range(COMPACT_DELETED)]
    produce_all(p, tombstones)
    sent += tombstones
    # segment.ms passes; the next record rolls the segment, so every record above is in
    # a sealed segment the compactor may rewrite.
    time.sleep(0.7)
    filler = [Sent(topic, 0, b"filler", b"last")]
    produce_all(p, filler)
    end = filler[0].offset
    latest = {}
    for s in sent:
        latest[s.key] = s
    deadline = time.monotonic() + 60
    while True:
        c = consumer(bootstrap)
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        read_deadline = time.monotonic() + WAIT_S
        while (not got or got[-1][0] < end) and time.monotonic() < read_deadline:
            for m in c.consume(num_messages=1000, timeout=0.2):
                if m.error() is None:
                    got.append((m.offset(), m.key(), m.value()))
        c.close()
        below = [g for g in got if g[0] < end]
        keys = [k for _, k, _ in below]
        if len(keys) == len(set(keys)) == len(latest):
            break
        if time.monotonic() > deadline:
            fail(f"{topic}: not compacted on the leader: {len(below)} records below {end} for {len(latest)} keys")
        time.sleep(0.3)
    for offset, key, value in below:
        want = latest.get(key)
        if want is None or want.offset != offset or want.value != value:
            fail(f"{topic}: record at {offset} (key {key!r}) is not the latest of its key")
    log(f"{topic}: compacted on the leader to {len(below)} records below offset {end}, one per key")
    print(f"compacted {end} {len(latest)}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("step", nargs="+")
    args = parser.parse_args()
    rest = args.step
    cmd = rest[0]
    if cmd == "create":
        create(args.bootstrap, rest[1], int(rest[2]), int(rest[3]))
    elif cmd == "expect-create-error":
        expect_create_error(args.bootstrap, rest[1], int(rest[2]), int(rest[3]), rest[4])
    elif cmd == "wait-topics":
        wait_topics(args.bootstrap, int(rest[1]), rest[2:])
    elif cmd == "describe-cluster":
        describe_cluster(args.bootstrap, int(rest[1]))
    elif cmd == "roundtrip":
        roundtrip(args.bootstrap, rest[1])
    elif cmd == "elect-preferred":
        elect_preferred(args.bootstrap, rest[1])
    elif cmd == "verify-other-clients":
        verify_other_clients(args.bootstrap, rest[1])
    elif cmd == "reassign":
        reassign(args.bootstrap, rest[1])
    elif cmd == "create-acl":
        create_acl(args.bootstrap, rest[1], rest[2])
    elif cmd == "wait-acls":
        wait_acls(args.bootstrap, rest[1], rest[2:])
    elif cmd == "compacted":
        compacted(args.bootstrap, rest[1])
    elif cmd == "verify":
        read_back(args.bootstrap, rest[1], roundtrip_values(rest[1]))
        log(f"{rest[1]}: the 20 acknowledged messages are all there")
    else:
        fail(f"unknown step {cmd}")


if __name__ == "__main__":
    sys.exit(main())
