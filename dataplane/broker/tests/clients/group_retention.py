"""Committed offsets of an empty group expire (kafka_clients.rs starts the broker with
--offsets-retention-ms RETENTION_MS); those of a group with an active member do not.

Group "kept" gets a member that commits and then stays (subscribed, heartbeating)
for the whole script; group "expiring" gets a member that commits after it and
closes, so the group is Empty. The offsets of "expiring" must read as missing
(-1001) within RETENTION_MS plus 20 s; by then "kept"'s commit is older than the
retention too, and it must still be there after one more retention period. Then
the "kept" member closes too: its offsets expire as well, but not before the group
was empty for the retention period (which runs from when the group became empty,
not from the commit). Every expiry must come within RETENTION_MS plus 20 s, and
none before the group was empty for RETENTION_MS."""

import time

from confluent_kafka import OFFSET_INVALID, Producer

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

TOPIC = "retention"
PARTITIONS = 2
PER_PARTITION = 10

args = parse_args(("--retention-ms", {"type": int, "required": True}))
RETENTION_S = args.retention_ms / 1000
EXPIRY_BOUND_S = RETENTION_S + WAIT_S
B = args.bootstrap

create_topic(admin(B), TOPIC, PARTITIONS)
produce_all(
    Producer(conf(B, acks="all")),
    [Sent(TOPIC, p, None, f"{p}-{i}".encode()) for p in range(PARTITIONS) for i in range(PER_PARTITION)],
)
ENDS = {p: PER_PARTITION for p in range(PARTITIONS)}
MISSING = {p: OFFSET_INVALID for p in range(PARTITIONS)}


def join_consume_commit(group):
    """A member of `group` that consumed everything and committed the ends."""
    c = group_consumer(B, group)
    c.subscribe([TOPIC])
    count = 0
    deadline = time.monotonic() + WAIT_S
    while count < PARTITIONS * PER_PARTITION:
        if time.monotonic() > deadline:
            fail(f"{group}: consumed {count} of {PARTITIONS * PER_PARTITION} messages in {WAIT_S}s")
        for m in c.consume(num_messages=100, timeout=0.2):
            check(m.error() is None, f"{group}: consumer error {m.error()}")
            count += 1
    err = commit_sync(c)
    check(err is None, f"{group}: commit failed: {err}")
    check_eq(committed_offsets(B, group, TOPIC, range(PARTITIONS)), ENDS, f"{group}: committed offsets")
    return c


def wait_expired(group, closing, closed, what):
    """Polls until `group`'s offsets read as missing; fails after EXPIRY_BOUND_S, or if
    they go before the group was empty for the retention period. The group became
    empty while its last member's close() ran, from `closing` to `closed`."""
    while True:
        got = committed_offsets(B, group, TOPIC, range(PARTITIONS))
        if got == MISSING:
            empty_at_most = time.monotonic() - closing
            if empty_at_most < RETENTION_S:
                fail(f"{what}: the offsets of {group} were deleted when it had been empty for at most "
                     f"{empty_at_most:.1f}s, less than --offsets-retention-ms {args.retention_ms}")
            log(f"ok: {what}: the offsets of {group} expired {time.monotonic() - closed:.1f}s after it became empty "
                f"(retention {RETENTION_S}s)")
            return
        check_eq(got, ENDS, f"{group}: committed offsets while waiting for them to expire")
        if time.monotonic() - closed > EXPIRY_BOUND_S:
            fail(f"{what}: the offsets of the empty group {group} are still there {EXPIRY_BOUND_S:.0f}s after it "
                 f"became empty, with --offsets-retention-ms {args.retention_ms}")
        time.sleep(0.25)


def keep_polling(c, seconds):
    """Keeps member `c` polling (it gets no messages: everything is consumed)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for m in c.consume(num_messages=10, timeout=0.1):
            check(m.error() is None, f"kept: consumer error {m.error()}")
            fail(f"kept: unexpected message {m.partition()}@{m.offset()}")


kept = join_consume_commit("kept")
kept_committed_at = time.monotonic()
log("ok: group kept has an active member that committed the ends")

expiring = join_consume_commit("expiring")
closing = time.monotonic()
expiring.close()
emptied = time.monotonic()
log("ok: group expiring committed the ends and its only member closed")

wait_expired("expiring", closing, emptied, "an empty group")
keep_polling(kept, RETENTION_S + 0.5)
check_eq(committed_offsets(B, "kept", TOPIC, range(PARTITIONS)), ENDS,
         f"offsets of the active group kept, committed {time.monotonic() - kept_committed_at:.1f}s ago "
         f"(retention {RETENTION_S}s)")
assignment = kept.assignment()
check_eq(sorted((tp.topic, tp.partition) for tp in assignment), [(TOPIC, p) for p in range(PARTITIONS)],
         "the kept member's assignment")
log("ok: the active group's offsets outlived the retention")

closing = time.monotonic()
kept.close()
emptied = time.monotonic()
# The retention counts from when the group became empty, not from the commit (which
# is older than the retention by now).
wait_expired("kept", closing, emptied, "a group emptied after the retention period of its commit")
