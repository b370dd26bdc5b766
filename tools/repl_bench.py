#!/usr/bin/env python3
"""Replication benchmarks of a real `ferrolog start` cluster (issue 14).

  tools/repl_bench.py [--bin target/release/ferrolog] [--nodes 3] [--netns] [--profile FILE]
                      [--node-tls] [--json FILE] [--keep] SCENARIO [options]

Starts --nodes release `ferrolog` processes, all voters, on 127.0.0.1 (or, with --netns, each
in its own network namespace on a veth into a bridge: 10.99.0.N, clients in a hub namespace
at 10.99.0.254, like dataplane/broker/tests/common/netns.rs), waits until every node agrees on
one controller leader that lists all nodes alive, then runs SCENARIO:

  latency [--samples N] [--durability direct,fsync] [--latency-bin PATH]
      kafka_latency --bootstrap <node 1> --replication-factor 1,3 --no-minimal-client:
      one 1 KiB message in flight, acks=all, linger.ms=0 (librdkafka), produce and end-to-end,
      every row measured in the same 10 interleaved blocks, beside the loopback round trip.
  failover [--kills 20] [--fast-control] [--client-debug CONTEXTS]
      An acks=all idempotent producer (librdkafka through confluent-kafka) sends one 1 KiB message
      to partition 0 of an RF=3 topic every SEND_INTERVAL_S. Each round kills -9 the partition's
      leader; the sample is the time from the last acknowledgement received before the kill to
      the first acknowledgement of a message sent after it. Then the node is restarted on its
      ports and data directory, and the next round waits until it serves, the controller lists
      it alive, and its copy of the partition has reached the leader's high watermark of the
      moment it came back. --fast-control runs the nodes with a profile whose [control] section
      is FAST_CONTROL (default: the built-in [control] timing).
  throughput [--messages 200000] [--rounds 3]
      A producer sending as fast as librdkafka accepts (acks=all, linger.ms=5, 1 KiB values,
      one partition) --messages values to an RF=1 and to an RF=3 topic, in alternating rounds
      (a fresh topic each, deleted after it: a count, not a duration, bounds the disk used);
      MB/s and messages/s acknowledged (first send to last acknowledgement), and CPU of the
      brokers (all nodes, /proc/PID/stat) and of this process (the client) over each round.

--node-tls makes a CA and one certificate per node (openssl, in the temporary directory) and
starts every node with --node-tls-cert/-key/-ca: the control-plane RPC and the replication links
are then mutual TLS.

Every wait is bounded. Nodes are started by this script and killed by it on any exit (an
error, Ctrl-C, SIGTERM), and the namespaces it made are deleted; the temporary directory is
removed unless --keep. The nodes' WARN/ERROR log lines are counted at the end. Results go to
stdout and, with --json FILE, to a JSON file. Needs confluent-kafka; --netns needs root and
iproute2.
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

# Bounds on every wait.
READY_S = 60.0  # spawn -> Kafka port accepting
CONVERGE_S = 60.0  # every node agreeing on a controller leader that lists all alive
CREATE_S = 60.0  # CreateTopics retried until the controller answers
LEADER_S = 30.0  # a created topic's partition 0 led in Metadata
RECOVER_S = 60.0  # kill -9 -> first acknowledgement of a message sent after it
CATCH_UP_S = 60.0  # restarted node -> its copy reaches the leader's high watermark
STOP_S = 30.0  # kill -> reaped
HTTP_S = 5.0  # one admin GET
LATENCY_RUN_S = 1800.0  # the whole kafka_latency run
FLUSH_S = 60.0  # a throughput round's outstanding messages
POLL_SLEEP_S = 0.05
SETTLE_S = 1.0  # after a restarted node caught up, before the next kill
WARMUP_S = 3.0  # acknowledgements flowing before the first kill
LOG_TAIL_LINES = 40
PROBLEM_EXAMPLES = 3  # whole log lines kept per kind of WARN/ERROR line

SEND_INTERVAL_S = 0.002  # failover producer: one message every 2 ms
VALUE_BYTES = 1024
# Ports of node i on loopback: PORT_BASE + PORT_STRIDE * i + offset. The replication listeners
# sit at rpc + 1 + shard, so the stride leaves room for up to SHARDS_MAX shards.
PORT_BASE_RANGE = (20000, 30000)  # below the ephemeral range, so free_port() of others misses it
PORT_STRIDE = 20
SHARDS_MAX = 16
KAFKA_OFF, ADMIN_OFF, RPC_OFF = 0, 1, 2
# In namespaces every node has its own address and the same ports.
NS_KAFKA_PORT, NS_ADMIN_PORT, NS_RPC_PORT = 9092, 9644, 33145
HUB_IP = "10.99.0.254"
CLONE_NEWNET = 0x40000000

FAST_CONTROL = {"raft_tick_ms": 50, "election_ticks": 10, "heartbeat_interval_ms": 200, "session_timeout_ms": 1000}

# Client settings that keep librdkafka's own backoffs out of a failover sample (defaults:
# retry 100 ms .. 1 s, reconnect 100 ms .. 10 s, fast metadata refresh 100 ms).
FAST_CLIENT = {
    "retry.backoff.ms": 10,
    "retry.backoff.max.ms": 50,
    "reconnect.backoff.ms": 10,
    "reconnect.backoff.max.ms": 100,
    "topic.metadata.refresh.fast.interval.ms": 20,
}


def log(msg):
    print(msg, flush=True)


def pct(samples, p):
    """Nearest-rank percentile: with 20 samples p99 is the maximum."""
    s = sorted(samples)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def summary_ms(samples_ms):
    if not samples_ms:
        return None
    return {
        "n": len(samples_ms),
        "min_ms": round(min(samples_ms), 1),
        "p50_ms": round(pct(samples_ms, 50), 1),
        "p99_ms": round(pct(samples_ms, 99), 1),
        "max_ms": round(max(samples_ms), 1),
    }


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_json(host, port, path):
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=HTTP_S) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------- network namespaces


def ip(*args):
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Net:
    """A hub namespace with a bridge, one namespace per node with a veth into it; this process
    moves into the hub so that its clients (and kafka_latency) reach every node."""

    def __init__(self, nodes):
        tag = f"rb{os.getpid()}"
        self.hub = f"{tag}h"
        self.nodes = [f"{tag}n{i}" for i in range(1, nodes + 1)]
        self.made = []
        try:
            self._make()
        except BaseException:
            self.delete()
            raise

    def _make(self):
        ip("netns", "add", self.hub)
        self.made.append(self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.nodes, 1):
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", self.hub, "link", "add", f"e{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.hub, "link", "set", f"e{i}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"10.99.0.{i}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def enter_hub(self):
        """Moves the calling thread (the main thread, before any client thread starts) into the
        hub; threads and processes it starts later inherit it."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{self.hub}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the hub namespace")
        finally:
            os.close(fd)

    def delete(self):
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made = []


