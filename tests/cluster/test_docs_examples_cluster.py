"""The README's sender-side examples against the cluster profile: 3 brokers and a Redis Cluster, the worker's Redis
view on it (tests/e2e/test_docs_examples.py runs the same against the single-node stack). The shell commands of
"Send an event and see its decision" and "For dialers" as written (`fatigue send`/`check`/`follow`, kcat producing
on the murmur2 partition and reading the blocks and dead-letter topics, redis-cli GET and PTTL with `-c -h -p` for
the cluster, the metrics), then the dialer, e-mail pre-check, redis-cli and `fatigue filter` examples; it prints
what it ran and verified."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.cluster.cluster_profile import CLUSTER_IN_USE, HOW_TO_RUN, KafkaCluster
from tests.e2e.harness import GuardDeployment
from tests.e2e.test_docs_examples import run_readme_sender_examples

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.skipif(not CLUSTER_IN_USE, reason=f"the cluster profile is not in use: {HOW_TO_RUN}"),
]


def test_readme_sender_examples_work_on_the_cluster_profile(
    cluster_deployment_factory: Callable[..., GuardDeployment], kafka_cluster: KafkaCluster
) -> None:
    deployment = cluster_deployment_factory()
    assert deployment.redis_url == os.environ["FATIGUE_REDIS_URL"], "the view and the senders on the Redis Cluster"
    run_readme_sender_examples(deployment)
