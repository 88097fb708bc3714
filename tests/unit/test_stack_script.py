"""deploy/local/stack.sh behaviour that needs no running stack, Java or Maven: the checks that run
before anything is downloaded or started."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

STACK = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port held by something that is not the stack."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("FATIGUE_")}
    clean_env.update(
        {
            "FATIGUE_CACHE_DIR": str(tmp_path / "cache"),
            "FATIGUE_KAFKA_PORT": str(_free_port()),
            "FATIGUE_KAFKA_CONTROLLER_PORT": str(_free_port()),
            "FATIGUE_REDIS_PORT": str(_free_port()),
        }
    )
    clean_env.update(env)
    return subprocess.run(
        ["bash", str(STACK), *args], env=clean_env, capture_output=True, text=True, timeout=60, check=False
    )


def test_env_prints_exports_for_eval(tmp_path):
    result = _run(tmp_path, "env", FATIGUE_KAFKA_PORT="19092", FATIGUE_REDIS_PORT="16379")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "export FATIGUE_BOOTSTRAP=127.0.0.1:19092",
        "export FATIGUE_REDIS_URL=redis://127.0.0.1:16379/0",
    ]


def test_env_passes_an_external_redis_url_through(tmp_path):
    result = _run(tmp_path, "env", FATIGUE_REDIS_URL="redis://cache.internal:6380/3")

    assert "export FATIGUE_REDIS_URL=redis://cache.internal:6380/3" in result.stdout.splitlines()


def test_up_refuses_a_kafka_port_held_by_another_process(tmp_path, listening_port):
    result = _run(tmp_path, "up", FATIGUE_KAFKA_PORT=str(listening_port))

    assert result.returncode == 1
    assert f"port {listening_port} (Kafka broker, FATIGUE_KAFKA_PORT) is already in use" in result.stderr
    assert not (tmp_path / "cache" / "kafka" / "kafka.pid").exists()
    assert not (tmp_path / "cache" / "redis" / "redis.pid").exists()


def test_up_refuses_a_redis_port_held_by_another_process(tmp_path, listening_port):
    result = _run(tmp_path, "up", FATIGUE_REDIS_PORT=str(listening_port))

    assert result.returncode == 1
    assert f"port {listening_port} (Redis, FATIGUE_REDIS_PORT) is already in use" in result.stderr


def test_status_of_a_stack_that_never_started_is_not_running(tmp_path):
    result = _run(tmp_path, "status")

    assert result.returncode == 1
    assert result.stdout.splitlines() == ["kafka: not running", "redis: not running"]


def test_a_non_numeric_port_is_a_clear_error(tmp_path):
    result = _run(tmp_path, "status", FATIGUE_KAFKA_PORT="kafka")

    assert result.returncode == 1
    assert "FATIGUE_KAFKA_PORT must be a port number, got 'kafka'" in result.stderr


def test_down_without_a_stack_stops_nothing_and_succeeds(tmp_path):
    result = _run(tmp_path, "down")

    assert result.returncode == 0, result.stderr
    assert "nothing of ours to stop" in result.stderr


def test_our_own_exported_redis_url_is_not_mistaken_for_an_external_redis(tmp_path):
    # After `eval "$(stack.sh env)"` the shell exports the stack's own URL; `up` must still start Redis.
    port = _free_port()
    result = _run(tmp_path, "status", FATIGUE_REDIS_PORT=str(port), FATIGUE_REDIS_URL=f"redis://127.0.0.1:{port}/0")

    assert "redis: not running" in result.stdout.splitlines()
