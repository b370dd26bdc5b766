"""The cluster as clients see it, on a one-node ferrolog started with --node-id:
describe_cluster() names the cluster id recorded in the data directory, the node as
controller and the node as the one broker, through confluent-kafka's AdminClient
(librdkafka asks with Metadata) and kafka-python's KafkaAdminClient (DescribeCluster,
key 60); CreateTopics with replication factor 2 gets INVALID_REPLICATION_FACTOR with a
message (validate-only too) and leaves nothing behind; Metadata through librdkafka,
kafka-python and `kcat -L -J` shows each partition's leader, replicas and ISR: the
node."""

import json
import subprocess
import time

from confluent_kafka import KafkaError
from confluent_kafka.admin import NewTopic
from kafka import KafkaAdminClient

from e2e import (
    WAIT_S,
    admin,
    check,
    check_eq,
    error_code,
    expect_ok,
    fail,
    log,
    parse_args,
    topic_partitions,
)

args = parse_args(
    ("--cluster-id", {"required": True}),
    ("--node-id", {"type": int, "required": True}),
)
NODE = args.node_id
HOST, PORT = args.bootstrap.rsplit(":", 1)
PORT = int(PORT)
TOPIC = "described"
PARTITIONS = 3

# confluent-kafka: librdkafka answers describe_cluster from a Metadata request.
adm = admin(args.bootstrap)
cluster = adm.describe_cluster(request_timeout=WAIT_S).result(timeout=WAIT_S)
check_eq(cluster.cluster_id, args.cluster_id, "confluent describe_cluster cluster_id")
check(cluster.controller is not None, "confluent describe_cluster: no controller")
check_eq(cluster.controller.id, NODE, "confluent describe_cluster controller id")
nodes = [(n.id, n.host, n.port, n.rack) for n in cluster.nodes]
check_eq(nodes, [(NODE, HOST, PORT, None)], "confluent describe_cluster nodes")
check_eq(cluster.authorized_operations, None, "confluent describe_cluster authorized_operations")
log(f"ok: confluent describe_cluster: cluster {cluster.cluster_id}, controller {NODE}, nodes {nodes}")

# Replication factor 2 on one live broker.
for validate_only in [True, False]:
    fs = adm.create_topics(
        [NewTopic("two-replicas", num_partitions=1, replication_factor=2)],
        operation_timeout=10,
        request_timeout=WAIT_S,
        validate_only=validate_only,
    )
    what = f"create with replication factor 2 on one node (validate_only={validate_only})"
    try:
        fs["two-replicas"].result(timeout=WAIT_S)
        fail(f"{what}: it succeeded")
    except Exception as exc:  # noqa: BLE001 - any other failure is the message
        check_eq(error_code(exc), KafkaError.INVALID_REPLICATION_FACTOR, f"{what}: {exc!r}")
        check("replication factor 2 with 1 live broker" in str(exc), f"{what}: the message says why: {exc!r}")
check(topic_partitions(adm, "two-replicas") is None, "a refused create left two-replicas behind")
log("ok: replication factor 2 on one node is INVALID_REPLICATION_FACTOR")

fs = adm.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)], request_timeout=WAIT_S)
expect_ok(fs[TOPIC], f"create {TOPIC}")
# librdkafka's metadata view, once the topic shows up whole.
deadline = time.monotonic() + WAIT_S
while (seen := topic_partitions(adm, TOPIC)) is None or len(seen) < PARTITIONS:
    check(time.monotonic() < deadline, f"metadata never showed {TOPIC} with {PARTITIONS} partitions: {seen!r}")
    time.sleep(0.1)
for pid, p in seen.items():
    check_eq((p.leader, list(p.replicas), list(p.isrs)), (NODE, [NODE], [NODE]), f"confluent {TOPIC}/{pid}")
log(f"ok: confluent list_topics: {TOPIC} led by node {NODE}, replicas and isrs [{NODE}]")

# kafka-python: DescribeCluster (key 60), then Metadata's partitions.
kp = KafkaAdminClient(bootstrap_servers=args.bootstrap, client_id="cluster-describe", request_timeout_ms=10000)
try:
    described = kp.describe_cluster()
    check_eq(described.get("cluster_id"), args.cluster_id, "kafka-python describe_cluster cluster_id")
    check_eq(described.get("controller_id"), NODE, "kafka-python describe_cluster controller_id")
    brokers = [(b["broker_id"], b["host"], b["port"], b["rack"]) for b in described.get("brokers", [])]
    check_eq(brokers, [(NODE, HOST, PORT, None)], "kafka-python describe_cluster brokers")
    topics = kp.describe_topics([TOPIC])
    check_eq(len(topics), 1, f"kafka-python describe_topics {TOPIC}: {topics!r}")
    check_eq(topics[0].get("error_code"), 0, f"kafka-python describe_topics {TOPIC} error")
    parts = sorted(topics[0]["partitions"], key=lambda p: p["partition_index"])
    check_eq([p["partition_index"] for p in parts], list(range(PARTITIONS)), "kafka-python partitions")
    for p in parts:
        what = f"kafka-python {TOPIC}/{p['partition_index']}"
        check_eq(p["error_code"], 0, f"{what} error")
        check_eq(p["leader_id"], NODE, f"{what} leader")
        check_eq(p["replica_nodes"], [NODE], f"{what} replicas")
        check_eq(p["isr_nodes"], [NODE], f"{what} isr")
        check_eq(p["offline_replicas"], [], f"{what} offline replicas")
finally:
    kp.close()
log(f"ok: kafka-python describe_cluster and describe_topics: leader, replicas and isr are node {NODE}")

# kcat's view of the same metadata.
cmd = ["kcat", "-b", args.bootstrap, "-X", "socket.timeout.ms=10000", "-L", "-J", "-t", TOPIC]
try:
    out = subprocess.run(cmd, capture_output=True, timeout=WAIT_S)
except FileNotFoundError:
    fail("kcat is not installed (tools/setup.sh installs it)")
except subprocess.TimeoutExpired as e:
    fail(f"{' '.join(cmd)} timed out; stderr: {e.stderr!r}")
if out.returncode != 0:
    fail(f"{' '.join(cmd)} exited {out.returncode}; stderr: {out.stderr.decode(errors='replace')}")
md = json.loads(out.stdout)
check_eq(md.get("controllerid"), NODE, "kcat controllerid")
check_eq([b["id"] for b in md["brokers"]], [NODE], "kcat broker ids")
(topic,) = md["topics"]
kparts = sorted(topic["partitions"], key=lambda p: p["partition"])
check_eq(len(kparts), PARTITIONS, "kcat partitions")
for p in kparts:
    what = f"kcat {TOPIC}/{p['partition']}"
    check_eq(p["leader"], NODE, f"{what} leader")
    check_eq([r["id"] for r in p["replicas"]], [NODE], f"{what} replicas")
    check_eq([r["id"] for r in p["isrs"]], [NODE], f"{what} isrs")
log(f"ok: kcat -L shows leader, replicas and isrs = node {NODE}")