# ---------------------------------------------------------------- processes


class Node:
    """One `ferrolog start` process; its ports and directory outlive restarts."""

    def __init__(self, root, node_id, binary, profile, host, ports, netns):
        self.id = node_id
        self.binary = binary
        self.profile = profile
        self.host = host
        self.kafka, self.admin, self.rpc = ports
        self.netns = netns
        self.dir = os.path.join(root, f"node{node_id}")
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.dir)
        self.proc = None
        self.starts = 0
        self.extra = []

    def log_path(self, n=None):
        return os.path.join(self.dir, f"node{self.id}.{n or self.starts}.log")

    def spawn(self, seeds):
        assert self.proc is None, f"node {self.id} is running"
        self.starts += 1
        cmd = [
            self.binary, "start",
            "--node-id", str(self.id),
            "--data-dir", self.data,
            "--kafka-addr", f"{self.host}:{self.kafka}",
            "--admin-addr", f"{self.host}:{self.admin}",
            "--rpc-addr", f"{self.host}:{self.rpc}",
            "--seeds", seeds,
            "--auto-create-topics", "false",
        ]
        if self.profile:
            cmd += ["--profile", self.profile]
        cmd += self.extra
        if self.netns:
            # `ip netns exec` execs the broker: the child's pid is the broker's.
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
        with open(self.log_path(), "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, env=env)
        return cmd

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_serving(self):
        deadline = time.monotonic() + READY_S
        while True:
            if not self.running():
                raise RuntimeError(f"node {self.id} exited during start\n{self.log_tail()}")
            try:
                socket.create_connection((self.host, self.kafka), timeout=0.2).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.id} not serving within {READY_S} s\n{self.log_tail()}")
            time.sleep(0.01)

    def kill9(self):
        """SIGKILL; returns the instant the signal was sent (then reaps)."""
        self.proc.send_signal(signal.SIGKILL)
        t = time.monotonic()
        self.proc.wait(timeout=STOP_S)
        self.proc = None
        return t

    def stop_hard(self):
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=STOP_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.proc = None

    def cluster(self):
        return http_json(self.host, self.admin, "/v1/cluster")

    def partition(self, topic, partition=0):
        """This node's copy of the partition in GET /v1/status, or None."""
        for p in http_json(self.host, self.admin, "/v1/status").get("partitions", []):
            if p.get("topic") == topic and p.get("partition") == partition:
                return p
        return None

    def log_tail(self):
        try:
            with open(self.log_path(), errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        return f"--- node {self.id} log (last lines) ---\n" + "\n".join(lines[-LOG_TAIL_LINES:])

    def log_problems(self):
        out = []
        for n in range(1, self.starts + 1):
            try:
                with open(self.log_path(n), errors="replace") as f:
                    out += [f"node{self.id}.{n}: {l.rstrip()}" for l in f
                            if " WARN " in l or " ERROR " in l or "panicked" in l]
            except OSError:
                pass
        return out


def free_port_base(nodes):
    """A base port whose whole block (every node's Kafka, admin, RPC and replication ports)
    binds on 127.0.0.1 now."""
    import random

    for _ in range(50):
        base = random.randrange(PORT_BASE_RANGE[0], PORT_BASE_RANGE[1] - PORT_STRIDE * (nodes + 1))
        socks = []
        try:
            for port in range(base + PORT_STRIDE, base + PORT_STRIDE * (nodes + 1)):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports found")


def make_node_tls(root, cluster):
    """A CA and a certificate per node naming its host; sets each node's --node-tls-* flags."""
    d = os.path.join(root, "certs")
    os.makedirs(d)

    def openssl(*a):
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=repl-bench-ca", "-keyout", "ca.key", "-out", "ca.pem")
    for n in cluster.nodes:
        name = f"node{n.id}"
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")
        with open(os.path.join(d, f"{name}.cnf"), "w") as f:
            f.write(f"subjectAltName=IP:{n.host}\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.cnf", "-out", f"{name}.pem")
        n.extra = ["--node-tls-cert", os.path.join(d, f"{name}.pem"), "--node-tls-key", os.path.join(d, f"{name}.key"),
                   "--node-tls-ca", os.path.join(d, "ca.pem")]


class Cluster:
    def __init__(self, root, binary, profile, nodes, net):
        self.net = net
        self.nodes = []
        base = None if net else free_port_base(nodes)
        for i in range(1, nodes + 1):
            if net:
                host, ports, ns = f"10.99.0.{i}", (NS_KAFKA_PORT, NS_ADMIN_PORT, NS_RPC_PORT), net.nodes[i - 1]
            else:
                b = base + PORT_STRIDE * i
                host, ports, ns = "127.0.0.1", (b + KAFKA_OFF, b + ADMIN_OFF, b + RPC_OFF), None
            self.nodes.append(Node(root, i, binary, profile, host, ports, ns))
        self.seeds = ",".join(f"{n.id}@{n.host}:{n.rpc}" for n in self.nodes)
        self.bootstrap = ",".join(f"{n.host}:{n.kafka}" for n in self.nodes)

    def node(self, node_id):
        return next(n for n in self.nodes if n.id == node_id)

    def start(self):
        # All at once: a node's start waits for its first metadata, which needs a quorum.
        cmds = [n.spawn(self.seeds) for n in self.nodes]
        for n in self.nodes:
            n.wait_serving()
        self.wait_agreed()
        return cmds

    def stop_hard(self):
        for n in self.nodes:
            n.stop_hard()

    def logs(self):
        return "\n".join(n.log_tail() for n in self.nodes)

    def agreed(self):
        """The controller leader once every running node names the same one and it lists
        every node alive; else None."""
        views = []
        for n in self.nodes:
            if not n.running():
                return None
            try:
                views.append(n.cluster())
            except (OSError, ValueError):
                return None
        leaders = {v.get("leader_id") for v in views}
        if len(leaders) != 1 or -1 in leaders or None in leaders:
            return None
        leader = leaders.pop()
        lv = next((v for v in views if v.get("node_id") == leader), None)
        if lv is None or sum(1 for m in lv.get("members", []) if m.get("alive")) != len(self.nodes):
            return None
        return leader

    def wait_agreed(self):
        deadline = time.monotonic() + CONVERGE_S
        while time.monotonic() < deadline:
            a = self.agreed()
            if a is not None:
                return a
            time.sleep(POLL_SLEEP_S)
        raise RuntimeError(f"no agreed controller leader listing all nodes within {CONVERGE_S} s\n{self.logs()}")

    def broker_cpu(self):
        """{node id: CPU seconds} of the running nodes."""
        return {n.id: cpu_seconds(n.proc.pid) for n in self.nodes if n.running()}

    def problems(self):
        """WARN/ERROR lines of every node, counted by message (time, thread and fields cut),
        with the first PROBLEM_EXAMPLES lines of each kind whole."""
        kinds = {}
        for n in self.nodes:
            for line in n.log_problems():
                m = re.search(r" (WARN|ERROR) \S+ (.*)", line)
                text = m.group(1) + " " + re.split(r" \w+=", m.group(2))[0] if m else line[:200]
                k = kinds.setdefault(text, {"count": 0, "examples": []})
                k["count"] += 1
                if len(k["examples"]) < PROBLEM_EXAMPLES:
                    k["examples"].append(line)
        if kinds:
            log(f"{sum(k['count'] for k in kinds.values())} WARN/ERROR lines in node logs:")
            for text, k in sorted(kinds.items(), key=lambda kv: -kv[1]["count"]):
                log(f"  {k['count']:5} x {text}")
        return kinds


# ---------------------------------------------------------------- Kafka admin


def create_topic(bootstrap, name, rf, durability, partitions=1):
    """CreateTopics of a topic (1 partition unless told), retried on retriable errors until
    CREATE_S; then waits until Metadata names a leader of partition 0."""
    deadline = time.monotonic() + CREATE_S
    last = None
    while True:
        a = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})
        topic = NewTopic(name, partitions, rf, config={"ferrolog.durability": durability})
        fut = a.create_topics([topic], operation_timeout=10, request_timeout=10)[name]
        try:
            fut.result(timeout=CREATE_S)
            break
        except KafkaException as e:
            err = e.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS and last is not None:
                break  # an attempt that timed out on our side was applied after all
            if not err.retriable() and err.code() not in (
                KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError.NOT_CONTROLLER,
                KafkaError.REQUEST_TIMED_OUT,
            ):
                raise RuntimeError(f"create {name}: {err}")
            last = err
        if time.monotonic() > deadline:
            raise RuntimeError(f"create {name}: not created within {CREATE_S} s; last error {last}")
        time.sleep(0.2)
    leader_of(bootstrap, name, LEADER_S)


