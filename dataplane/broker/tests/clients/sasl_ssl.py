"""TLS + SASL/SCRAM on a listener that requires authentication (../security.rs).

The broker runs with --kafka-tls-cert/--kafka-tls-key (certificates made by the
test with openssl), --require-auth and a users file holding the bootstrap user
(--admin-user). With confluent-kafka (librdkafka) over SASL_SSL:
- the bootstrap user creates SCRAM-SHA-512 and -256 credentials for a new user
  with AlterUserScramCredentials and reads them back with
  DescribeUserScramCredentials; refused changes get their Kafka errors;
- that user produces with SCRAM-SHA-512 and consumes with SCRAM-SHA-256;
- kcat produces and consumes with SCRAM-SHA-512;
- a wrong password and an unknown user are refused with a clear error.
Then raw sockets abuse the listener (garbage instead of a TLS handshake, plain
Kafka on the TLS port, a request before authentication, SaslAuthenticate before
SaslHandshake, an unknown mechanism, a truncated SCRAM final message, a frame
cut short) while a producer connected before keeps producing: each abuse must
close only its own connection (with the protocol's error first where one
exists), and the producer's messages must all be there at the end.
"""

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import subprocess
import time

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AdminClient,
    NewTopic,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from e2e import (
    WAIT_S,
    Sent,
    check,
    check_eq,
    compare,
    consume_all,
    fail,
    log,
    parse_args,
    produce_all,
)
from wire import array, i16, i32, nbytes, string

args = parse_args(
    ("--ca", {"required": True}),
    ("--admin-user", {"required": True}),
    ("--admin-password", {"required": True}),
)
HOST, PORT = args.bootstrap.rsplit(":", 1)
ADDR = (HOST, int(PORT))
USER, PASSWORD = "alice", "alice-secret-\u00e9"
TOPIC = "secure"
ANSWER_S = 10.0


def sasl(mechanism, user, password, **extra):
    c = {
        "bootstrap.servers": args.bootstrap,
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": args.ca,
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "socket.timeout.ms": 10000,
    }
    c.update(extra)
    return c


def expect_ok(future, what):
    try:
        return future.result(timeout=WAIT_S)
    except Exception as exc:  # noqa: BLE001
        fail(f"{what}: expected success, got {exc!r}")


def expect_kafka_error(future, code, what):
    try:
        result = future.result(timeout=WAIT_S)
    except Exception as exc:  # noqa: BLE001
        err = exc.args[0] if exc.args else None
        got = err.code() if isinstance(err, KafkaError) else None
        check(got == code, f"{what}: expected {KafkaError(code).name()}, got {exc!r}")
        log(f"ok: {what} -> {KafkaError(code).name()}: {err.str()}")
        return
    fail(f"{what}: expected {KafkaError(code).name()}, but it succeeded: {result!r}")


# --- credentials through the Admin API, as the bootstrap user ---------------------------
adm = AdminClient(sasl("SCRAM-SHA-512", args.admin_user, args.admin_password))
fs = adm.alter_user_scram_credentials(
    [
        UserScramCredentialUpsertion(USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), PASSWORD.encode()),
        UserScramCredentialUpsertion(USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), PASSWORD.encode()),
    ]
)
expect_ok(fs[USER], f"create the SCRAM credentials of {USER}")
desc = expect_ok(adm.describe_user_scram_credentials([USER])[USER], f"describe {USER}")
got = sorted((str(i.mechanism), i.iterations) for i in desc.scram_credential_infos)
check_eq(
    got,
    sorted([(str(ScramMechanism.SCRAM_SHA_512), 8192), (str(ScramMechanism.SCRAM_SHA_256), 4096)]),
    f"DescribeUserScramCredentials of {USER}",
)
log(f"ok: {USER} has {got}")
expect_kafka_error(
    adm.alter_user_scram_credentials(
        [UserScramCredentialUpsertion("weak", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 100), b"pw")]
    )["weak"],
    KafkaError.UNACCEPTABLE_CREDENTIAL,
    "100 iterations",
)
expect_kafka_error(
    adm.alter_user_scram_credentials([UserScramCredentialDeletion("nobody", ScramMechanism.SCRAM_SHA_256)])["nobody"],
    KafkaError.RESOURCE_NOT_FOUND,
    "delete the credential of a user that has none",
)
expect_kafka_error(
    adm.describe_user_scram_credentials(["nobody"])["nobody"],
    KafkaError.RESOURCE_NOT_FOUND,
    "describe a user that has no credential",
)
fs = adm.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)])
expect_ok(fs[TOPIC], f"create topic {TOPIC}")

