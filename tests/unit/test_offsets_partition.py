"""The group's partition of __consumer_offsets, which the marker repair writes to (streams/hanging.py)."""

import pytest

from streams.hanging import offsets_partition


# Expected values computed with Java 17: Utils.abs(groupId.hashCode()) % partitions, Utils.abs being Math.abs with
# Integer.MIN_VALUE mapped to 0. Negative hashes are the cases a sign mask gets wrong.
@pytest.mark.parametrize(
    ("group_id", "partitions", "expected"),
    [
        ("e2e-8b9bcd1648", 8, 2),  # hash 695365714
        ("e2e-8b9bcd1648", 50, 14),
        ("dbg-ff457a7e-group", 8, 1),  # hash -841141073: seen on partition 1 of a Kafka 4.3.1 broker
        ("dbg-ff457a7e-group", 50, 23),
        ("fatigue-guard", 50, 25),  # hash -281517025
        ("ünïcode-group", 8, 4),  # hash -1604638052; non-ASCII code units
        ("polygenelubricants", 50, 0),  # hash Integer.MIN_VALUE
    ],
)
def test_matches_kafkas_group_coordinator_partition(group_id: str, partitions: int, expected: int) -> None:
    assert offsets_partition(group_id, partitions) == expected