def leader_of(bootstrap, topic, within_s, partition=0):
    """The leader of the partition (0 unless told) in Metadata from any node of bootstrap."""
    deadline = time.monotonic() + within_s
    last = None
    while time.monotonic() < deadline:
        try:
            a = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000})
            p = a.list_topics(topic, timeout=2).topics[topic].partitions.get(partition)
            if p is not None and p.leader >= 0:
                return p.leader
            last = "no leader"
        except KafkaException as e:
            last = e
        time.sleep(POLL_SLEEP_S)
    raise RuntimeError(f"no leader of {topic}/{partition} within {within_s} s ({last})")


# ---------------------------------------------------------------- latency


ECHO_PORT = 9999
RTT_SAMPLES = 5000

ECHO_SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {ECHO_PORT}))
s.listen(1)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    b = c.recv({VALUE_BYTES})
    if not b:
        break
    c.sendall(b)
"""


def echo_rtt(netns, host):
    """p50/p99 (µs) of a 1 KiB TCP round trip from here to a Python echo server on host
    (started in netns, or here when None): both ends in Python, so the Python cost is in it."""
    cmd = ([] if netns is None else ["ip", "netns", "exec", netns]) + [sys.executable, "-c", ECHO_SERVER]
    server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            try:
                c = socket.create_connection((host, ECHO_PORT), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"echo server on {host}:{ECHO_PORT} not reachable")
                time.sleep(0.02)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.settimeout(HTTP_S)
        msg = bytes(VALUE_BYTES)
        rtts = []
        for _ in range(RTT_SAMPLES):
            t = time.perf_counter()
            c.sendall(msg)
            got = 0
            while got < VALUE_BYTES:
                b = c.recv(VALUE_BYTES - got)
                if not b:
                    raise RuntimeError("echo server closed the connection")
                got += len(b)
            rtts.append((time.perf_counter() - t) * 1e6)
        c.close()
        return {"host": host, "samples": len(rtts), "p50_us": round(pct(rtts, 50), 1),
                "p99_us": round(pct(rtts, 99), 1), "p999_us": round(pct(rtts, 99.9), 1)}
    finally:
        server.kill()
        server.wait(timeout=STOP_S)


def run_latency(args, cluster, root):
    out_json = os.path.join(root, "kafka_latency.json")
    cmd = [args.latency_bin, "--bootstrap", cluster.nodes[0].host + f":{cluster.nodes[0].kafka}",
           "--replication-factor", "1,3", "--durability", args.durability, "--no-minimal-client", "--no-busy-client",
           "--samples", str(args.samples), "--json", out_json]
    log(f"$ {' '.join(cmd)}")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=LATENCY_RUN_S)
    sys.stdout.write(r.stdout)
    if r.returncode != 0:
        raise RuntimeError(f"kafka_latency failed ({r.returncode}):\n{r.stderr[-4000:]}")
    with open(out_json) as f:
        res = json.load(f)
    # The network floor measured by this script, after kafka_latency: loopback here, and with
    # --netns through the bridge and node 1's veth as well.
    floors = {"loopback": echo_rtt(None, "127.0.0.1")}
    if cluster.net is not None:
        floors["veth"] = echo_rtt(cluster.net.nodes[0], cluster.nodes[0].host)
    for name, f in floors.items():
        log(f"1 KiB TCP round trip, Python to Python, {name} ({f['host']}): p50 {f['p50_us']} µs, "
            f"p99 {f['p99_us']} µs, p99.9 {f['p999_us']} µs ({f['samples']} samples)")
    return {"scenario": "latency", "command": cmd, "kafka_latency": res, "python_rtt": floors}


# ---------------------------------------------------------------- failover


class PacedProducer(threading.Thread):
    """Sends one value every SEND_INTERVAL_S to one partition of a topic (`partition`, 0 until
    changed) and records (ack time, send time) of every acknowledgement, and every delivery
    error."""

    def __init__(self, bootstrap, topic, debug=None):
        super().__init__(daemon=True)
        self.topic = topic
        self.acks = []  # (monotonic ack time, monotonic send time); appended by this thread only
        self.errors = []
        self.sent = 0
        self.partition = 0
        self.stop = threading.Event()
        self.producer = Producer(dict(FAST_CLIENT, **{
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 0,
            "message.timeout.ms": int(RECOVER_S * 1000),
            "request.timeout.ms": 5000,
            "socket.timeout.ms": 5000,
        }, **({"debug": debug} if debug else {})))

    def _report(self, err, _msg, sent_at):
        if err is not None:
            self.errors.append((time.monotonic(), str(err)))
        else:
            self.acks.append((time.monotonic(), sent_at))

    def run(self):
        value = bytes(VALUE_BYTES)
        next_send = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                self.producer.produce(self.topic, value, partition=self.partition,
                                      on_delivery=lambda e, m, t=now: self._report(e, m, t))
                self.sent += 1
                next_send += SEND_INTERVAL_S
                if next_send < now:  # fell behind (a stalled core): no burst to catch up
                    next_send = now + SEND_INTERVAL_S
            self.producer.poll(max(0.0, min(next_send - time.monotonic(), 0.001)))
        self.left = self.producer.flush(RECOVER_S)


def wait_first_ack_after(prod, t):
    deadline = time.monotonic() + RECOVER_S
    while time.monotonic() < deadline:
        after = [a for a, s in prod.acks[-2000:] if s > t]
        if after:
            return min(after)
        time.sleep(0.01)
    raise RuntimeError(f"no acknowledgement of a message sent after the kill within {RECOVER_S} s")


def wait_caught_up(cluster, node, topic, partition=0):
    """Waits until the restarted node's copy of the partition reaches the leader's high
    watermark of the moment it started serving."""
    deadline = time.monotonic() + CATCH_UP_S
    target = None
    last = None
    while time.monotonic() < deadline:
        try:
            if target is None:
                leader = cluster.node(leader_of(cluster.bootstrap, topic, LEADER_S, partition))
                lp = leader.partition(topic, partition)
                if lp is not None:
                    target = lp["high_watermark"]
            else:
                p = node.partition(topic, partition)
                last = p
                if p is not None and p["log_end_offset"] >= target:
                    return target
        except (OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(POLL_SLEEP_S)
    raise RuntimeError(f"node {node.id}: copy of {topic}/{partition} not at the leader's high watermark {target} "
                       f"within {CATCH_UP_S} s (last: {last})\n{cluster.logs()}")


def log_events(cluster, pattern):
    """(unix time, line) of every node log line (all starts) matching pattern."""
    out = []
    rx = re.compile(pattern)
    for n in cluster.nodes:
        for k in range(1, n.starts + 1):
            try:
                with open(n.log_path(k), errors="replace") as f:
                    for line in f:
                        if rx.search(line):
                            stamp = line.split(" ", 1)[0]
                            try:
                                out.append((datetime.fromisoformat(stamp).timestamp(), line.strip()))
                            except ValueError:
                                pass
            except OSError:
                pass
    return sorted(out)


def breakdown(cluster, topic, rounds):
    """Adds, per kill, when the controller marked the killed node down and when it elected the
    partition's next leader (the nodes' log lines, wall clock; same machine, same clock)."""
    downs = log_events(cluster, r"missed its session; marking it down|refuses connections; marking it down")
    elected = log_events(cluster, rf"partition leader elected topic={re.escape(topic)} partition=")
    leading = log_events(cluster, rf"replica role changed partition={re.escape(topic)}/")
    explained = set()
    for r in rounds:
        t = r["killed_unix"]
        p = r.get("partition", 0)
        elected_p = [(u, line) for u, line in elected if f" partition={p} " in line]
        leading_p = [(u, line) for u, line in leading if f"/{p} role=Leader " in line]
        d = next((u for u, line in downs if u >= t and f"node={r['killed']}" in line), None)
        explained.add(d)
        e = next((u for u, _ in elected_p if u >= t), None)
        r["kill_to_marked_down_ms"] = None if d is None else round((d - t) * 1000, 1)
        r["kill_to_elected_ms"] = None if e is None else round((e - t) * 1000, 1)
        lead = next((u for u, _ in leading_p if u >= t), None)
        r["kill_to_leading_ms"] = None if lead is None else round((lead - t) * 1000, 1)
    # A node marked down that no kill explains is a false failover (or a second marking of a
    # killed node); each is returned whole, with its time after the first kill.
    t0 = rounds[0]["killed_unix"] if rounds else 0.0
    return [f"+{u - t0:.3f} s: {line}" for u, line in downs if u not in explained]


def partition_led_by(cluster, topic, node, partitions, within_s):
    """A partition of topic that node leads, waiting (the controller's balancing gives a
    restarted node its preferred leadership back after 10 s of being live) up to within_s."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for p in range(partitions):
            try:
                if leader_of(cluster.bootstrap, topic, LEADER_S, p) == node:
                    return p
            except RuntimeError:
                pass
        time.sleep(0.5)
    raise RuntimeError(f"node {node} led no partition of {topic} within {within_s} s")


