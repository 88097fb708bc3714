"""Shared pytest fixtures.

Integration tests run against the real local stack (single-node Kafka 4 + Redis) that `make test`
starts with deploy/local/stack.sh and describes through FATIGUE_BOOTSTRAP / FATIGUE_REDIS_URL.
A missing or unreachable stack is a test *failure*, never a skip: a green run must mean the
integration tests really ran. Tests that request none of these fixtures run without the stack.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaAdminClient

from streams.redis_keys import sync_client

HOW_TO_RUN = (
    "Integration tests need the local Kafka + Redis stack: run them with `make test`, or start the stack "
    'with `deploy/local/stack.sh up` and export its addresses with `eval "$(deploy/local/stack.sh env)"`.'
)

INTEGRATION_DIR = (Path(__file__).parent / "integration").resolve()
E2E_DIR = (Path(__file__).parent / "e2e").resolve()


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml declares the markers too; this keeps --strict-markers happy if it ever stops.
    if not any(line.startswith("integration:") for line in config.getini("markers")):
        config.addinivalue_line("markers", "integration: needs the real local Kafka + Redis stack")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.resolve()
        if path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)
        elif path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.e2e)


def _required_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(f"{name} is not set. {HOW_TO_RUN}", pytrace=False)
    return value


def _slug(text: str, max_len: int = 40) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower()[:max_len] or "t"


# --- Kafka -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bootstrap_servers() -> str:
    """Bootstrap address of the running stack's broker, checked to answer metadata requests."""
    servers = _required_env("FATIGUE_BOOTSTRAP")
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=servers,
            client_id="pytest-check",
            request_timeout_ms=10000,
            bootstrap_timeout_ms=10000,
        )
        try:
            brokers = admin.describe_cluster()["brokers"]
        finally:
            admin.close()
    except Exception as exc:
        pytest.fail(f"Kafka at FATIGUE_BOOTSTRAP={servers} does not answer: {exc!r}. {HOW_TO_RUN}", pytrace=False)
    if not brokers:
        pytest.fail(f"Kafka at FATIGUE_BOOTSTRAP={servers} reports no brokers. {HOW_TO_RUN}", pytrace=False)
    return servers


@pytest.fixture(scope="session")
def kafka_admin(bootstrap_servers: str) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="pytest-admin", request_timeout_ms=30000)
    yield admin
    admin.close()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of names unique to this test run, e.g. unique_name("events") -> "events-test-foo-1a2b3c4d5e6f".

    Valid as Kafka topic, consumer group and Redis key material.
    """
    test_slug = _slug(request.node.name)

    def make(prefix: str = "t") -> str:
        return f"{_slug(prefix, 60)}-{test_slug}-{uuid.uuid4().hex[:12]}"

    return make


TopicFactory = Callable[..., str]


@pytest.fixture
def topic_factory(kafka_admin: KafkaAdminClient, unique_name: Callable[[str], str]) -> Iterator[TopicFactory]:
    """Creates uniquely named topics, ready for use (leaders elected); deletes them after the test.

    topic_factory("decisions", partitions=3, config={"cleanup.policy": "compact"}) -> topic name
    """
    created: list[str] = []

    def create(prefix: str = "topic", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = unique_name(prefix)
        # -1: the broker's default.replication.factor, so the same tests run on the single node and the cluster
        spec: dict[str, Any] = {"num_partitions": partitions, "replication_factor": -1}
        if config:
            spec["configs"] = {key: str(value) for key, value in config.items()}
        kafka_admin.create_topics({name: spec}, timeout_ms=30000)
        created.append(name)
        kafka_admin.wait_for_topics([name], timeout_ms=30000)
        return name

    yield create
    if created:
        kafka_admin.delete_topics(created, timeout_ms=30000, raise_errors=False)


# --- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the running stack's Redis, checked to answer PING."""
    url = _required_env("FATIGUE_REDIS_URL")
    try:
        client = sync_client(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        pytest.fail(f"Redis at FATIGUE_REDIS_URL={url} does not answer PING: {exc!r}. {HOW_TO_RUN}", pytrace=False)
    return url


@pytest.fixture
def redis_key_prefix(unique_name: Callable[[str], str]) -> str:
    """A key prefix unique to this test; the Redis may be shared, so tests only touch keys under it."""
    return unique_name("test") + ":"


@pytest.fixture
def redis_client(redis_url: str, redis_key_prefix: str) -> Iterator[redis.Redis]:
    """Sync redis-py client (decode_responses=False; redis-py's cluster client on a Redis Cluster URL). Deletes the
    test's own keys afterwards, nothing else."""
    client = sync_client(redis_url, socket_timeout=10)
    yield client  # type: ignore[misc]
    try:
        keys = list(client.scan_iter(match=redis_key_prefix + "*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:  # one by one: on a Redis Cluster they lie in many slots
            pipe.delete(key)
        if keys:
            pipe.execute()
    finally:
        client.close()
