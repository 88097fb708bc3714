"""Worker settings: defaults, environment, command line, in that order of precedence."""

from __future__ import annotations

import pytest

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
