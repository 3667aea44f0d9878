"""Flow fixtures: Ray started once per test session, and the executors of the conformance suite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from openlearner.flow import Executor, LocalExecutor


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A local Ray with two CPUs, started once for every test that needs it."""
    try:
        import ray
    except ModuleNotFoundError:
        pytest.skip("Ray is not installed")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    """Each executor implementation in turn: local worker processes, then Ray tasks."""
    if request.param == "local":
        runner: Executor = LocalExecutor(mode="process", cpus=2)
    else:
        request.getfixturevalue("ray_cluster")
        from openlearner.flow.executors.ray import RayExecutor

        runner = RayExecutor()
    yield runner
    runner.shutdown()
