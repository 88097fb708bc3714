"""The hand-written ISO-8601 path must agree with datetime.fromisoformat on everything it accepts."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fatigue.timeutil import _parse_any_iso_ms, _parse_common_iso_ms, parse_iso_ms


def _two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda value: f"{value:02d}")


# Near-valid instants: every part ranges a little past its limits, so invalid dates, times and offsets are drawn
# as often as valid ones.
_instants = st.builds(
    lambda year, month, day, hour, minute, second, fraction, zone: (
        f"{year:04d}-{month}-{day}T{hour}:{minute}:{second}{fraction}{zone}"
    ),
    st.integers(0, 9999),
    _two(0, 13),
    _two(0, 32),
    _two(0, 25),
    _two(0, 61),
    _two(0, 61),
    st.sampled_from(("", ".000", ".5", ".123", ".999", ".1234", ".123456", ",123")),
    st.one_of(
        st.sampled_from(("Z", "z", "", "+00:00", "-00:00", "+0530", "+05", "UTC")),
        st.builds(
            lambda sign, hours, minutes: f"{sign}{hours}:{minutes}", st.sampled_from("+-"), _two(0, 25), _two(0, 61)
        ),
    ),
)


def _mutated(text: str, position: int, replacement: str) -> str:
    index = position % (len(text) + 1)
    return text[:index] + replacement + text[index + 1 :]


@settings(max_examples=3_000)
@given(_instants)
@example("2026-02-29T10:00:00Z")  # not a leap year
@example("2024-02-29T10:00:00.001-05:00")
@example("1970-01-01T00:00:00Z")
@example("0001-01-01T00:00:00+23:59")
def test_the_common_forms_parse_exactly_as_fromisoformat_does(text: str) -> None:
    common = _parse_common_iso_ms(text)
    reference = _parse_any_iso_ms(text)
    if common is not None:
        assert common == reference
    assert parse_iso_ms(text) == reference


@settings(max_examples=2_000)
@given(_instants, st.integers(0, 40), st.sampled_from(("", "x", " ", "٣", "T", "-", ":", "0", "9", "é")))
def test_damaged_text_is_never_accepted_by_the_fast_path_alone(text: str, position: int, replacement: str) -> None:
    damaged = _mutated(text, position, replacement)
    common = _parse_common_iso_ms(damaged)
    reference = _parse_any_iso_ms(damaged)
    if common is not None:
        assert common == reference
    assert parse_iso_ms(damaged) == reference


def test_the_senders_forms_take_the_fast_path() -> None:
    # the point of the hand-written path: these must not fall back to fromisoformat
    for text, expected in (
        ("2026-09-01T00:00:04.171Z", 1_788_220_804_171),
        ("2026-08-31T19:00:04.569-05:00", 1_788_220_804_569),
        ("2026-09-01T00:00:32Z", 1_788_220_832_000),
        ("2026-09-01T05:30:00+05:30", 1_788_220_800_000),
    ):
        assert _parse_common_iso_ms(text) == expected
        assert _parse_any_iso_ms(text) == expected


def test_a_fraction_of_an_hour_or_minute_is_refused_not_read_as_a_fraction_of_a_second() -> None:
    # ISO-8601: "T10.5" is 10:30 and "T10:00.5" is 10:00:30; datetime.fromisoformat reads both as 10:00:00.5
    for text in (
        "2026-11-23T10.5Z",
        "2026-11-23T10,5Z",
        "2026-11-23T10:00.5Z",
        "2026-11-23T10:00,5Z",
        "2026-11-23T10.5+08:00",
        "20261123T1030.5Z",
    ):
        assert parse_iso_ms(text) is None, text
    # a fraction of a second, with either decimal sign, in the extended and the basic format
    second = parse_iso_ms("2026-11-23T10:30:00Z")
    assert second is not None
    for text in (
        "2026-11-23T10:30:00.5Z",
        "2026-11-23T10:30:00,5Z",
        "20261123T103000.5Z",
        "2026-11-23T18:30:00,5+08:00",
    ):
        assert parse_iso_ms(text) == second + 500, text