# --- produce with SCRAM-SHA-512, consume with SCRAM-SHA-256 ------------------------------
producer = Producer(sasl("SCRAM-SHA-512", USER, PASSWORD, **{"linger.ms": 2, "acks": "all"}))
sent = [Sent(TOPIC, i % 2, f"k{i}".encode(), os.urandom(50 + i)) for i in range(200)]
produce_all(producer, sent)
log(f"ok: {USER} produced {len(sent)} messages over SASL_SSL with SCRAM-SHA-512")
cons_conf = sasl("SCRAM-SHA-256", USER, PASSWORD)
del cons_conf["bootstrap.servers"]
got = consume_all(args.bootstrap, TOPIC, 2, len(sent), **{k.replace(".", "_"): v for k, v in cons_conf.items()})
compare(got, sent)
log(f"ok: {USER} consumed them back over SASL_SSL with SCRAM-SHA-256")

# --- kcat with SASL_SSL + SCRAM-SHA-512 --------------------------------------------------
kcat_conf = [
    "-X", "security.protocol=SASL_SSL",
    "-X", f"ssl.ca.location={args.ca}",
    "-X", "sasl.mechanisms=SCRAM-SHA-512",
    "-X", f"sasl.username={USER}",
    "-X", f"sasl.password={PASSWORD}",
]  # fmt: skip
lines = [f"kcat-{i}" for i in range(50)]
p = subprocess.run(
    ["kcat", "-b", args.bootstrap, *kcat_conf, "-P", "-t", "kcat-secure", "-p", "0"],
    input="\n".join(lines) + "\n",
    capture_output=True,
    text=True,
    timeout=60,
)
check(p.returncode == 0, f"kcat produce failed ({p.returncode}): {p.stderr[-2000:]}")
p = subprocess.run(
    ["kcat", "-b", args.bootstrap, *kcat_conf, "-C", "-t", "kcat-secure", "-p", "0", "-o", "beginning", "-e", "-q"],
    capture_output=True,
    text=True,
    timeout=60,
)
check(p.returncode == 0, f"kcat consume failed ({p.returncode}): {p.stderr[-2000:]}")
check_eq(p.stdout.splitlines(), lines, "what kcat consumed")
log(f"ok: kcat produced and consumed {len(lines)} messages over SASL_SSL with SCRAM-SHA-512")


# --- a wrong password and an unknown user -----------------------------------------------
def expect_auth_failure(mechanism, user, password, what):
    errors = []
    bad = Producer(sasl(mechanism, user, password, error_cb=lambda e: errors.append(e)))
    deadline = time.monotonic() + WAIT_S
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors) and time.monotonic() < deadline:
        bad.poll(0.2)
    auth = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
    check(auth, f"{what}: no authentication error within {WAIT_S}s (errors: {errors})")
    text = auth[0].str()
    check("Authentication failed" in text and mechanism in text, f"{what}: unclear error {text!r}")
    log(f"ok: {what} refused: {text}")


expect_auth_failure("SCRAM-SHA-512", USER, "wrong", "SCRAM-SHA-512 with a wrong password")
expect_auth_failure("SCRAM-SHA-256", "mallory", PASSWORD, "SCRAM-SHA-256 of an unknown user")
expect_auth_failure("PLAIN", USER, "wrong", "PLAIN with a wrong password")

# --- raw sockets: abuse while `producer` (connected above) keeps working -----------------
TLS = ssl.create_default_context(cafile=args.ca)


def tls_connect():
    raw = socket.create_connection(ADDR, timeout=ANSWER_S)
    return TLS.wrap_socket(raw, server_hostname=HOST)


