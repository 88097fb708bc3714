"""Worker settings: defaults, environment, command line, in that order of precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from fatigue.policy import load_policy
from streams.app import create_app
from streams.settings import settings_from


def test_options_are_named_after_their_fields_and_durations_parse():
    settings = settings_from(
        ["--deadline-settle", "2h", "--wall-settle", "30s", "--quiet-after", "2.5", "--partitions", "3"],
        environ={"FATIGUE_BOOTSTRAP": "10.1.2.3:9092", "FATIGUE_PARTITIONS": "12"},
    )
    assert settings.deadline_settle_ms == 7_200_000
    assert settings.wall_settle_ms == 30_000
    assert settings.quiet_after_s == 2.5
    assert settings.partitions == 3  # the command line beats the environment
    assert settings.bootstrap == "10.1.2.3:9092"


def test_defaults():
    settings = settings_from([], environ={})
    assert (settings.events_topic, settings.decisions_topic, settings.partitions) == (
        "fatigue.events.v1",
        "fatigue.blocks.v1",
        6,
    )


def test_the_session_timeout_is_short_by_default_and_bounded_like_the_broker():
    # a worker killed without leaving the group keeps its partitions unguarded for this long
    assert settings_from([], environ={}).session_timeout_s == 20.0
    assert settings_from([], environ={"FATIGUE_SESSION_TIMEOUT": "45"}).session_timeout_s == 45.0
    for out_of_bounds in ("5", "1801"):
        with pytest.raises(SystemExit, match="session-timeout"):
            settings_from(["--session-timeout", out_of_bounds], environ={})


@pytest.mark.parametrize(("session_s", "heartbeat_s"), [("6", 2.0), ("9", 3.0), ("20", 3.0), ("1800", 3.0)])
def test_heartbeats_come_at_least_three_times_per_session(session_s: str, heartbeat_s: float, tmp_path: Path):
    # one late heartbeat must not cost the worker its partitions (Kafka's advice: a third of the session at most)
    settings = settings_from(["--session-timeout", session_s, "--data-dir", str(tmp_path)], environ={})
    app, _ = create_app(settings, load_policy(settings.policy_path))
    assert app.conf.broker_session_timeout == float(session_s)
    assert app.conf.broker_heartbeat_interval == heartbeat_s
