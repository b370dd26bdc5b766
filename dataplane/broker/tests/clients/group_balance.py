"""Consumer-group rebalances under load with confluent-kafka (librdkafka), for one
partition.assignment.strategy (--strategy range | roundrobin | cooperative-sticky).

A producer thread produces numbered messages to a 6-partition topic the whole time,
while three consumers of one group join one by one and then leave (close()) one by
one. After each join or leave the script waits until the group settled: the six
partitions are owned by exactly the live members, evenly (6/n each), and every live
member consumed messages since.

Ownership is recorded in one table shared by all members, from their on_assign /
on_revoke / on_lost callbacks (incremental for cooperative-sticky, the whole
assignment for the eager strategies): a partition assigned to a member while another
member owns it fails the script, and so does a message delivered to a member that
does not own its partition.

Each member commits synchronously after every batch it processed and again in
on_revoke (which librdkafka runs before the partitions are given up: for the eager
strategies before rejoining, while the old generation may still commit; for
cooperative-sticky after the SyncGroup that revokes them). So the next owner of a
partition starts exactly after the last message processed: every produced message
must be consumed, and none twice. At the end the group's committed offsets equal
the partition ends."""

import threading
import time

from confluent_kafka import Producer

from e2e import (
    WAIT_S,
    admin,
    check,
    check_eq,
    commit_sync,
    committed_offsets,
    conf,
    create_topic,
    exit_on_thread_exception,
    fail,
    fail_now,
    group_consumer,
    high_watermarks,
    log,
    parse_args,
    poll_until,
)

PARTITIONS = 6
MEMBERS = ["m1", "m2", "m3"]
# Producer pace: BURST messages every BURST_GAP_S (about 1000 messages/s).
BURST = 20
BURST_GAP_S = 0.02
# Messages each live member must consume after the group settled, at every stage.
CONSUMED_PER_STAGE = 20

args = parse_args(("--strategy", {"choices": ["range", "roundrobin", "cooperative-sticky"], "required": True}))
STRATEGY = args.strategy
COOPERATIVE = STRATEGY == "cooperative-sticky"
TOPIC = f"balance-{STRATEGY}"
GROUP = f"group-{STRATEGY}"
exit_on_thread_exception()

create_topic(admin(args.bootstrap), TOPIC, PARTITIONS)

lock = threading.Lock()
owner = {}  # partition -> member name
history = []  # (time, member, event, partitions): printed when something fails
consumed = {}  # (partition, offset) -> [(member, value)]
commit_errors = []  # (member, where, error text)
start = time.monotonic()


def note(member, event, partitions):
    history.append((round(time.monotonic() - start, 3), member, event, sorted(partitions)))


def history_text(last=40):
    return "\n".join(f"  {t:8.3f}s {m} {e} {ps}" for t, m, e, ps in history[-last:])


# --- the producer ---------------------------------------------------------------------

stop_producing = threading.Event()
delivered = {}  # (partition, offset) -> value
delivery_errors = []
produced = [0]


def produce_loop():
    p = Producer(conf(args.bootstrap, acks="all", linger_ms=5))

    def on_delivery(err, msg):
        if err is not None:
            delivery_errors.append(f"{msg.value()!r}: {err}")
        else:
            delivered[(msg.partition(), msg.offset())] = msg.value()

    i = 0
    next_burst = time.monotonic()
    while not stop_producing.is_set():
        for _ in range(BURST):
            while True:
                try:
                    p.produce(TOPIC, value=str(i).encode(), partition=i % PARTITIONS, on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.05)
            i += 1
        produced[0] = i
        next_burst += BURST_GAP_S
        poll_until(p, next_burst)
    left = p.flush(WAIT_S)
    if left:
        fail_now(f"{left} produced messages still undelivered {WAIT_S}s after the producer stopped")


producer_thread = threading.Thread(target=produce_loop, name="producer")


# --- the members ----------------------------------------------------------------------