def frame(api_key, version, corr, body):
    payload = i16(api_key) + i16(version) + i32(corr) + string("raw-sasl") + body
    return i32(len(payload)) + payload


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(sock, what):
    size = recv_exact(sock, 4)
    check(size is not None, f"{what}: connection closed instead of an answer")
    body = recv_exact(sock, struct.unpack(">i", size)[0])
    check(body is not None, f"{what}: connection closed mid-answer")
    return body


def expect_closed(sock, what):
    try:
        sock.settimeout(ANSWER_S)
        data = sock.recv(1)
        check(data == b"", f"{what}: expected the connection closed, got {data!r}")
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        pass
    except socket.timeout:
        fail(f"{what}: the connection stayed open for {ANSWER_S}s")
    log(f"ok: {what}: connection closed")


def handshake(sock, mechanism, corr=1):
    sock.sendall(frame(17, 1, corr, string(mechanism)))
    r = read_frame(sock, f"SaslHandshake {mechanism}")
    check_eq(struct.unpack(">i", r[:4])[0], corr, "SaslHandshake correlation id")
    err = struct.unpack(">h", r[4:6])[0]
    n = struct.unpack(">i", r[6:10])[0]
    mechs, pos = [], 10
    for _ in range(n):
        ln = struct.unpack(">h", r[pos : pos + 2])[0]
        mechs.append(r[pos + 2 : pos + 2 + ln].decode())
        pos += 2 + ln
    return err, mechs


def authenticate(sock, token, corr):
    sock.sendall(frame(36, 1, corr, nbytes(token)))
    r = read_frame(sock, "SaslAuthenticate")
    check_eq(struct.unpack(">i", r[:4])[0], corr, "SaslAuthenticate correlation id")
    err = struct.unpack(">h", r[4:6])[0]
    ln = struct.unpack(">h", r[6:8])[0]
    msg = r[8 : 8 + ln].decode() if ln >= 0 else None
    pos = 8 + max(ln, 0)
    blen = struct.unpack(">i", r[pos : pos + 4])[0]
    return err, msg, r[pos + 4 : pos + 4 + max(blen, 0)]


def scram_first(sock, user, corr):
    nonce = base64.b64encode(os.urandom(12)).decode()
    bare = f"n={user},r={nonce}"
    err, msg, server_first = authenticate(sock, f"n,,{bare}".encode(), corr)
    check_eq(err, 0, f"client-first of {user} ({msg})")
    return bare, server_first.decode()


def scram_final(bare, server_first, password):
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"{bare},{server_first},{without_proof}".encode()
    client_key = hmac.new(salted, b"Client Key", "sha512").digest()
    sig = hmac.new(hashlib.sha512(client_key).digest(), auth, "sha512").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig))
    server_sig = hmac.new(hmac.new(salted, b"Server Key", "sha512").digest(), auth, "sha512").digest()
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode(), server_sig


def expect_alert_then_closed(sock, what):
    """A TLS server answers a bad handshake with an alert record (type 21), then closes."""
    sock.settimeout(ANSWER_S)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        fail(f"{what}: the connection stayed open for {ANSWER_S}s")
    check(data == b"" or data[0] == 21, f"{what}: expected a TLS alert or nothing, got {data[:16]!r}")
    log(f"ok: {what}: {'a TLS alert, then ' if data else ''}connection closed")


steady_sent = []


def steady(after):
    """The producer connected before the abuse still delivers."""
    batch = [Sent(TOPIC, 0, f"after {after}".encode(), os.urandom(20)) for _ in range(5)]
    produce_all(producer, batch, expect_offsets=True)
    steady_sent.extend(batch)