def run_failover(args, cluster, root):
    topic = "repl-bench-failover"
    # Killing the controller leader: one partition per node, and the producer writes to the
    # one the controller leader leads in each round.
    partitions = len(cluster.nodes) if args.victim == "controller-leader" else 1
    create_topic(cluster.bootstrap, topic, 3, args.durability, partitions)
    prod = PacedProducer(cluster.bootstrap, topic, args.client_debug)
    prod.start()
    time.sleep(WARMUP_S)
    if not prod.acks:
        raise RuntimeError(f"no acknowledgement during the {WARMUP_S} s warm-up; errors {prod.errors[:3]}")
    rounds = []
    try:
        for k in range(args.kills):
            if not prod.is_alive():
                raise RuntimeError("the producer thread stopped")
            controller = cluster.agreed()
            if args.victim == "controller-leader":
                prod.partition = partition_led_by(cluster, topic, controller, partitions, 60)
                time.sleep(1.0)  # acknowledgements flow on that partition before the kill
            leader_id = leader_of(cluster.bootstrap, topic, LEADER_S, prod.partition)
            leader = cluster.node(leader_id)
            killed_wall = time.time()
            killed_at = leader.kill9()
            first_after = wait_first_ack_after(prod, killed_at)
            before = [a for a, _ in prod.acks if a <= killed_at]
            last_before = max(before)
            new_leader = leader_of(",".join(f"{n.host}:{n.kafka}" for n in cluster.nodes if n.running()),
                                   topic, LEADER_S, prod.partition)
            restart_at = time.monotonic()
            leader.spawn(cluster.seeds)
            leader.wait_serving()
            cluster.wait_agreed()
            hw = wait_caught_up(cluster, leader, topic, prod.partition)
            back_s = time.monotonic() - restart_at
            r = {
                "partition": prod.partition,
                "killed": leader_id,
                "controller_leader": controller,
                "killed_unix": killed_wall,
                "new_leader": new_leader,
                "gap_ms": (first_after - last_before) * 1000,
                "kill_to_first_ack_ms": (first_after - killed_at) * 1000,
                "last_ack_to_kill_ms": (killed_at - last_before) * 1000,
                "restart_to_caught_up_s": round(back_s, 2),
                "caught_up_to": hw,
            }
            rounds.append(r)
            log(f"kill {k + 1}/{args.kills}: node {leader_id} (controller leader: {controller}) -> {new_leader}; "
                f"gap {r['gap_ms']:.0f} ms (kill -> first ack {r['kill_to_first_ack_ms']:.0f} ms); "
                f"back and caught up to {hw} in {back_s:.1f} s")
            time.sleep(SETTLE_S)
    finally:
        prod.stop.set()
        prod.join(RECOVER_S + 10)
    left = getattr(prod, "left", None)
    gaps = [r["gap_ms"] for r in rounds]
    unexplained = breakdown(cluster, topic, rounds)
    res = {
        "scenario": "failover",
        "kills": args.kills,
        "victim": args.victim,
        "control": FAST_CONTROL if args.fast_control else "built-in defaults",
        "client": FAST_CLIENT,
        "send_interval_ms": SEND_INTERVAL_S * 1000,
        "sent": prod.sent,
        "acked": len(prod.acks),
        "delivery_errors": len(prod.errors),
        "delivery_error_examples": [e for _, e in prod.errors[:5]],
        "unflushed": left,
        "gap": summary_ms(gaps),
        "kill_to_first_ack": summary_ms([r["kill_to_first_ack_ms"] for r in rounds]),
        "kill_to_marked_down": summary_ms([r["kill_to_marked_down_ms"] for r in rounds
                                           if r.get("kill_to_marked_down_ms") is not None]),
        "kill_to_elected": summary_ms([r["kill_to_elected_ms"] for r in rounds
                                       if r.get("kill_to_elected_ms") is not None]),
        "kill_to_leading": summary_ms([r["kill_to_leading_ms"] for r in rounds
                                       if r.get("kill_to_leading_ms") is not None]),
        "gap_controller_also_killed": summary_ms([r["gap_ms"] for r in rounds
                                                  if r["controller_leader"] == r["killed"]]),
        "gap_controller_survived": summary_ms([r["gap_ms"] for r in rounds
                                               if r["controller_leader"] != r["killed"]]),
        "rounds": rounds,
        "marked_down_without_a_kill": unexplained,
    }
    for line in unexplained:
        log(f"a node marked down that no kill explains: {line}")
    for name in ("kill_to_marked_down", "kill_to_elected", "kill_to_leading", "kill_to_first_ack",
                 "gap_controller_also_killed", "gap_controller_survived"):
        log(f"  {name}: {res[name]}")
    log(f"unavailability over {len(gaps)} kills (last ack before -> first ack after): "
        f"p50 {res['gap']['p50_ms']} ms, p99 {res['gap']['p99_ms']} ms, "
        f"min {res['gap']['min_ms']}, max {res['gap']['max_ms']}; "
        f"{prod.sent} sent, {len(prod.acks)} acked, {len(prod.errors)} delivery errors, {left} unflushed")
    return res