class Member(threading.Thread):
    def __init__(self, name):
        super().__init__(name=name)
        self.stop = threading.Event()
        self.consumed = 0

    def run(self):
        name = self.name
        c = group_consumer(
            args.bootstrap,
            GROUP,
            client_id=name,
            partition_assignment_strategy=STRATEGY,
        )

        def on_assign(consumer, partitions):
            ps = [tp.partition for tp in partitions]
            with lock:
                note(name, "assigned", ps)
                if not COOPERATIVE:
                    mine = [p for p, m in owner.items() if m == name]
                    if mine:
                        fail_now(f"{name} got a new eager assignment {sorted(ps)} while still owning {mine}\n{history_text()}")
                for p in ps:
                    holder = owner.get(p)
                    if holder is not None and holder != name:
                        fail_now(f"partition {p} assigned to {name} while {holder} owns it\n{history_text()}")
                    if holder == name:
                        fail_now(f"partition {p} assigned to {name} again, which already owns it\n{history_text()}")
                    owner[p] = name

        def on_revoke(consumer, partitions):
            # Commit what was processed before the partitions are given up.
            err = commit_sync(consumer)
            ps = [tp.partition for tp in partitions]
            with lock:
                if err is not None:
                    commit_errors.append((name, f"on_revoke {sorted(ps)}", err))
                note(name, "revoked" + (f" (commit failed: {err})" if err else ""), ps)
                for p in ps:
                    if owner.get(p) != name:
                        fail_now(f"{name} had partition {p} revoked, which it did not own (owner {owner.get(p)})\n{history_text()}")
                    del owner[p]

        def on_lost(consumer, partitions):
            ps = [tp.partition for tp in partitions]
            with lock:
                note(name, "LOST", ps)
                for p in ps:
                    if owner.get(p) == name:
                        del owner[p]

        c.subscribe([TOPIC], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        while not self.stop.is_set():
            msgs = c.consume(num_messages=500, timeout=0.1)
            if not msgs:
                continue
            with lock:
                for m in msgs:
                    if m.error() is not None:
                        fail_now(f"{name}: consumer error {m.error()}")
                    p = m.partition()
                    if owner.get(p) != name:
                        fail_now(
                            f"{name} was delivered {TOPIC}/{p}@{m.offset()} while {owner.get(p)} owns partition {p}\n"
                            f"{history_text()}"
                        )
                    consumed.setdefault((p, m.offset()), []).append((name, m.value()))
                self.consumed += len(msgs)
            err = commit_sync(c)
            if err is not None:
                with lock:
                    commit_errors.append((name, "after a batch", err))
        c.close()  # revokes (on_revoke commits), then leaves the group
        with lock:
            note(name, "closed", [])


def wait_settled(live, what):
    """Waits until exactly the `live` members own all partitions, evenly, and each of
    them consumed CONSUMED_PER_STAGE more messages; fails after WAIT_S."""
    share = PARTITIONS // len(live)
    deadline = time.monotonic() + WAIT_S
    while True:
        with lock:
            counts = {m.name: 0 for m in live}
            for p, name in owner.items():
                counts[name] = counts.get(name, 0) + 1
            settled = len(owner) == PARTITIONS and all(counts.get(m.name) == share for m in live) and len(counts) == len(live)
            snapshot = dict(sorted(owner.items()))
        if settled:
            break
        if time.monotonic() > deadline:
            fail(f"{what}: the group did not settle on {share} partitions per member of "
                 f"{[m.name for m in live]} within {WAIT_S}s; owners {snapshot}\n{history_text()}")
        time.sleep(0.05)
    base = {m.name: m.consumed for m in live}
    deadline = time.monotonic() + WAIT_S
    while not all(m.consumed - base[m.name] >= CONSUMED_PER_STAGE for m in live):
        if time.monotonic() > deadline:
            fail(f"{what}: members consumed {[m.consumed - base[m.name] for m in live]} messages in {WAIT_S}s "
                 f"after the group settled (owners {snapshot}); the messages do not flow")
        time.sleep(0.05)
    log(f"ok: {what}: owners {snapshot}; {produced[0]} messages produced so far")


producer_thread.start()
members = []
for name in MEMBERS:
    m = Member(name)
    m.start()
    members.append(m)
    wait_settled(members, f"{name} joined")

for m in reversed(members[1:]):
    m.stop.set()
    m.join(WAIT_S)
    check(not m.is_alive(), f"{m.name} did not close within {WAIT_S}s")
    members.remove(m)
    wait_settled(members, f"{m.name} left")

stop_producing.set()
producer_thread.join(WAIT_S + 5)
check(not producer_thread.is_alive(), "the producer did not finish")
check(not delivery_errors, f"{len(delivery_errors)} deliveries failed: {delivery_errors[:5]}")
check_eq(len(delivered), produced[0], "delivery reports")
ends = high_watermarks(args.bootstrap, TOPIC, range(PARTITIONS))
check_eq(sum(ends.values()), produced[0], "messages in the topic")

# The last member consumes to the end, then closes (its on_revoke commits).
last = members[0]
deadline = time.monotonic() + WAIT_S
while True:
    with lock:
        missing = [k for k in delivered if k not in consumed]
    if not missing:
        break
    if time.monotonic() > deadline:
        fail(f"{len(missing)} of {len(delivered)} delivered messages never consumed, e.g. {sorted(missing)[:10]}")
    time.sleep(0.05)
last.stop.set()
last.join(WAIT_S)
check(not last.is_alive(), f"{last.name} did not close within {WAIT_S}s")

for where, got in consumed.items():
    check(where in delivered, f"consumed {TOPIC}/{where[0]}@{where[1]}, which was never delivered")
    for member, value in got:
        check_eq(value, delivered[where], f"value at {TOPIC}/{where[0]}@{where[1]} consumed by {member}")
duplicates = {k: [m for m, _ in v] for k, v in consumed.items() if len(v) > 1}
if commit_errors:
    log(f"{len(commit_errors)} failed commits: {commit_errors[:10]}")
if duplicates:
    fail(
        f"{len(duplicates)} messages consumed more than once although every member commits synchronously "
        f"after each batch and in on_revoke, e.g. {sorted(duplicates.items())[:10]}; failed commits: "
        f"{commit_errors[:10]}\n{history_text()}"
    )
log(f"ok: all {len(delivered)} messages consumed exactly once across the rebalances ({len(commit_errors)} failed commits)")

got = committed_offsets(args.bootstrap, GROUP, TOPIC, range(PARTITIONS))
check_eq(got, ends, f"committed offsets of {GROUP} vs the partition ends")
log(f"ok: {GROUP} committed the partition ends {ends}")
