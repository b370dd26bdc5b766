#!/usr/bin/env python3
"""Produce latency and throughput with TLS against plain text, in one interleaved run.

  tools/tls_bench.py [--bin target/release/ferrolog] [--baseline-bin PATH] [--plain-bin PATH] [--blocks 10]
                     [--samples 500] [--messages 50000] [--rounds 3] [--json FILE] [--keep]

Starts two release `ferrolog` brokers side by side on 127.0.0.1 with the same profile and flags,
one with a plain-text listener and one with TLS (a CA and server certificate made here with
openssl; librdkafka through confluent-kafka verifies it), and with --baseline-bin a third one,
plain text, running another build (e.g. the commit before TLS: what the plain-text path cost
before), then:

  latency: one 1 KiB message in flight, acks=all, linger.ms=0, from produce() to its delivery
      report, --samples per block and listener, --blocks blocks alternating which listener goes
      first, so both see the same machine conditions; p50/p99/p99.9 per listener, beside the
      loopback TCP round trip of a Python echo (tools/repl_bench.py's echo_rtt) measured in the
      same run, the floor under any request.
  throughput: a producer sending 1 KiB values as fast as librdkafka accepts (acks=all,
      linger.ms=5, one partition), --messages per round, --rounds rounds per listener
      alternating; MB/s acknowledged and the CPU of the broker and of this client per round.

Each broker runs on every CPU of the machine (the default profile); a broker is idle while the
other one is measured. Every wait is bounded; the brokers are killed on any exit. Needs
confluent-kafka and openssl.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from repl_bench import cpu_seconds, echo_rtt, pct  # noqa: E402

READY_S = 60.0
WAIT_S = 60.0
VALUE_BYTES = 1024


def log(msg):
    print(msg, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_certs(d):
    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
        "-out", "server.csr")  # fmt: skip
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")  # fmt: skip
    return {k: os.path.join(d, f) for k, f in [("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key")]}


class Broker:
    def __init__(self, binary, root, name, extra):
        self.name = name
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        data = os.path.join(root, name)
        self.log_path = os.path.join(root, f"{name}.log")
        self.proc = subprocess.Popen(
            [binary, "start", "--data-dir", data, "--kafka-addr", self.bootstrap, "--admin-addr", "none", *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "w"),
        )
        deadline = time.monotonic() + READY_S
        while "serving the Kafka API" not in open(self.log_path).read():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {self.log_path}")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def client_conf(broker, ca):
    c = {"bootstrap.servers": broker.bootstrap}
    if broker.name == "tls":  # the others are plain text
        c.update({"security.protocol": "SSL", "ssl.ca.location": ca})
    return c


def create_topic(broker, ca, topic):
    adm = AdminClient(client_conf(broker, ca))
    adm.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while True:
        t = adm.list_topics(topic, timeout=10).topics.get(topic)
        if t is not None and t.error is None and t.partitions and t.partitions[0].leader >= 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{topic} on {broker.name} never got a leader")
        time.sleep(0.05)


class Prober:
    """One message in flight: produce() to its delivery report."""

    def __init__(self, broker, ca, topic):
        self.topic = topic
        self.done = None
        self.p = Producer({**client_conf(broker, ca), "acks": "all", "linger.ms": 0,
                           "message.timeout.ms": int(WAIT_S * 1000)})  # fmt: skip
        self.value = os.urandom(VALUE_BYTES)
        for _ in range(200):  # connect, learn the leader, warm up
            self.once()

    def _report(self, err, _msg):
        if err is not None:
            raise RuntimeError(f"delivery failed: {err}")
        self.done = time.perf_counter()

    def once(self):
        self.done = None
        t = time.perf_counter()
        self.p.produce(self.topic, self.value, partition=0, on_delivery=self._report)
        deadline = t + WAIT_S
        while self.done is None:
            self.p.poll(0.0005)
            if time.perf_counter() > deadline:
                raise RuntimeError("no delivery report")
        return (self.done - t) * 1e6


def throughput_round(broker, ca, topic, messages):
    acked = [0]

    def report(err, _msg):
        if err is not None:
            raise RuntimeError(f"delivery failed: {err}")
        acked[0] += 1

    p = Producer({**client_conf(broker, ca), "acks": "all", "linger.ms": 5, "batch.size": 1_000_000,
                  "queue.buffering.max.messages": 100_000, "message.timeout.ms": int(WAIT_S * 1000)})  # fmt: skip
    p.produce(topic, bytes(VALUE_BYTES), partition=0, on_delivery=report)
    p.flush(WAIT_S)
    acked[0] = 0
    value = os.urandom(VALUE_BYTES)
    cpu0, own0 = cpu_seconds(broker.proc.pid), os.times()
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
    left = p.flush(WAIT_S)
    wall = time.monotonic() - t0
    cpu1, own1 = cpu_seconds(broker.proc.pid), os.times()
    if left or acked[0] != messages:
        raise RuntimeError(f"{broker.name}: {acked[0]} of {messages} acknowledged, {left} left")
    return {
        "wall_s": round(wall, 2),
        "mb_per_s": round(messages * VALUE_BYTES / wall / 1e6, 1),
        "broker_cpu_cores": round((cpu1 - cpu0) / wall, 2),
        "client_cpu_cores": round(((own1.user + own1.system) - (own0.user + own0.system)) / wall, 2),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/ferrolog")
    ap.add_argument("--baseline-bin")
    ap.add_argument("--plain-bin", help="binary of the plain-text broker (default --bin), to swap the slots")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--start-order", default="plain,tls,baseline",
                    help="which broker starts first, second, third (the first started measured slower on this VM)")
    ap.add_argument("--json")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="tls-bench-")
    brokers = []
    try:
        certs = make_certs(root)
        kinds = {
            "plain": (args.plain_bin or args.bin, []),
            "tls": (args.bin, ["--kafka-tls-cert", certs["cert"], "--kafka-tls-key", certs["key"]]),
        }
        if args.baseline_bin:
            kinds["baseline"] = (args.baseline_bin, [])
        start_order = [k for k in args.start_order.split(",") if k in kinds]
        brokers = []
        for name in start_order:
            binary, extra = kinds[name]
            brokers.append(Broker(binary, root, name, extra))
        for b in brokers:
            create_topic(b, certs["ca"], "lat")
            create_topic(b, certs["ca"], "tput")
        probers = {b.name: Prober(b, certs["ca"], "lat") for b in brokers}
        lat = {b.name: [] for b in brokers}
        for block in range(args.blocks):
            order = brokers if block % 2 == 0 else brokers[::-1]
            for b in order:
                lat[b.name].extend(probers[b.name].once() for _ in range(args.samples))
        # Destroy the producers while their brokers still run (no disconnect noise at exit).
        del probers
        floor = echo_rtt(None, "127.0.0.1")
        res = {"start_order": start_order, "latency_us": {}, "loopback_rtt_us": floor, "throughput": {b.name: [] for b in brokers}}
        log(f"brokers started in the order {start_order}")
        log(f"produce latency, 1 KiB, acks=all, one in flight; {args.blocks} blocks x {args.samples} per listener")
        log(f"{'listener':<10}{'p50 us':>10}{'p99 us':>10}{'p99.9 us':>10}{'p99/floor p99':>16}")
        for name, s in lat.items():
            row = {"n": len(s), "p50": round(pct(s, 50), 1), "p99": round(pct(s, 99), 1),
                   "p999": round(pct(s, 99.9), 1)}  # fmt: skip
            res["latency_us"][name] = row
            log(f"{name:<10}{row['p50']:>10}{row['p99']:>10}{row['p999']:>10}{row['p99'] / floor['p99_us']:>16.1f}")
        log(f"{'loopback':<10}{floor['p50_us']:>10}{floor['p99_us']:>10}{floor['p999_us']:>10}")
        for r in range(args.rounds):
            order = brokers if r % 2 == 0 else brokers[::-1]
            for b in order:
                res["throughput"][b.name].append(throughput_round(b, certs["ca"], "tput", args.messages))
        res["load_average_end"] = os.getloadavg()
        log(f"load average at the end: {res['load_average_end']}")
        log(f"throughput, 1 KiB, acks=all, linger.ms=5, one partition, {args.messages} messages per round")
        for name, rounds in res["throughput"].items():
            log(f"{name:<10}" + "  ".join(
                f"{r['mb_per_s']} MB/s (broker {r['broker_cpu_cores']} cores, client {r['client_cpu_cores']})"
                for r in rounds))  # fmt: skip
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
    finally:
        for b in brokers:
            b.stop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
