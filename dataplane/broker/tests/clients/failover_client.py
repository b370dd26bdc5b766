"""A real client riding through a kill -9 of its partition's leader (../cluster.rs).

  failover_client.py --bootstrap ADDRS --topic T --control DIR

An idempotent acks=all producer writes to partition 0 of T, and a member of a consumer
group reads and commits (synchronously, once a second), in one loop. The test and this
script talk through files in DIR, each written whole (temporary name, then rename):
  kill       (script) the id of partition 0's leader, after a warm-up
  killed     (test)   the wall-clock time of the kill -9, in seconds
  restart    (script) after riding the failover for a while
  restarted  (test)   the node runs again
Then the producer stops and flushes: every delivery report must be OK (no error reaches
the application). The first member stops without committing again, and a new member of
the group must resume exactly at the last committed offset; between them they must have
read every acknowledged value (none skipped). Values the first member read after its
last commit are read again: allowed, and counted. Prints the unavailability: from the
last acknowledgement before the kill to the first after it.
"""

import argparse
import os
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from e2e import fail, log

WARMUP_S = 5.0
# After the kill, before asking for the restart.
RIDE_S = 15.0
# After the restart, before the producer stops.
AFTER_RESTART_S = 5.0
# Any wait on the test or the cluster.
WAIT_S = 90.0
SEND_INTERVAL_S = 0.01
COMMIT_INTERVAL_S = 1.0
GROUP = "failover-group"


def put(control, name, text):
    tmp = os.path.join(control, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(control, name))


def get(control, name):
    path = os.path.join(control, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read().strip()


def group_member(bootstrap, topic):
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": GROUP,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "socket.timeout.ms": 5000,
            "session.timeout.ms": 10000,
        }
    )
    c.subscribe([topic])
    return c


