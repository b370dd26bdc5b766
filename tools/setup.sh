#!/usr/bin/env bash
# Installs every system package ferrolog's build and tests need, on Debian bookworm as root.
# Idempotent and quick when everything is present: apt and pip are skipped when not needed.
# Called by `tools/dev broker`, `tools/dev test` and .ci/run; nothing is installed by hand.
set -euo pipefail

# libudev-dev: glommio links libudev. pkg-config + libhwloc-dev: hwlocality uses the system hwloc.
# capnproto: the Cap'n Proto schema compiler for the control plane. kcat: a librdkafka client for
# end-to-end checks. iproute2: `ss`/`ip` for network tests and tuning; nftables: `nft`, partitions
# between the network namespaces of multi-node tests.
# openssl: the TLS tests make their CA and server certificates with it.
# e2fsprogs + mount: the disk-full test mounts a small ext4 image on a loop device.
# gcc + make: rdkafka-sys (the benches' Kafka client) builds its bundled librdkafka with
# librdkafka's own configure script and make.
# iputils-ping: the AF_XDP tests check that ICMP still reaches the kernel with the program attached.
# libxdp-dev + libbpf-dev: the AF_XDP transport (dataplane/xdp) links libxdp (UMEM and socket
# setup) and libbpf (XSKMAP, program load, XDP attach) through a hand-written FFI; no clang.
APT_PACKAGES=(libudev-dev pkg-config libhwloc-dev capnproto kcat iproute2 nftables e2fsprogs mount gcc make openssl
    libxdp-dev libbpf-dev iputils-ping)
# Real Kafka clients used by the end-to-end tests.
PIP_PACKAGES=(confluent-kafka kafka-python)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "setup: apt packages present (${APT_PACKAGES[*]})"
else
    echo "setup: installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Present and new enough: the admin APIs the tests call exist (DeleteRecords and the SCRAM
# credential APIs in confluent-kafka; DescribeProducers, DescribeLogDirs and
# AlterReplicaLogDirs in kafka-python). Older versions are upgraded.
PY_CLIENTS_CHECK='
import confluent_kafka.admin as c, kafka
need = [(c.AdminClient, "delete_records"), (c.AdminClient, "alter_user_scram_credentials"),
        (kafka.KafkaAdminClient, "describe_producers"), (kafka.KafkaAdminClient, "alter_replica_log_dirs")]
assert all(hasattr(cls, name) for cls, name in need)
'
if python3 -c "$PY_CLIENTS_CHECK" 2>/dev/null; then
    echo "setup: python clients present (${PIP_PACKAGES[*]})"
else
    echo "setup: installing python clients: ${PIP_PACKAGES[*]}"
    PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
        python3 -m pip install --quiet --upgrade "${PIP_PACKAGES[@]}"
fi

echo "setup: done"