# ---------------------------------------------------------------- throughput


def delete_topic(bootstrap, name):
    a = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})
    try:
        a.delete_topics([name], operation_timeout=30, request_timeout=30)[name].result(timeout=CREATE_S)
    except KafkaException as e:
        log(f"could not delete {name}: {e}")


def throughput_round(bootstrap, topic, messages, cluster):
    acked = [0]
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked[0] += 1

    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 100_000,
        "message.timeout.ms": int(FLUSH_S * 1000),
    })
    # Connect and learn the leader before the clock starts.
    p.produce(topic, bytes(VALUE_BYTES), partition=0, on_delivery=report)
    p.flush(FLUSH_S)
    acked[0] = 0
    value = os.urandom(VALUE_BYTES)
    cpu0, own0 = cluster.broker_cpu(), os.times()
    t0 = time.monotonic()
    sent = 0
    while sent < messages:
        try:
            p.produce(topic, value, partition=0, on_delivery=report)
            sent += 1
        except BufferError:
            p.poll(0.001)
            continue
        if sent % 1000 == 0:
            p.poll(0)
    left = p.flush(FLUSH_S)
    wall = time.monotonic() - t0
    cpu1, own1 = cluster.broker_cpu(), os.times()
    broker_s = sum(cpu1[i] - cpu0[i] for i in cpu0 if cpu0.get(i) is not None and cpu1.get(i) is not None)
    own_s = (own1.user + own1.system) - (own0.user + own0.system)
    return {
        "topic": topic,
        "wall_s": round(wall, 2),
        "acked": acked[0],
        "sent": sent,
        "errors": len(errors),
        "error_examples": errors[:3],
        "unflushed": left,
        "msgs_per_s": round(acked[0] / wall),
        "mb_per_s": round(acked[0] * VALUE_BYTES / wall / 1e6, 1),
        "broker_cpu_cores": round(broker_s / wall, 2),
        "client_cpu_cores": round(own_s / wall, 2),
    }


