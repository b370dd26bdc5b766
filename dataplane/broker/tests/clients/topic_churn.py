"""Topic creation and deletion cut by a SIGKILL (kafka_clients.rs).

churn: create and delete topics churn-0..3 (3 partitions each) in a loop; print
`churning` after a few rounds, and end (exit 0) at the first request that fails, which
is the broker being killed.
check (after the restart): every topic the broker lists is whole: each churn topic it
still has has its 3 partitions, each with a leader and readable watermarks."""

from confluent_kafka.admin import NewTopic

from e2e import admin, check_eq, fail, log, parse_args, watermarks

PARTITIONS = 3
ROUNDS_BEFORE_SIGNAL = 3

args = parse_args(("--phase", {"choices": ["churn", "check"], "required": True}))
adm = admin(args.bootstrap)

if args.phase == "churn":
    rounds = 0
    while True:
        name = f"churn-{rounds % 4}"
        try:
            for f in adm.create_topics([NewTopic(name, PARTITIONS, 1)], request_timeout=5).values():
                f.result()
            for f in adm.delete_topics([name], request_timeout=5).values():
                f.result()
        except Exception as e:  # the broker was killed mid-request
            log(f"stopped after {rounds} rounds: {e}")
            break
        rounds += 1
        if rounds == ROUNDS_BEFORE_SIGNAL:
            log("churning")
    if rounds < ROUNDS_BEFORE_SIGNAL:
        fail(f"only {rounds} rounds before the first failure")
else:
    md = adm.list_topics(timeout=10)
    churn = sorted(t for t in md.topics if t.startswith("churn-"))
    for name in churn:
        t = md.topics[name]
        if t.error is not None:
            fail(f"{name}: {t.error}")
        check_eq(len(t.partitions), PARTITIONS, f"partitions of {name} after the restart")
        for p in t.partitions.values():
            check_eq(p.leader, 0, f"leader of {name}/{p.id}")
            check_eq(watermarks(args.bootstrap, name, p.id), (0, 0), f"watermarks of {name}/{p.id}")
    log(f"ok: {len(churn)} churn topics left, each whole: {churn}")
