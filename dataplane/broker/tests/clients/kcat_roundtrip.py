"""kcat (librdkafka's command-line client) against ferrolog, started with
--default-partitions 3: a keyed produce auto-creates its topic with three
partitions, `kcat -C -e -o beginning` reads every message back byte for byte with
per-partition order kept, `kcat -L -J` shows the broker and the topic, every
`-z` codec round-trips, and `-H` headers come back."""

import json
import subprocess

from e2e import check, check_eq, fail, log, parse_args

args = parse_args(("--partitions", {"type": int, "required": True}))
B = args.bootstrap
TIMEOUT_S = 20


def kcat(*argv, stdin=b""):
    cmd = ["kcat", "-b", B, "-X", "socket.timeout.ms=10000", *argv]
    try:
        out = subprocess.run(cmd, input=stdin, capture_output=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        fail("kcat is not installed (tools/setup.sh installs it)")
    except subprocess.TimeoutExpired as e:
        fail(f"{' '.join(cmd)} timed out after {TIMEOUT_S}s; stderr: {e.stderr!r}")
    if out.returncode != 0:
        fail(f"{' '.join(cmd)} exited {out.returncode}; stderr: {out.stderr.decode(errors='replace')}")
    return out.stdout


# One record per kcat output line: partition, offset, key length, value length,
# then the key and value bytes themselves (lengths make it byte-exact; -1 = null).
FORMAT = "%p:%o:%K:%S:%k%s\n"


def consume(topic):
    """[(partition, offset, key, value)] of every message in `topic`."""
    raw = kcat("-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", FORMAT)
    records = []
    pos = 0
    while pos < len(raw):
        fields = []
        for _ in range(4):
            end = raw.index(b":", pos)
            fields.append(int(raw[pos:end]))
            pos = end + 1
        partition, offset, klen, vlen = fields
        key = None if klen < 0 else raw[pos : pos + klen]
        pos += max(klen, 0)
        value = None if vlen < 0 else raw[pos : pos + vlen]
        pos += max(vlen, 0)
        check_eq(raw[pos : pos + 1], b"\n", f"kcat output framing at byte {pos}")
        pos += 1
        records.append((partition, offset, key, value))
    return records


def metadata(topic=None):
    argv = ["-L", "-J"] + (["-t", topic] if topic else [])
    return json.loads(kcat(*argv))


# Keyed produce to a topic that does not exist yet: auto-created with the default count.
lines = []
for i in range(120):
    key = f"user-{i % 17}".encode()
    value = f"event {i} \u00e9\u4e2d\t|{'x' * (i % 40)}|".encode()
    lines.append((key, value))
kcat("-P", "-t", "clicks", "-K", ":", stdin=b"".join(k + b":" + v + b"\n" for k, v in lines))
records = consume("clicks")
check_eq(len(records), len(lines), "messages consumed from clicks")
check_eq(sorted((k, v) for _, _, k, v in records), sorted(lines), "the (key, value) pairs consumed")
partitions = {}
for p, o, k, v in records:
    partitions.setdefault(p, []).append((o, k, v))
check(set(partitions) <= set(range(args.partitions)), f"partitions used: {sorted(partitions)}")
for p, recs in partitions.items():
    recs.sort()
    check_eq([o for o, _, _ in recs], list(range(len(recs))), f"offsets of clicks/{p}")
    keys = {k for _, k, _ in recs}
    check_eq([(k, v) for _, k, v in recs], [kv for kv in lines if kv[0] in keys], f"order in clicks/{p}")
check(len(partitions) > 1, "keyed messages all landed in one partition")
log(f"ok: kcat keyed produce/consume of {len(lines)} messages over partitions {sorted(partitions)}")

md = metadata()
check_eq([(b["id"], b["name"]) for b in md["brokers"]], [(0, B)], "brokers in kcat -L")
topics = {t["topic"]: t for t in md["topics"]}
check("clicks" in topics, f"kcat -L does not list clicks: {sorted(topics)}")
clicks = topics["clicks"]
check(not clicks.get("error"), f"clicks metadata error: {clicks.get('error')}")
check_eq(sorted(p["partition"] for p in clicks["partitions"]), list(range(args.partitions)), "clicks partitions")
for p in clicks["partitions"]:
    check_eq(p["leader"], 0, f"leader of clicks/{p['partition']}")
    check_eq([r["id"] for r in p["replicas"]], [0], f"replicas of clicks/{p['partition']}")
log(f"ok: kcat -L shows broker 0 at {B} and clicks with {args.partitions} partitions")

# Every codec kcat knows, one produce each into partition 0 of one topic.
expected = []
for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
    batch = [(f"{codec}-{i}".encode(), (f"{codec} payload {i} " * (1 + i % 9)).encode()) for i in range(25)]
    kcat("-P", "-t", "codecs", "-p", "0", "-K", ":", "-z", codec, stdin=b"".join(k + b":" + v + b"\n" for k, v in batch))
    expected.extend(batch)
records = consume("codecs")
check_eq([(p, o) for p, o, _, _ in records], [(0, o) for o in range(len(expected))], "codecs partition/offsets")
check_eq([(k, v) for _, _, k, v in records], expected, "codecs keys and values")
log(f"ok: kcat -z none/gzip/snappy/lz4/zstd round-trip ({len(expected)} messages)")

# Headers.
kcat("-P", "-t", "headers", "-p", "0", "-H", "a=1", "-H", "b=two words", "-H", "a=again", stdin=b"with headers\n")
out = kcat("-C", "-t", "headers", "-o", "beginning", "-e", "-q", "-f", "%h|%s\n")
check_eq(out, b"a=1,b=two words,a=again|with headers\n", "kcat headers round-trip")
log("ok: kcat -H headers round-trip")