def run_throughput(args, cluster, root):
    rounds = []
    for k in range(args.rounds):
        for rf in ((1, 3) if k % 2 == 0 else (3, 1)):
            # A topic per round, deleted after it: retention runs every few minutes only, and the
            # disk of the shared machine has a few GB free.
            topic = f"repl-bench-tput-rf{rf}-{k}"
            create_topic(cluster.bootstrap, topic, rf, args.durability)
            r = throughput_round(cluster.bootstrap, topic, args.messages, cluster)
            delete_topic(cluster.bootstrap, topic)
            r["rf"] = rf
            rounds.append(r)
            log(f"round {k + 1}/{args.rounds} RF={rf}: {r['mb_per_s']} MB/s, {r['msgs_per_s']} msgs/s, "
                f"brokers {r['broker_cpu_cores']} cores, client {r['client_cpu_cores']} cores, "
                f"{r['errors']} errors, {r['unflushed']} unflushed")
    totals = {}
    for rf in (1, 3):
        rs = [r for r in rounds if r["rf"] == rf]
        wall = sum(r["wall_s"] for r in rs)
        acked = sum(r["acked"] for r in rs)
        totals[rf] = {
            "rf": rf,
            "seconds": round(wall, 1),
            "msgs_per_s": round(acked / wall),
            "mb_per_s": round(acked * VALUE_BYTES / wall / 1e6, 1),
            "broker_cpu_cores": round(sum(r["broker_cpu_cores"] * r["wall_s"] for r in rs) / wall, 2),
            "client_cpu_cores": round(sum(r["client_cpu_cores"] * r["wall_s"] for r in rs) / wall, 2),
            "errors": sum(r["errors"] for r in rs),
        }
    log("| RF | s | MB/s | msgs/s | broker CPU (cores, all nodes) | client CPU (cores) | errors |")
    log("|---|---|---|---|---|---|---|")
    for t in totals.values():
        log(f"| {t['rf']} | {t['seconds']} | {t['mb_per_s']} | {t['msgs_per_s']} | {t['broker_cpu_cores']} "
            f"| {t['client_cpu_cores']} | {t['errors']} |")
    log(f"RF=3 / RF=1 throughput: {totals[3]['msgs_per_s'] / totals[1]['msgs_per_s']:.2f}")
    return {"scenario": "throughput", "durability": args.durability, "rounds": rounds,
            "totals": list(totals.values())}


