#!/usr/bin/env python3
"""Control-plane benchmarks of a real `ferrolog start` cluster on loopback (issue 13).

  tools/control_bench.py --bin target/release/ferrolog failover [--kills 20] [--raft-tick-ms 100]
      3 voters. Each round: find the agreed controller leader (GET /v1/cluster), kill -9 it,
      and from that instant retry a raw CreateTopics (v4) of a fresh 1-partition topic on a
      surviving node until one succeeds; that time is the sample. Then restart the killed node
      on its ports and data directory and wait until all three agree on one leader and list
      three live members before the next kill.
  tools/control_bench.py --bin ... propagation [--topics 50]
      3 voters. CreateTopics on node A (A rotates), then poll every node's Metadata (v4, that
      topic only, no auto-creation) round-robin until each lists the topic with all partitions
      led. Samples: from the CreateTopics response, and from its send, to the last node seeing
      it. The loopback round trip of an ApiVersions request to each node is measured too.
  tools/control_bench.py --bin ... snapshot [--topics 10 --partitions 1000]
      One voter (no --seeds). Creates the topics, reports the controller directory (snapshot,
      log.N), SIGTERMs and times the restart until Metadata lists every topic; then creates and
      deletes 1-partition topics until the controller takes a snapshot (every 1000 applied
      entries), and reports sizes and the restart again.

Every wait is bounded. Processes are started by this script and killed by it on any exit
(an error, Ctrl-C, SIGTERM); the temporary directory is removed unless --keep. Results go to
stdout and, with --json FILE, to a JSON file. Node logs are scanned for WARN/ERROR lines.
Needs only the Python standard library.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

# Bounds on every wait.
READY_S = 60.0  # spawn -> Kafka port accepting (10,000 partition logs to open)
CONVERGE_S = 60.0  # an election and a restarted node rejoining
CREATE_S = 30.0  # a CreateTopics retried through a failover
VISIBLE_S = 30.0  # a created topic reaching every node's Metadata
STOP_S = 60.0  # SIGTERM -> exit (every log flushed and closed)
SOCKET_S = 10.0  # one Kafka request
HTTP_S = 5.0  # one GET /v1/cluster
RETRY_SLEEP_S = 0.02  # between two failed CreateTopics of one failover
POLL_SLEEP_S = 0.05  # between two /v1/cluster polls
CHURN_PAIRS_MAX = 2000  # create+delete pairs while waiting for a snapshot
LOG_TAIL_LINES = 40

# Kafka error codes this script names.
NONE = 0
TOPIC_ALREADY_EXISTS = 36


def log(msg):
    print(msg, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- Kafka wire


def _str(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


class Reader:
    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v[0]

    def i8(self):
        return self.take(">b")

    def i16(self):
        return self.take(">h")

    def i32(self):
        return self.take(">i")

    def string(self):
        n = self.i16()
        if n < 0:
            return None
        s = self.buf[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def array(self, item):
        n = self.i32()
        return [item() for _ in range(max(n, 0))]


class KafkaConn:
    """One connection; one request at a time (non-flexible versions only)."""

    API_CREATE_TOPICS = 19
    API_DELETE_TOPICS = 20
    API_METADATA = 3
    API_VERSIONS = 18

    def __init__(self, port, timeout_s=SOCKET_S):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.correlation = 0

    def close(self):
        self.sock.close()

    def _recv_exact(self, n):
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("connection closed by the broker")
            out += chunk
        return bytes(out)

    def request(self, api_key, version, body):
        self.correlation += 1
        header = struct.pack(">hhi", api_key, version, self.correlation) + _str("control_bench")
        msg = header + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", self._recv_exact(4))[0]
        resp = self._recv_exact(size)
        got = struct.unpack_from(">i", resp)[0]
        if got != self.correlation:
            raise ConnectionError(f"correlation id {got}, expected {self.correlation}")
        return Reader(resp[4:])

    def api_versions(self):
        r = self.request(self.API_VERSIONS, 0, b"")
        return r.i16()

    def create_topic(self, name, partitions, rf, timeout_ms):
        """CreateTopics v4 of one topic: (error_code, error_message)."""
        topic = _str(name) + struct.pack(">ihii", partitions, rf, 0, 0)
        body = struct.pack(">i", 1) + topic + struct.pack(">ib", timeout_ms, 0)
        r = self.request(self.API_CREATE_TOPICS, 4, body)
        r.i32()  # throttle
        res = r.array(lambda: (r.string(), r.i16(), r.string()))
        if len(res) != 1 or res[0][0] != name:
            raise ValueError(f"CreateTopics answered {res}")
        return res[0][1], res[0][2]

    def delete_topic(self, name, timeout_ms):
        """DeleteTopics v1 of one topic: its error code."""
        body = struct.pack(">i", 1) + _str(name) + struct.pack(">i", timeout_ms)
        r = self.request(self.API_DELETE_TOPICS, 1, body)
        r.i32()  # throttle
        res = r.array(lambda: (r.string(), r.i16()))
        if len(res) != 1:
            raise ValueError(f"DeleteTopics answered {res}")
        return res[0][1]

    def metadata(self, topics):
        """Metadata v4, no auto-creation; topics=None lists all.
        Returns {name: (error_code, [leader_id per partition])}."""
        if topics is None:
            body = struct.pack(">i", -1)
        else:
            body = struct.pack(">i", len(topics)) + b"".join(_str(t) for t in topics)
        r = self.request(self.API_METADATA, 4, body + struct.pack(">b", 0))
        r.i32()  # throttle
        r.array(lambda: (r.i32(), r.string(), r.i32(), r.string()))  # brokers
        r.string()  # cluster id
        r.i32()  # controller id
        out = {}

        def partition():
            r.i16()
            r.i32()
            leader = r.i32()
            r.array(r.i32)
            r.array(r.i32)
            return leader

        def topic():
            code = r.i16()
            name = r.string()
            r.i8()
            out[name] = (code, r.array(partition))

        r.array(topic)
        return out


def visible(md, name, partitions):
    t = md.get(name)
    return t is not None and t[0] == NONE and len(t[1]) == partitions and all(l >= 0 for l in t[1])


# ---------------------------------------------------------------- processes


class Node:
    """One `ferrolog start` process; its ports and directory outlive restarts."""

    def __init__(self, root, node_id, binary, profile):
        self.id = node_id
        self.binary = binary
        self.profile = profile
        self.kafka = free_port()
        self.rpc = free_port()
        self.admin = free_port()
        self.dir = os.path.join(root, f"node{node_id}")
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.dir)
        self.proc = None
        self.starts = 0

    def log_path(self, n=None):
        return os.path.join(self.dir, f"node{self.id}.{n or self.starts}.log")

    def spawn(self, seeds):
        assert self.proc is None, f"node {self.id} is running"
        self.starts += 1
        cmd = [
            self.binary, "start",
            "--node-id", str(self.id),
            "--data-dir", self.data,
            "--kafka-addr", f"127.0.0.1:{self.kafka}",
            "--admin-addr", f"127.0.0.1:{self.admin}",
            "--auto-create-topics", "false",
        ]
        if seeds:
            cmd += ["--rpc-addr", f"127.0.0.1:{self.rpc}", "--seeds", seeds]
        if self.profile:
            cmd += ["--profile", self.profile]
        env = dict(os.environ, NO_COLOR="1", RUST_LOG="info")
        with open(self.log_path(), "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, env=env)
        return time.monotonic()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_serving(self, deadline_s=READY_S):
        deadline = time.monotonic() + deadline_s
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"node {self.id} exited during start\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.kafka), timeout=0.2).close()
                return time.monotonic()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.id} not serving within {deadline_s} s\n{self.log_tail()}")
            time.sleep(0.01)

    def kill9(self):
        """SIGKILL; returns the instant the signal was sent (then reaps)."""
        self.proc.send_signal(signal.SIGKILL)
        t = time.monotonic()
        self.proc.wait(timeout=STOP_S)
        self.proc = None
        return t

    def terminate(self):
        """SIGTERM and wait for a clean exit; returns seconds to exit."""
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"node {self.id} did not stop within {STOP_S} s\n{self.log_tail()}")
        self.proc = None
        if code != 0:
            raise RuntimeError(f"node {self.id} exited with {code} on SIGTERM\n{self.log_tail()}")
        return time.monotonic() - t

    def stop_hard(self):
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=STOP_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.proc = None

    def proc_usage(self):
        """Open file descriptors and resident memory (MiB) of the process."""
        pid = self.proc.pid
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/status") as f:
            rss_kib = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        return {"fds": fds, "rss_mib": round(rss_kib / 1024)}

    def cluster(self):
        url = f"http://127.0.0.1:{self.admin}/v1/cluster"
        with urllib.request.urlopen(url, timeout=HTTP_S) as r:
            return json.loads(r.read())

    def log_tail(self):
        try:
            with open(self.log_path(), errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        return f"--- node {self.id} log (last lines) ---\n" + "\n".join(lines[-LOG_TAIL_LINES:])

    def log_problems(self):
        """WARN/ERROR lines of every start of this node."""
        out = []
        for n in range(1, self.starts + 1):
            try:
                with open(self.log_path(n), errors="replace") as f:
                    for line in f:
                        if " WARN " in line or " ERROR " in line or "panicked" in line:
                            out.append(f"node{self.id}.{n}: {line.rstrip()}")
            except OSError:
                pass
        return out


class Cluster:
    def __init__(self, root, binary, profile, voters):
        self.nodes = [Node(root, i, binary, profile) for i in range(1, voters + 1)]
        if voters > 1:
            self.seeds = ",".join(f"{n.id}@127.0.0.1:{n.rpc}" for n in self.nodes)
        else:
            self.seeds = None

    def node(self, node_id):
        return next(n for n in self.nodes if n.id == node_id)

    def start(self):
        # All at once: a node's start waits for its first metadata, which needs a quorum.
        for n in self.nodes:
            n.spawn(self.seeds)
        for n in self.nodes:
            n.wait_serving()

    def stop_hard(self):
        for n in self.nodes:
            n.stop_hard()

    def logs(self):
        return "\n".join(n.log_tail() for n in self.nodes)

    def agreed(self):
        """(leader, term) once every running node reports the same leader and
        the leader lists every node alive; else None."""
        views = []
        for n in self.nodes:
            if not n.running():
                return None
            try:
                views.append(n.cluster())
            except (OSError, ValueError):
                return None
        leaders = {v.get("leader_id") for v in views}
        if len(leaders) != 1 or -1 in leaders:
            return None
        leader = leaders.pop()
        lv = next(v for v in views if v.get("node_id") == leader)
        alive = sum(1 for m in lv.get("members", []) if m.get("alive"))
        if alive != len(self.nodes):
            return None
        return leader, lv.get("term")

    def wait_agreed(self):
        deadline = time.monotonic() + CONVERGE_S
        while time.monotonic() < deadline:
            a = self.agreed()
            if a is not None:
                return a
            time.sleep(POLL_SLEEP_S)
        views = []
        for n in self.nodes:
            try:
                views.append(json.dumps(n.cluster()))
            except (OSError, ValueError) as e:
                views.append(f"node {n.id}: {e}")
        raise RuntimeError(f"no agreed leader within {CONVERGE_S} s\n" + "\n".join(views) + "\n" + self.logs())


# ---------------------------------------------------------------- statistics


def pct(samples, p):
    """Nearest-rank percentile: with 20 samples p99 is the maximum."""
    s = sorted(samples)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def summary(samples_ms):
    return {
        "n": len(samples_ms),
        "min_ms": round(min(samples_ms), 3),
        "p50_ms": round(pct(samples_ms, 50), 3),
        "p99_ms": round(pct(samples_ms, 99), 3),
        "max_ms": round(max(samples_ms), 3),
        "mean_ms": round(statistics.mean(samples_ms), 3),
    }


def fmt(s):
    return (f"n={s['n']} min {s['min_ms']} p50 {s['p50_ms']} p99 {s['p99_ms']} "
            f"max {s['max_ms']} mean {s['mean_ms']} ms")


# ---------------------------------------------------------------- scenarios


def create_until_ok(port, name, partitions, rf, deadline_s):
    """Retries CreateTopics until it succeeds; returns (attempts, errors seen)."""
    deadline = time.monotonic() + deadline_s
    attempts = 0
    errors = {}
    uncertain = False  # an attempt may have been applied without our seeing the answer
    conn = None
    while time.monotonic() < deadline:
        attempts += 1
        try:
            if conn is None:
                conn = KafkaConn(port, timeout_s=SOCKET_S)
            code, msg = conn.create_topic(name, partitions, rf, timeout_ms=int(SOCKET_S * 1000) - 1000)
            if code == NONE or (code == TOPIC_ALREADY_EXISTS and uncertain):
                conn.close()
                return attempts, errors
            key = f"kafka error {code}: {msg}"
            uncertain = True
        except (OSError, ValueError, struct.error) as e:
            key = f"{type(e).__name__}: {e}"
            uncertain = True
            if conn is not None:
                conn.close()
            conn = None
        errors[key] = errors.get(key, 0) + 1
        time.sleep(RETRY_SLEEP_S)
    raise RuntimeError(f"{name} not created within {deadline_s} s; errors {errors}")


def write_profile(root, raft_tick_ms, election_ticks):
    if raft_tick_ms is None and election_ticks is None:
        return None
    path = os.path.join(root, "profile.toml")
    with open(path, "w") as f:
        f.write("[control]\n")
        if raft_tick_ms is not None:
            f.write(f"raft_tick_ms = {raft_tick_ms}\n")
        if election_ticks is not None:
            f.write(f"election_ticks = {election_ticks}\n")
    return path


def run_failover(args, root):
    profile = write_profile(root, args.raft_tick_ms, args.election_ticks)
    tick = args.raft_tick_ms or 100
    ticks = args.election_ticks or 10
    c = Cluster(root, args.bin, profile, 3)
    args.cleanup.append(c)
    c.start()
    leader, term = c.wait_agreed()
    log(f"cluster up: leader {leader} term {term}; election timeout "
        f"{tick * ticks}-{tick * (2 * ticks - 1)} ms (tick {tick} ms x [{ticks}, {2 * ticks}) ticks)")
    samples = []
    rounds = []
    all_errors = {}
    for i in range(args.kills):
        leader, term = c.wait_agreed()
        survivors = [n for n in c.nodes if n.id != leader]
        target = survivors[i % len(survivors)]
        victim = c.node(leader)
        t0 = victim.kill9()
        attempts, errors = create_until_ok(target.kafka, f"failover-{i}", 1, 1, CREATE_S)
        ms = (time.monotonic() - t0) * 1000
        samples.append(ms)
        for k, v in errors.items():
            all_errors[k] = all_errors.get(k, 0) + v
        try:
            new = target.cluster()
            new_leader, new_term = new.get("leader_id"), new.get("term")
        except (OSError, ValueError):
            new_leader, new_term = None, None
        rounds.append({"killed": leader, "term_before": term, "via": target.id, "ms": round(ms, 1),
                       "attempts": attempts, "new_leader": new_leader, "term_after": new_term})
        log(f"kill {i + 1:2}: leader {leader} (term {term}) killed; CreateTopics via node {target.id} ok after "
            f"{ms:7.1f} ms, {attempts} attempts; new leader {new_leader} term {new_term}")
        victim.spawn(c.seeds)
        victim.wait_serving()
    c.wait_agreed()
    s = summary(samples)
    log(f"failover (kill -9 of the leader -> CreateTopics ok): {fmt(s)}")
    log(f"errors answered while retrying: {json.dumps(all_errors)}")
    return {"scenario": "failover", "raft_tick_ms": tick, "election_ticks": ticks,
            "election_timeout_ms": [tick * ticks, tick * (2 * ticks - 1)], "summary": s,
            "rounds": rounds, "errors": all_errors, "log_problems": problems(c)}


def run_propagation(args, root):
    c = Cluster(root, args.bin, None, 3)
    args.cleanup.append(c)
    c.start()
    leader, term = c.wait_agreed()
    log(f"cluster up: leader {leader} term {term}")
    conns = {n.id: KafkaConn(n.kafka) for n in c.nodes}
    rtt = []
    for _ in range(200):
        for conn in conns.values():
            t = time.perf_counter()
            conn.api_versions()
            rtt.append((time.perf_counter() - t) * 1000)
    since_ack = []
    since_send = []
    create_ms = []
    polls = 0
    poll_s = 0.0
    first_round = 0  # topics every node listed at its first poll after the answer
    for i in range(args.topics):
        a = c.nodes[i % 3]
        name = f"prop-{i}"
        t_send = time.perf_counter()
        code, msg = conns[a.id].create_topic(name, args.partitions, 1, timeout_ms=int(SOCKET_S * 1000) - 1000)
        t_ack = time.perf_counter()
        if code != NONE:
            raise RuntimeError(f"create {name} on node {a.id}: error {code} {msg}")
        seen = {}
        deadline = t_ack + VISIBLE_S
        rounds = 0
        while len(seen) < 3:
            rounds += 1
            for n in c.nodes:
                if n.id in seen:
                    continue
                t = time.perf_counter()
                md = conns[n.id].metadata([name])
                now = time.perf_counter()
                polls += 1
                poll_s += now - t
                if visible(md, name, args.partitions):
                    seen[n.id] = now
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{name} seen by {sorted(seen)} only after {VISIBLE_S} s\n{c.logs()}")
        first_round += rounds == 1
        last = max(seen.values())
        since_ack.append((last - t_ack) * 1000)
        since_send.append((last - t_send) * 1000)
        create_ms.append((t_ack - t_send) * 1000)
    for conn in conns.values():
        conn.close()
    res = {
        "scenario": "propagation",
        "topics": args.topics,
        "partitions": args.partitions,
        "create_ms": summary(create_ms),
        "ack_to_all_nodes_ms": summary(since_ack),
        "send_to_all_nodes_ms": summary(since_send),
        "api_versions_rtt_ms": summary(rtt),
        "metadata_poll_mean_ms": round(poll_s / polls * 1000, 3),
        "visible_everywhere_at_first_poll": first_round,
        "log_problems": problems(c),
    }
    log(f"CreateTopics latency:                 {fmt(res['create_ms'])}")
    log(f"CreateTopics answered -> on all nodes: {fmt(res['ack_to_all_nodes_ms'])}")
    log(f"CreateTopics sent -> on all nodes:     {fmt(res['send_to_all_nodes_ms'])}")
    log(f"ApiVersions round trip (loopback):     {fmt(res['api_versions_rtt_ms'])}")
    log(f"one Metadata poll (mean): {res['metadata_poll_mean_ms']} ms over {polls} polls; "
        f"{first_round} of {args.topics} topics listed by every node at its first poll")
    return res


def dir_sizes(path):
    out = {}
    for name in sorted(os.listdir(path)):
        p = os.path.join(path, name)
        if os.path.isfile(p):
            out[name] = os.path.getsize(p)
    return out


def timed_restart(c, node, want_topics, want_partitions):
    """SIGTERM, then restart; returns the timings in ms."""
    stop_s = node.terminate()
    t0 = node.spawn(c.seeds)
    t_port = node.wait_serving()
    deadline = time.monotonic() + READY_S
    conn = None
    while True:
        try:
            if conn is None:
                conn = KafkaConn(node.kafka)
            md = conn.metadata(None)
            if all(visible(md, t, want_partitions) for t in want_topics):
                break
        except (OSError, ValueError, struct.error):
            if conn is not None:
                conn.close()
            conn = None
        if time.monotonic() > deadline:
            raise RuntimeError(f"metadata incomplete {READY_S} s after restart\n{node.log_tail()}")
        time.sleep(0.01)
    t_md = time.monotonic()
    conn.close()
    return {"sigterm_to_exit_ms": round(stop_s * 1000, 1), "spawn_to_port_ms": round((t_port - t0) * 1000, 1),
            "spawn_to_metadata_ms": round((t_md - t0) * 1000, 1), "after": node.proc_usage()}


def run_snapshot(args, root):
    c = Cluster(root, args.bin, None, 1)
    args.cleanup.append(c)
    node = c.nodes[0]
    c.start()
    ctl = os.path.join(node.data, "controller")
    conn = KafkaConn(node.kafka, timeout_s=120)
    names = [f"big-{i}" for i in range(args.topics)]
    create_ms = []
    for name in names:
        t = time.monotonic()
        code, msg = conn.create_topic(name, args.partitions, 1, timeout_ms=110_000)
        create_ms.append((time.monotonic() - t) * 1000)
        if code != NONE:
            raise RuntimeError(f"create {name}: error {code} {msg}\n{node.log_tail()}")
    conn.close()
    before = node.cluster()
    sizes1 = dir_sizes(ctl)
    usage = node.proc_usage()
    log(f"{args.topics} x {args.partitions} partitions created; CreateTopics ms each: "
        f"{[round(x) for x in create_ms]}; applied_index {before.get('applied_index')}; node {usage}")
    log(f"controller dir: {sizes1}")
    r1 = timed_restart(c, node, names, args.partitions)
    log(f"restart (log replay, no snapshot since start): {r1}")

    # Drive applied entries past the next multiple of 1000 to get a snapshot.
    snap = os.path.join(ctl, "snapshot")
    snap_stat = os.stat(snap) if os.path.exists(snap) else None
    conn = KafkaConn(node.kafka, timeout_s=60)
    pairs = 0
    while pairs < CHURN_PAIRS_MAX:
        now = os.stat(snap) if os.path.exists(snap) else None
        if now is not None and (snap_stat is None or now.st_mtime_ns != snap_stat.st_mtime_ns):
            break
        name = f"churn-{pairs}"
        code, msg = conn.create_topic(name, 1, 1, timeout_ms=50_000)
        if code != NONE:
            raise RuntimeError(f"create {name}: error {code} {msg}")
        code = conn.delete_topic(name, timeout_ms=50_000)
        if code != NONE:
            raise RuntimeError(f"delete {name}: error {code}")
        pairs += 1
    conn.close()
    after = node.cluster()
    sizes2 = dir_sizes(ctl)
    log(f"{pairs} create+delete pairs; applied_index {after.get('applied_index')}; controller dir: {sizes2}")
    r2 = timed_restart(c, node, names, args.partitions)
    log(f"restart (from the snapshot): {r2}")
    return {"scenario": "snapshot", "topics": args.topics, "partitions": args.partitions,
            "create_ms": [round(x, 1) for x in create_ms], "node_after_create": usage,
            "applied_index_after_create": before.get("applied_index"), "controller_dir_after_create": sizes1,
            "restart_after_create": r1, "churn_pairs": pairs,
            "applied_index_after_churn": after.get("applied_index"), "controller_dir_after_churn": sizes2,
            "restart_after_snapshot": r2, "log_problems": problems(c)}


def problems(c):
    """WARN/ERROR lines of every node, counted by message (time, thread and fields cut)."""
    kinds = {}
    for n in c.nodes:
        for line in n.log_problems():
            m = re.search(r" (WARN|ERROR) \S+ (.*)", line)
            text = m.group(1) + " " + re.split(r" \w+=", m.group(2))[0] if m else line[:200]
            kinds[text] = kinds.get(text, 0) + 1
    if kinds:
        log(f"{sum(kinds.values())} WARN/ERROR lines in node logs:")
        for text, count in sorted(kinds.items(), key=lambda kv: -kv[1]):
            log(f"  {count:5} x {text}")
    return kinds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/release/ferrolog", help="the ferrolog binary (release build)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (data, node logs)")
    sub = p.add_subparsers(dest="scenario", required=True)
    f = sub.add_parser("failover", help="kill -9 the controller leader, time until CreateTopics works")
    f.add_argument("--kills", type=int, default=20)
    f.add_argument("--raft-tick-ms", type=int, help="profile [control] raft_tick_ms (default 100)")
    f.add_argument("--election-ticks", type=int, help="profile [control] election_ticks (default 10)")
    m = sub.add_parser("propagation", help="CreateTopics on one node -> visible in every node's Metadata")
    m.add_argument("--topics", type=int, default=50)
    m.add_argument("--partitions", type=int, default=1)
    s = sub.add_parser("snapshot", help="controller snapshot/log size and restart time with many partitions")
    s.add_argument("--topics", type=int, default=10)
    s.add_argument("--partitions", type=int, default=1000)
    args = p.parse_args()
    args.bin = os.path.abspath(args.bin)
    if not os.access(args.bin, os.X_OK):
        p.error(f"{args.bin} is not an executable (build it: cargo build --release -p ferrolog)")
    args.cleanup = []
    root = tempfile.mkdtemp(prefix="control_bench.")

    def on_signal(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ok = False
    try:
        log(f"{args.scenario}: binary {args.bin}, directory {root}")
        run = {"failover": run_failover, "propagation": run_propagation, "snapshot": run_snapshot}
        res = run[args.scenario](args, root)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(res, out, indent=1)
        ok = True
    finally:
        for c in args.cleanup:
            c.stop_hard()
        if not ok:
            log("failed" if args.keep else "failed (--keep keeps the node logs)")
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
