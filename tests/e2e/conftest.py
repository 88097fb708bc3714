"""End-to-end fixtures: isolated guard deployments with real worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import GuardDeployment


@pytest.fixture
def deployment_factory(
    bootstrap_servers: str, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., GuardDeployment]]:
    made: list[GuardDeployment] = []

    def make(**kwargs: object) -> GuardDeployment:
        deployment = GuardDeployment(bootstrap_servers, redis_url, tmp_path / f"d{len(made)}", **kwargs)  # type: ignore[arg-type]
        deployment.workdir.mkdir(parents=True)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.cleanup()