# ---------------------------------------------------------------- main


def write_profile(root):
    path = os.path.join(root, "fast-control.toml")
    with open(path, "w") as f:
        f.write("# repl_bench.py --fast-control\n[control]\n")
        for k, v in FAST_CONTROL.items():
            f.write(f"{k} = {v}\n")
    return path


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "..", "target"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(target, "release", "ferrolog"), help="the ferrolog binary")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--netns", action="store_true", help="each node in its own network namespace")
    p.add_argument("--profile", help="hardware profile file passed to every node")
    p.add_argument("--durability", default="direct", help="ferrolog.durability of the topics (latency: a list)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (data, node logs)")
    p.add_argument("--node-tls", action="store_true", help="mutual TLS between the nodes (certificates made here)")
    sub = p.add_subparsers(dest="scenario", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--samples", type=int, default=20000)
    lat.add_argument("--latency-bin", default=os.path.join(target, "release", "kafka_latency"))
    fo = sub.add_parser("failover")
    fo.add_argument("--kills", type=int, default=20)
    fo.add_argument("--fast-control", action="store_true", help=f"[control] {FAST_CONTROL}")
    fo.add_argument("--client-debug", help="librdkafka debug contexts of the producer (to stderr)")
    fo.add_argument("--victim", choices=["partition-leader", "controller-leader"], default="partition-leader",
                    help="whom each round kills: the leader of the producer's partition, or the controller "
                         "leader (the producer then writes to a partition it leads: both die together)")
    tp = sub.add_parser("throughput")
    tp.add_argument("--messages", type=int, default=200_000, help="per round (1 KiB each)")
    tp.add_argument("--rounds", type=int, default=3, help="rounds per replication factor")
    args = p.parse_args()
    args.bin = os.path.abspath(args.bin)
    if not os.access(args.bin, os.X_OK):
        p.error(f"{args.bin} is not an executable (cargo build --release --bin ferrolog -p ferrolog)")
    if args.nodes < 3:
        p.error("--nodes must be at least 3 (the topics have replication factor 3)")

    def on_signal(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    root = tempfile.mkdtemp(prefix="repl_bench.")
    net = None
    cluster = None
    ok = False
    try:
        profile = args.profile
        if getattr(args, "fast_control", False):
            if profile:
                p.error("--fast-control writes its own profile; it does not combine with --profile")
            profile = write_profile(root)
        if args.netns:
            net = Net(args.nodes)
            net.enter_hub()
        cluster = Cluster(root, args.bin, profile, args.nodes, net)
        if args.node_tls:
            make_node_tls(root, cluster)
        cmds = cluster.start()
        log(f"{args.scenario}: {args.nodes} nodes {'in namespaces (veth + bridge)' if net else 'on loopback'}, "
            f"directory {root}; node 1: {' '.join(cmds[0])}")
        run = {"latency": run_latency, "failover": run_failover, "throughput": run_throughput}
        res = run[args.scenario](args, cluster, root)
        res["nodes"] = args.nodes
        res["node_tls"] = args.node_tls
        res["network"] = "netns" if net else "loopback"
        res["node_command"] = cmds[0]
        res["load_average"] = os.getloadavg()
        res["log_problems"] = cluster.problems()
        if args.json:
            with open(args.json, "w") as out:
                json.dump(res, out, indent=1)
        ok = True
    finally:
        if cluster is not None:
            cluster.stop_hard()
        if net is not None:
            net.delete()
        if not ok:
            log("failed" if args.keep else "failed (--keep keeps the node logs)")
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
