#!/usr/bin/env python3
"""Broker admin for scripts/stack: wait for the broker, create the topics of schemas/topics.toml.

Kept in Python so that `stack up` needs no Rust build. Uses confluent-kafka (librdkafka 2.16),
which speaks to tansu correctly (Debian's librdkafka 2.0.2 does not).
"""
import os
import sys
import time
import tomllib

from confluent_kafka.admin import AdminClient, NewTopic


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000})


def wait(bootstrap, seconds):
    deadline = time.time() + seconds
    while True:
        try:
            admin(bootstrap).list_topics(timeout=2)
            return 0
        except Exception as err:  # noqa: BLE001 - any failure means "not yet"
            if time.time() > deadline:
                print(f"broker at {bootstrap} did not answer: {err}", file=sys.stderr)
                return 1
            time.sleep(0.3)


def create_topics(bootstrap, prefix, topics_file):
    with open(topics_file, "rb") as f:
        topics = tomllib.load(f)["topic"]
    client = admin(bootstrap)
    existing = set(client.list_topics(timeout=10).topics)
    wanted = []
    for t in topics:
        name = prefix + t["name"]
        if name in existing:
            continue
        config = {"cleanup.policy": t["cleanup_policy"], "retention.ms": str(t["retention_ms"])}
        wanted.append(NewTopic(name, num_partitions=t["partitions"], replication_factor=1, config=config))
    if not wanted:
        return 0
    failed = 0
    for name, fut in client.create_topics(wanted, request_timeout=15).items():
        try:
            fut.result()
        except Exception as err:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" in str(err):
                continue
            print(f"could not create topic {name}: {err}", file=sys.stderr)
            failed = 1
    return failed


def main():
    cmd = sys.argv[1]
    bootstrap = os.environ.get("PULSELINE_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    if cmd == "wait":
        return wait(bootstrap, float(sys.argv[2]) if len(sys.argv) > 2 else 30)
    if cmd == "topics":
        prefix = os.environ.get("PULSELINE_TOPIC_PREFIX", "")
        return create_topics(bootstrap, prefix, sys.argv[2])
    print(f"unknown command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
