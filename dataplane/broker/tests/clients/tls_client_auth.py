"""TLS client certificates (../security.rs): the broker checks client certificates against
its --kafka-tls-client-ca. A confluent-kafka producer and consumer presenting a certificate
that CA signed round-trip messages over SSL; one without a certificate is refused at the TLS
handshake (--without-cert refused: the broker requires one) or served (served: requested)."""

import os
import time

from confluent_kafka import KafkaError, Producer

from e2e import WAIT_S, Sent, check, compare, consume_all, log, parse_args, produce_all

args = parse_args(
    ("--ca", {"required": True}),
    ("--cert", {"required": True}),
    ("--key", {"required": True}),
    ("--without-cert", {"required": True, "choices": ["refused", "served"]}),
)
TOPIC = "mtls"
SSL = {"security_protocol": "SSL", "ssl_ca_location": args.ca}
WITH_CERT = {**SSL, "ssl_certificate_location": args.cert, "ssl_key_location": args.key}


def producer(**extra):
    conf = {"bootstrap.servers": args.bootstrap, "socket.timeout.ms": 10000}
    conf.update({k if k.endswith("_cb") else k.replace("_", "."): v for k, v in extra.items()})
    return Producer(conf)


p = producer(**WITH_CERT)
sent = [Sent(TOPIC, 0, f"k{i}".encode(), os.urandom(100)) for i in range(50)]
produce_all(p, sent)
compare(consume_all(args.bootstrap, TOPIC, 1, len(sent), **WITH_CERT), sent)
log("ok: a client with a certificate the CA signed produced and consumed over SSL")

errors = []
bare = producer(**SSL, error_cb=errors.append, message_timeout_ms=int(WAIT_S * 1000))
delivered = []
bare.produce(TOPIC, b"no certificate", partition=0, on_delivery=lambda err, msg: delivered.append(err))
deadline = time.monotonic() + WAIT_S
if args.without_cert == "refused":
    while not errors and time.monotonic() < deadline:
        bare.poll(0.2)
    check(errors, "a client without a certificate got no error")
    check(not delivered or delivered[0] is not None, "a client without a certificate was served")
    codes = {e.code() for e in errors}
    check(
        codes & {KafkaError._SSL, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN},
        f"unexpected errors for a client without a certificate: {errors}",
    )
    log(f"ok: a client without a certificate was refused: {errors[0].str()}")
else:
    while not delivered and time.monotonic() < deadline:
        bare.poll(0.2)
    check(delivered == [None], f"a client without a certificate was not served: {delivered} {errors}")
    log("ok: a client without a certificate was served (client auth requested, not required)")