# A full SCRAM-SHA-512 exchange by hand: the server's signature must verify.
s = tls_connect()
err, mechs = handshake(s, "SCRAM-SHA-512")
check_eq(err, 0, "SaslHandshake SCRAM-SHA-512")
check_eq(sorted(mechs), ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"], "mechanisms offered")
bare, sf = scram_first(s, USER, 2)
final, server_sig = scram_final(bare, sf, PASSWORD)
err, msg, server_final = authenticate(s, final, 3)
check_eq(err, 0, f"client-final ({msg})")
check_eq(server_final, b"v=" + base64.b64encode(server_sig), "server-final signature")
s.sendall(frame(3, 1, 4, i32(-1)))  # Metadata v1, all topics
check_eq(struct.unpack(">i", read_frame(s, "Metadata after auth")[:4])[0], 4, "Metadata correlation id")
s.close()
log("ok: a hand-made SCRAM-SHA-512 exchange verifies the server's signature and is then served")

# Garbage instead of a TLS ClientHello.
s = socket.create_connection(ADDR, timeout=ANSWER_S)
s.sendall(os.urandom(64) + b"\x16\x03\x01\xff\xff" + b"\x00" * 100)
expect_alert_then_closed(s, "garbage instead of a TLS handshake")
steady("garbage TLS")

# Plain Kafka (ApiVersions v0) on the TLS port.
s = socket.create_connection(ADDR, timeout=ANSWER_S)
s.sendall(frame(18, 0, 1, b""))
expect_alert_then_closed(s, "plain-text ApiVersions on the TLS port")

# A request before authentication on a listener that requires it: closed, no answer.
s = tls_connect()
s.sendall(frame(3, 1, 1, array([string(TOPIC)])))
expect_closed(s, "Metadata before authentication")
steady("unauthenticated request")

# SaslAuthenticate before SaslHandshake: ILLEGAL_SASL_STATE, then closed.
s = tls_connect()
err, msg, _ = authenticate(s, b"n,,n=alice,r=abcdefghijkl", 1)
check_eq(err, 34, f"SaslAuthenticate before SaslHandshake ({msg})")
expect_closed(s, "SaslAuthenticate before SaslHandshake")

# An unknown mechanism: UNSUPPORTED_SASL_MECHANISM with the list, then closed.
s = tls_connect()
err, mechs = handshake(s, "GSSAPI")
check_eq(err, 33, "SaslHandshake GSSAPI")
check_eq(sorted(mechs), ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"], "mechanisms offered after GSSAPI")
expect_closed(s, "SaslHandshake GSSAPI")

# A truncated SCRAM final message: SASL_AUTHENTICATION_FAILED with a message, then closed.
s = tls_connect()
check_eq(handshake(s, "SCRAM-SHA-512")[0], 0, "SaslHandshake")
bare, sf = scram_first(s, USER, 2)
final, _ = scram_final(bare, sf, PASSWORD)
err, msg, _ = authenticate(s, final[: len(final) // 2], 3)
check_eq(err, 58, f"truncated client-final ({msg})")
check(msg and "SCRAM" in msg, f"truncated client-final: unclear message {msg!r}")
log(f"ok: truncated client-final refused: {msg}")
expect_closed(s, "truncated client-final")

# A wrong proof by hand: the same clear error.
s = tls_connect()
check_eq(handshake(s, "SCRAM-SHA-512")[0], 0, "SaslHandshake")
bare, sf = scram_first(s, USER, 2)
final, _ = scram_final(bare, sf, "not-the-password")
err, msg, _ = authenticate(s, final, 3)
check_eq(err, 58, f"wrong proof ({msg})")
check(msg and "invalid credentials" in msg, f"wrong proof: unclear message {msg!r}")
expect_closed(s, "wrong proof")

# A SaslAuthenticate frame cut short, then the client goes away.
s = tls_connect()
check_eq(handshake(s, "SCRAM-SHA-512")[0], 0, "SaslHandshake")
whole = frame(36, 1, 2, nbytes(b"n,,n=alice,r=abcdefghijkl"))
s.sendall(whole[: len(whole) // 2])
s.close()
# The TLS handshake itself cut short.
s = socket.create_connection(ADDR, timeout=ANSWER_S)
s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
s.close()
steady("truncated exchanges")

got = consume_all(
    args.bootstrap, TOPIC, 2, len(sent) + len(steady_sent),
    **{k.replace(".", "_"): v for k, v in cons_conf.items()},
)  # fmt: skip
compare(got, sent + steady_sent)
producer.flush(WAIT_S)
log(f"ok: the producer connected before the abuse delivered all {len(steady_sent)} later messages")
log("PASS")
