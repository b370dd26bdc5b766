"""SASL principals under ACLs (../security.rs): the broker requires SASL, authorizes every
request (--authorization true) and names the users file's bootstrap user a superuser
(--super-users User:admin). Steps, with confluent-kafka over SASL_PLAINTEXT:
1. admin (PLAIN, from the users file) creates a topic and a SCRAM-SHA-256 user carol.
2. carol, authenticated with SCRAM, has no ACLs: her Produce is TOPIC_AUTHORIZATION_FAILED
   and her AlterUserScramCredentials (creating another user) CLUSTER_AUTHORIZATION_FAILED;
   admin's DescribeUserScramCredentials shows that user was not created.
3. admin grants User:carol WRITE on the topic; carol's produce is delivered and admin
   reads her message back.
"""

import time

from confluent_kafka import KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from e2e import WAIT_S, check, check_eq, consumer, create_topic, expect_error, expect_ok, fail, log, parse_args

args = parse_args(("--admin-user", {"required": True}), ("--admin-password", {"required": True}))
TOPIC = "sasl-acl-t"
CAROL, CAROL_PASSWORD = "carol", "carol-secret"
TAF = KafkaError.TOPIC_AUTHORIZATION_FAILED
CAF = KafkaError.CLUSTER_AUTHORIZATION_FAILED


def sasl(mechanism, user, password, **extra):
    c = {
        "bootstrap.servers": args.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }
    c.update(extra)
    return c


def upsert(user, password):
    return UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), password)


# 1. The superuser sets the stage.
adm = AdminClient(sasl("PLAIN", args.admin_user, args.admin_password))
create_topic(adm, TOPIC, 1)
expect_ok(adm.alter_user_scram_credentials([upsert(CAROL, CAROL_PASSWORD.encode())])[CAROL], "admin creates carol")
log("ok: admin (PLAIN, users file) created the topic and carol's SCRAM credential")

# 2. carol has no ACLs.
carol_conf = sasl("SCRAM-SHA-256", CAROL, CAROL_PASSWORD)


def produce_as_carol():
    """The delivery error (None when delivered) of one message from carol."""
    p = Producer(dict(carol_conf, **{"acks": "all", "message.timeout.ms": int(WAIT_S * 1000)}))
    results = []
    p.produce(TOPIC, b"from carol", partition=0, on_delivery=lambda e, m: results.append(e))
    deadline = time.monotonic() + WAIT_S
    while not results and time.monotonic() < deadline:
        p.poll(0.1)
    check(results, f"carol's produce: no delivery report within {WAIT_S}s")
    return results[0]


err = produce_as_carol()
check(err is not None and err.code() == TAF, f"carol's produce without ACLs: {err}")
log(f"ok: carol (SCRAM) without ACLs: Produce -> {err.name()}")
carol_adm = AdminClient(carol_conf)
expect_error(
    carol_adm.alter_user_scram_credentials([upsert("dave", b"dave-secret")])["dave"],
    CAF,
    "carol's AlterUserScramCredentials",
)
expect_error(
    adm.describe_user_scram_credentials(["dave"])["dave"],
    KafkaError.RESOURCE_NOT_FOUND,
    "dave after carol's refused AlterUserScramCredentials",
)

# 3. A grant lets carol write.
grant = AclBinding(
    ResourceType.TOPIC, TOPIC, ResourcePatternType.LITERAL, f"User:{CAROL}", "*", AclOperation.WRITE, AclPermissionType.ALLOW
)
expect_ok(adm.create_acls([grant])[grant], "admin grants carol WRITE")
err = produce_as_carol()
check(err is None, f"carol's produce after the grant: {err}")
c = consumer(
    args.bootstrap,
    security_protocol="SASL_PLAINTEXT",
    sasl_mechanisms="PLAIN",
    sasl_username=args.admin_user,
    sasl_password=args.admin_password,
)
c.assign([TopicPartition(TOPIC, 0, 0)])
got = []
deadline = time.monotonic() + WAIT_S
while not got and time.monotonic() < deadline:
    for m in c.consume(num_messages=10, timeout=0.2):
        check(m.error() is None, f"admin's consumer: {m.error()}")
        got.append(m.value())
c.close()
if not got:
    fail("admin read nothing back")
check_eq(got, [b"from carol"], "what admin reads back")
log("ok: after the grant carol's produce is delivered and admin reads it back")
