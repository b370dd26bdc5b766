"""SCRAM credentials are cluster metadata (../security.rs): --step create makes a
user with AlterUserScramCredentials (as the bootstrap user of the users file) and
produces as that user; after a restart without the users file, --step check
authenticates as that user with SCRAM-SHA-512 and reads the message back, and the
bootstrap user is refused (it lived only in the file)."""

import time

from confluent_kafka import KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

from e2e import WAIT_S, check, check_eq, consumer, fail, log, parse_args

args = parse_args(
    ("--ca", {"required": True}),
    ("--step", {"required": True, "choices": ["create", "check"]}),
    ("--admin-user", {}),
    ("--admin-password", {}),
)
USER, PASSWORD, TOPIC = "bob", "bob-password", "restart-secure"


def sasl(user, password, **extra):
    c = {
        "bootstrap.servers": args.bootstrap,
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": args.ca,
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": password,
    }
    c.update(extra)
    return c


if args.step == "create":
    adm = AdminClient(sasl(args.admin_user, args.admin_password))
    up = UserScramCredentialUpsertion(USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), PASSWORD.encode())
    try:
        adm.alter_user_scram_credentials([up])[USER].result(timeout=WAIT_S)
    except Exception as exc:  # noqa: BLE001
        fail(f"create {USER}: {exc!r}")
    p = Producer(sasl(USER, PASSWORD))
    p.produce(TOPIC, b"before the restart", partition=0)
    check_eq(p.flush(WAIT_S), 0, "undelivered messages")
    log(f"ok: created {USER} and produced as {USER}")
else:
    c = consumer(
        args.bootstrap,
        security_protocol="SASL_SSL",
        ssl_ca_location=args.ca,
        sasl_mechanisms="SCRAM-SHA-512",
        sasl_username=USER,
        sasl_password=PASSWORD,
    )
    c.assign([TopicPartition(TOPIC, 0, 0)])
    deadline = time.monotonic() + WAIT_S
    got = []
    while not got and time.monotonic() < deadline:
        for m in c.consume(num_messages=10, timeout=0.2):
            check(m.error() is None, f"consumer error: {m.error()}")
            got.append(m.value())
    c.close()
    check_eq(got, [b"before the restart"], "what bob reads after the restart")
    log(f"ok: {USER} authenticated after the restart and read the message")
    errors = []
    p = Producer(sasl("admin", "admin-secret", error_cb=errors.append))
    deadline = time.monotonic() + WAIT_S
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors) and time.monotonic() < deadline:
        p.poll(0.2)
    check(any(e.code() == KafkaError._AUTHENTICATION for e in errors), f"admin was not refused: {errors}")
    log("ok: the file-only bootstrap user is refused once the file is gone")
