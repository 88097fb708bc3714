"""Fixtures of the cluster fault tests: the cluster profile's brokers, and guard deployments on them.

They run after `eval "$(deploy/local/stack.sh env --cluster)"` (`make test` does it for its second pytest run,
`-m cluster`): FATIGUE_BOOTSTRAP lists the three brokers and FATIGUE_REDIS_URL is the Redis Cluster's
(`cluster=1`). Otherwise they skip (`cluster_profile.CLUSTER_IN_USE`), as tests/integration/test_cluster_stack.py
does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ClusterError, RedisClusterException

from tests.cluster.cluster_profile import HOW_TO_RUN, KafkaCluster, worker_redis_url
from tests.e2e.harness import GuardDeployment


@pytest.fixture(scope="session")
def cluster_bootstrap() -> str:
    servers = os.environ.get("FATIGUE_BOOTSTRAP", "")
    if len(servers.split(",")) < 3:
        pytest.fail(f"FATIGUE_BOOTSTRAP={servers!r} does not list the cluster's three brokers; {HOW_TO_RUN}")
    return servers


@pytest.fixture
def kafka_cluster(cluster_bootstrap: str) -> Iterator[KafkaCluster]:
    """The brokers, healthy before the test; after it every node is started again and back in sync, so a failed
    test leaves no broker down for the next one."""
    cluster = KafkaCluster(cluster_bootstrap)
    cluster.restore()
    yield cluster
    cluster.restore()


@pytest.fixture
def cluster_deployment_factory(cluster_bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., GuardDeployment]]:
    made: list[GuardDeployment] = []

    def make(**kwargs: object) -> GuardDeployment:
        deployment = GuardDeployment(
            cluster_bootstrap,
            worker_redis_url(),
            tmp_path / f"d{len(made)}",
            **kwargs,  # type: ignore[arg-type]
        )
        deployment.workdir.mkdir(parents=True)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        _cleanup(deployment)


def _cleanup(deployment: GuardDeployment, attempts: int = 4) -> None:
    """The deployment's workers, topics and Redis keys gone; a Redis Cluster in a failover (a master just lost, as
    the Redis fault tests cause) is given a few seconds to promote its replica."""
    for attempt in range(attempts):
        try:
            deployment.cleanup()
            return
        except (redis.ConnectionError, redis.TimeoutError, ClusterError, RedisClusterException):
            if attempt == attempts - 1:
                raise
            time.sleep(5)