def leader_of_partition0(bootstrap, topic):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=5)
            p = md.topics[topic].partitions.get(0)
            if p is not None and p.leader >= 0:
                return p.leader
        except KafkaException as e:
            log(f"metadata: {e}")
        time.sleep(0.2)
    fail(f"no leader of {topic}/0 within {WAIT_S} s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--control", required=True)
    args = parser.parse_args()

    acks = []  # (wall time of the report, wall time of the send, offset, value)
    errors = []

    def report(err, msg, sent_at):
        if err is not None:
            errors.append(str(err))
        else:
            acks.append((time.time(), sent_at, msg.offset(), msg.value().decode()))

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": int(WAIT_S * 1000),
            "request.timeout.ms": 5000,
            "socket.timeout.ms": 5000,
            "linger.ms": 5,
            "topic.metadata.refresh.interval.ms": 2000,
        }
    )
    member = group_member(args.bootstrap, args.topic)
    read1 = []  # (offset, value) read by the first member
    committed = None  # the last offset the first member committed successfully
    commit_errors = 0
    consume_errors = 0
    seq = 0
    next_send = time.monotonic()
    next_commit = time.monotonic() + COMMIT_INTERVAL_S
    started = time.monotonic()
    phase = "warmup"
    phase_until = started + WARMUP_S
    deadline = started + 4 * WAIT_S
    while phase != "done":
        now = time.monotonic()
        if now > deadline:
            fail(f"stuck in phase {phase}")
        if now >= next_send:
            sent_at = time.time()
            producer.produce(
                args.topic, f"m-{seq}".encode(), partition=0, on_delivery=lambda e, m, t=sent_at: report(e, m, t)
            )
            seq += 1
            next_send = now + SEND_INTERVAL_S
        producer.poll(0)
        m = member.poll(0.005)
        if m is not None:
            if m.error() is not None:
                consume_errors += 1
            else:
                read1.append((m.offset(), m.value().decode()))
        if now >= next_commit and read1:
            next_commit = now + COMMIT_INTERVAL_S
            try:
                parts = member.commit(asynchronous=False)
                for tp in parts or []:
                    if tp.partition == 0 and tp.error is None and tp.offset >= 0:
                        committed = tp.offset
            except KafkaException as e:
                if e.args[0].code() == KafkaError._NO_OFFSET:
                    continue  # nothing read since the last commit
                commit_errors += 1
                log(f"commit failed (retried at the next interval): {e}")
        if phase == "warmup" and now >= phase_until:
            if not acks:
                fail("no acknowledgement during the warm-up")
            leader = leader_of_partition0(args.bootstrap, args.topic)
            put(args.control, "kill", str(leader))
            log(f"asked for kill -9 of node {leader}, the leader of {args.topic}/0, after {len(acks)} acks")
            phase, phase_until = "wait-kill", now + WAIT_S
        elif phase == "wait-kill":
            killed_at = get(args.control, "killed")
            if killed_at is not None:
                kill_time = float(killed_at)
                phase, phase_until = "ride", now + RIDE_S
            elif now >= phase_until:
                fail("the test did not kill the leader")
        elif phase == "ride" and now >= phase_until:
            put(args.control, "restart", "")
            phase, phase_until = "wait-restart", now + WAIT_S
        elif phase == "wait-restart":
            if get(args.control, "restarted") is not None:
                phase, phase_until = "after-restart", now + AFTER_RESTART_S
            elif now >= phase_until:
                fail("the test did not restart the node")
        elif phase == "after-restart" and now >= phase_until:
            phase = "done"

    left = producer.flush(WAIT_S)
    if left or errors:
        fail(f"{len(errors)} delivery errors reached the application ({errors[:3]}), {left} unflushed")
    acked = {v: off for _, _, off, v in acks}
    log(f"produced {seq} messages, {len(acks)} acknowledged, no delivery error")

    # A report is timed when the loop serves it, a little after it arrived; the
    # first ack after the kill is that of the first message sent after it.
    before = [t for t, _, _, _ in acks if t <= kill_time]
    after = [t for t, sent, _, _ in acks if sent > kill_time]
    if not before or not after:
        fail(f"acks before the kill: {len(before)}, after: {len(after)}")
    gap_ms = (min(after) - max(before)) * 1000
    log(
        f"unavailability: {gap_ms:.0f} ms from the last ack before the kill "
        f"({(kill_time - max(before)) * 1000:.0f} ms before it) to the first after it "
        f"({(min(after) - kill_time) * 1000:.0f} ms after it)"
    )

    # The first member stops without committing what it read since its last commit.
    if committed is None:
        fail(f"the first member never committed ({commit_errors} commit errors)")
    member.close()
    log(f"first member read {len(read1)} records, last commit at offset {committed}, {commit_errors} commit errors, {consume_errors} consume errors")

    member = group_member(args.bootstrap, args.topic)
    high = max(acked.values()) + 1
    read2 = []
    stop = time.monotonic() + WAIT_S
    while (not read2 or read2[-1][0] + 1 < high) and time.monotonic() < stop:
        m = member.poll(0.2)
        if m is not None and m.error() is None:
            read2.append((m.offset(), m.value().decode()))
    position = member.committed([TopicPartition(args.topic, 0)], timeout=10)[0].offset
    member.close()
    if not read2:
        fail(f"the new member read nothing within {WAIT_S} s (committed offset {position})")
    if read2[0][0] != committed:
        fail(f"the new member started at offset {read2[0][0]}, the committed offset is {committed}")
    seen = {v for off, v in read1 if off < committed} | {v for _, v in read2}
    skipped = sorted((off, v) for v, off in acked.items() if v not in seen)
    if skipped:
        fail(f"{len(skipped)} acknowledged records never read by the group, e.g. {skipped[:5]}")
    again = {v for off, v in read1 if off >= committed} & {v for _, v in read2}
    log(
        f"new member resumed at the committed offset {committed} and read {len(read2)} records to {high}; "
        f"{len(again)} read twice (after the last commit); none of {len(acked)} acknowledged skipped"
    )
    return 0


if __name__ == "__main__":
    main()
