"""A worker restart resumes from its RocksDB state and changelog without recounting; a SIGKILL loses no block.

Each test runs real worker processes on the real stack, stops or kills one part-way through a generated stream
(all event types, malformed messages, duplicates, out-of-order and too-late events) and restarts it; the outputs
are then compared with ``Replay`` of the whole stream, as in the parity tests:

- graceful restart (SIGTERM), same data directory: state comes from local RocksDB (the log shows nothing re-read
  from the changelog), and decisions (as a multiset), dead letters, violations, Redis blocks and prefs equal
  replay exactly: nothing counted twice, nothing lost;
- graceful restart with the data directory wiped: state comes from the changelog topic alone; same equalities;
- graceful restart with one partition's database corrupt: it is set aside and that partition alone is restored
  from the changelog; same equalities;
- graceful restart after retention deleted part of the input the worker had not read: the worker reports every
  hole with its exact offsets (log and the metric behind the ``FatigueGuardInputSkipped`` alert), reads on, and
  its outputs equal replay of what was there to read;
- SIGKILL mid-stream, same data directory: at-least-once. Decisions may be sent again and redelivered input
  dead-lettered again (as ``duplicate``/``late``, or the same rejection), only for input not committed at the
  kill. The crashed worker's state has run ahead of its outputs; on restart it re-sends, for every customer
  changed at or after the committed offset, what that state remembers per key (see ``GuardService._repair``).
  Nothing the replay does not produce is published; every key's latest record on the compacted topic is the
  replay's latest decision, or a tombstone where that one is no longer in force; Redis blocks and preferences
  are exact (every key, none extra), and the restarted worker's log shows the repair. Known gap, asserted to
  stay inside the redelivered window: a decision made in that window and superseded on its key (or ended)
  before the kill, and a violation found there, may never be published.

While the first worker of the graceful tests is paused between the halves, wall clock must not take over (it
would fire the first half's unread deadlines and expire its blocks by today's date, which a replay of the whole
stream without that pause does not do): that run has ``--quiet-after`` set out of reach, and the second half is
produced while the worker is down, so the restarted worker's first ticks land behind it, at the end of the stream.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import GuardDeployment, free_port
from tests.e2e.parity import (
    Messages,
    assert_dead_letters_at_least_once,
    assert_dead_letters_exact,
    assert_decisions_at_least_once,
    assert_decisions_exact,
    assert_exact_parity,
    assert_redis_blocks_exact,
    assert_redis_prefs_exact,
    assert_violations_at_least_once,
    assert_violations_exact,
    expected_outputs,
    make_messages,
)

EVENTS = 24_000
CUSTOMERS = 1_500
MIN_BLOCKS = 20
NO_WALL_CLOCK = ("--quiet-after", "1e9")  # never treat a partition as quiet: no ticks, no wall-clock firing

_TABLE_ROW = re.compile(r"^\|[^|]*\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|\s*$")
_INDEXED = re.compile(r"partition (\d+) indexed: (\d+) pending deadlines, (\d+) expiring blocks")
_REPAIRED = re.compile(r"partition (\d+): (\d+) customers changed at or after committed offset (\d+)")


def _log_table(log: str, title: str) -> dict[int, int]:
    """Faust's first ``title`` table of changelog offsets in ``log``: partition -> offset."""
    start = log.find(title)
    assert start >= 0, f"no {title!r} table in the worker log"
    rows: dict[int, int] = {}
    for line in log[start:].splitlines()[1:]:
        match = _TABLE_ROW.match(line.strip())
        if match:
            rows[int(match.group(1))] = int(match.group(2))
        elif rows and line.startswith("+"):
            break
    return rows


def _recovery(log: str) -> tuple[dict[int, int], dict[int, int]]:
    """(last changelog offset, offset recovery reads from) per partition of the state table, from a run's log."""
    return _log_table(log, "Highwater - Active"), _log_table(log, "Reading Starts At - Active")


def _repaired(log: str) -> dict[int, tuple[int, int]]:
    """partition -> (customers whose outputs were re-sent, the committed offset they were found from), per the
    restarted worker's log."""
    return {int(m.group(1)): (int(m.group(2)), int(m.group(3))) for m in _REPAIRED.finditer(log)}


def _indexed(log: str) -> tuple[int, int]:
    """(pending deadlines, expiring blocks) the run found in its table when it first indexed each partition."""
    first: dict[int, tuple[int, int]] = {}
    for match in _INDEXED.finditer(log):
        first.setdefault(int(match.group(1)), (int(match.group(2)), int(match.group(3))))
    return sum(p for p, _ in first.values()), sum(b for _, b in first.values())


def _corrupt_partition_database(data_dir: Path, partition: int) -> Path:
    """Damage one partition's RocksDB as a SIGKILL once left it: its MANIFEST names table files that are gone."""
    (database,) = data_dir.rglob(f"customer-state-v1-{partition}.db")
    tables = list(database.glob("*.sst"))
    for table in tables:
        table.unlink()
    if not tables:  # nothing flushed yet: garble the MANIFEST instead
        for manifest in database.glob("MANIFEST-*"):
            manifest.write_bytes(b"\x00garbage" * 8)
    return database


def _first_half_then_restart(
    deployment: GuardDeployment,
    messages: Messages,
    wipe: bool,
    corrupt: int | None = None,
    before_restart: Callable[[], None] | None = None,
    restart_args: tuple[str, ...] = (),
) -> tuple[int, float]:
    """Run w1 over the first half to quiescence, stop it gracefully, optionally wipe its data directory (or corrupt
    the database of partition ``corrupt``), produce
    the second half and restart w1 (same name, so same data directory).

    Returns where the restarted run's log starts and when the test started (monotonic).
    """
    half = len(messages) // 2
    first, second = messages[:half], messages[half:]
    started = time.monotonic()
    deployment.produce(first)
    deployment.start_worker("w1", *NO_WALL_CLOCK)
    deployment.wait_until_settled()

    # the first run consumed exactly the first half: its outputs equal the replay of that half
    now_ms = int(time.time() * 1000)
    before = expected_outputs(deployment, first, now_ms, wall_clock=False)
    decisions_before = assert_decisions_exact(deployment, before)
    letters_before = assert_dead_letters_exact(deployment, before)
    violations_before = assert_violations_exact(deployment, before)
    print(f"\nfirst run (no wall clock), first half: {before.summary()}")
    print(
        f"  verified: its {decisions_before} decisions, {letters_before} dead letters and {violations_before} "
        f"violations equal replay of the half"
    )

    exit_code = deployment.stop_worker("w1")
    assert exit_code == 0, deployment.log_tail("w1")
    data_dir = deployment.data_dir("w1")
    assert data_dir.is_dir() and any(data_dir.iterdir()), "the first run left no RocksDB state"
    if wipe:
        shutil.rmtree(data_dir)
        print(f"  SIGTERM w1 (exit {exit_code}), wiped its data directory {data_dir.name}/")
    elif corrupt is not None:
        database = _corrupt_partition_database(data_dir, corrupt)
        print(f"  SIGTERM w1 (exit {exit_code}), corrupted {database.name} (its MANIFEST names missing files)")
    else:
        print(f"  SIGTERM w1 (exit {exit_code}), kept its data directory {data_dir.name}/")

    deployment.produce(second)
    if before_restart is not None:
        before_restart()
    log_offset = deployment.log_size("w1")
    deployment.start_worker("w1", *restart_args)
    print(f"  produced the second half ({len(second)} messages) and restarted w1")
    return log_offset, started


@pytest.mark.slow
def test_graceful_restart_resumes_from_rocksdb_without_recounting(
    deployment_factory: Callable[..., GuardDeployment],
):
    deployment = deployment_factory()
    deployment.create_topics()
    messages = make_messages(EVENTS, CUSTOMERS, seed=17)
    log_offset, started = _first_half_then_restart(deployment, messages, wipe=False)

    expected = assert_exact_parity(deployment, messages, min_blocks=MIN_BLOCKS)
    log = deployment.log_since("w1", log_offset)
    highwater, starts = _recovery(log)
    pending, blocks = _indexed(log)
    print(
        f"restarted w1 (kept data dir), whole stream: decisions ({sum(expected.decisions.values())}, as a "
        f"multiset), dead letters, violations, {len(expected.blocks)} Redis blocks and prefs equal replay exactly\n"
        f"  recovery: changelog last offsets {highwater}, read from {starts}; "
        f"table held {pending} pending deadlines and {blocks} expiring blocks at restart; "
        f"{time.monotonic() - started:.0f}s"
    )
    # recovered from local RocksDB: every changelog partition was already applied up to its end, nothing re-read
    assert highwater and highwater.keys() == starts.keys() == set(range(deployment.partitions))
    assert all(starts[p] == highwater[p] >= 0 for p in highwater), (highwater, starts)
    assert "Restoring state from changelog topics" not in log
    assert blocks > 0, "the restarted worker should find the first half's blocks in its table"
    assert not _repaired(log), "a graceful stop commits everything it handled: nothing can be ahead of the outputs"
    assert "Error in recovery" not in log  # faust skips a changelog record it cannot decode and goes on
    assert "Traceback" not in deployment.log_since("w1", 0)


@pytest.mark.slow
def test_a_corrupt_partition_database_is_restored_from_changelog(deployment_factory: Callable[..., GuardDeployment]):
    deployment = deployment_factory()
    deployment.create_topics()
    messages = make_messages(EVENTS, CUSTOMERS, seed=29)
    corrupt = 2
    log_offset, started = _first_half_then_restart(deployment, messages, wipe=False, corrupt=corrupt)

    deployment.wait_until_settled()
    log = deployment.log_since("w1", log_offset)
    highwater, starts = _recovery(log)
    print(
        f"restarted w1 with partition {corrupt}'s database corrupt: changelog last offsets {highwater}, read from "
        f"{starts}; {time.monotonic() - started:.0f}s"
    )
    assert f"partition {corrupt}: the local state database is corrupt" in log
    assert len(list(deployment.data_dir("w1").rglob(f"customer-state-v1-{corrupt}.db.corrupt-*"))) == 1
    # only the corrupt partition was restored from the changelog; the others resumed from their local databases
    assert starts[corrupt] == -1 < highwater[corrupt], (highwater, starts)
    assert all(starts[p] == highwater[p] for p in highwater if p != corrupt), (highwater, starts)
    assert "Traceback" not in log
    print("  verified: the corrupt database was set aside and its partition alone restored from the changelog")
    expected = assert_exact_parity(deployment, messages, min_blocks=MIN_BLOCKS)
    print(
        f"  whole stream: decisions ({sum(expected.decisions.values())}, as a multiset), dead letters, violations, "
        f"{len(expected.blocks)} Redis blocks and prefs equal replay exactly"
    )


@pytest.mark.slow
def test_restart_with_wiped_data_dir_recovers_from_changelog(deployment_factory: Callable[..., GuardDeployment]):
    deployment = deployment_factory()
    deployment.create_topics()
    messages = make_messages(EVENTS, CUSTOMERS, seed=19)
    log_offset, started = _first_half_then_restart(deployment, messages, wipe=True)

    expected = assert_exact_parity(deployment, messages, min_blocks=MIN_BLOCKS)
    log = deployment.log_since("w1", log_offset)
    highwater, starts = _recovery(log)
    pending, blocks = _indexed(log)
    read = sum(highwater[p] - starts[p] for p in highwater)
    print(
        f"restarted w1 (empty data dir), whole stream: decisions ({sum(expected.decisions.values())}, as a "
        f"multiset), dead letters, violations, {len(expected.blocks)} Redis blocks and prefs equal replay exactly\n"
        f"  recovery: changelog last offsets {highwater}, read from {starts} ({read} records restored); "
        f"table held {pending} pending deadlines and {blocks} expiring blocks at restart; "
        f"{time.monotonic() - started:.0f}s"
    )
    # the whole state came back from the changelog topic
    assert highwater.keys() == starts.keys() == set(range(deployment.partitions))
    assert all(starts[p] == -1 < highwater[p] for p in highwater), (highwater, starts)
    assert "Restoring state from changelog topics" in log
    assert blocks > 0, "the restarted worker should find the first half's blocks in its restored table"
    assert not _repaired(log), "a graceful stop commits everything it handled: nothing can be ahead of the outputs"
    assert "Error in recovery" not in log  # faust skips a changelog record it cannot decode and goes on
    assert "Traceback" not in deployment.log_since("w1", 0)


@pytest.mark.slow
def test_input_deleted_by_retention_before_it_was_read_is_reported_and_read_past(
    deployment_factory: Callable[..., GuardDeployment],
):
    """While the worker is down its input lags behind retention: the first part of what it has not read yet is
    deleted. On restart its committed offsets are below the log start; aiokafka resets to the log start and the
    input gate sees a hole in a fresh fetch. It must say so (a warning naming the offsets, the metric behind the
    FatigueGuardInputSkipped alert), read on, and decide on what is left exactly as a replay of what was read."""
    deployment = deployment_factory()
    deployment.create_topics()
    messages = make_messages(EVENTS // 2, CUSTOMERS, seed=31)  # a smaller stream: what matters is the hole
    holes: dict[int, tuple[int, int]] = {}

    def delete_half_of_the_unread_input() -> None:
        committed = deployment.committed_input()
        ends = deployment.end_offsets_by_partition("events")
        holes.update({p: (committed[p], committed[p] + (ends[p] - committed[p]) // 2) for p in committed})
        deployment.delete_input_before({p: end for p, (_, end) in holes.items()})
        print(f"  deleted the input below { ({p: end for p, (_, end) in holes.items()}) } (committed: {committed})")

    port = free_port()
    log_offset, started = _first_half_then_restart(
        deployment,
        messages,
        wipe=False,
        before_restart=delete_half_of_the_unread_input,
        restart_args=("--web-port", str(port)),
    )
    deployment.wait_until_settled()
    log = deployment.log_since("w1", log_offset)
    for partition, (first, end) in holes.items():
        assert f"input partition {partition}: offsets {first}..{end - 1} no longer exist" in log, partition
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'fatigue_input_holes_total{action="accepted"} 6.0' in metrics  # what FatigueGuardInputSkipped watches
    print(f"  verified: the worker reported every hole exactly: {holes}")
    # what is left of the input, without the ticks the restarted worker appended to it
    survivors = [(key, value) for key, value, headers in deployment.read_topic("events") if not headers]
    read = messages[: len(messages) // 2] + survivors
    expected = assert_exact_parity(deployment, read, min_blocks=MIN_BLOCKS)
    print(
        f"  outputs equal replay of the {len(read)} messages that were there to read "
        f"({len(messages) - len(read)} deleted unread); {len(expected.blocks)} Redis blocks; "
        f"{time.monotonic() - started:.0f}s"
    )
    assert "Traceback" not in log


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_block(deployment_factory: Callable[..., GuardDeployment]):
    deployment = deployment_factory()
    deployment.create_topics()
    messages = make_messages(EVENTS, CUSTOMERS, seed=23)
    started = time.monotonic()
    deployment.produce(messages)
    deployment.start_worker("w1")

    # kill -9 once a good part of the input is committed and decisions are flowing, but well before the end
    deployment.wait_until_committed(int(0.3 * len(messages)))
    time.sleep(0.4)  # off the commit beat: some processed input is not committed yet
    deployment.kill_worker("w1", signal.SIGKILL)
    committed_at_kill = deployment.committed_offsets("events")
    done, total = deployment.group_progress("events")
    decisions_at_kill = deployment.end_offsets("decisions")
    print(
        f"\nSIGKILL w1 with {done}/{total} input offsets committed and {decisions_at_kill} decision records out "
        f"({time.monotonic() - started:.0f}s)"
    )
    assert decisions_at_kill > 0 and done < 0.9 * len(messages), "the kill should land mid-stream"

    log_offset = deployment.log_size("w1")
    deployment.start_worker("w1")
    deployment.wait_until_settled()
    expected = expected_outputs(deployment, messages, int(time.time() * 1000))
    print(f"restarted w1 (same data dir), whole stream: {expected.summary()}")

    published = assert_decisions_at_least_once(deployment, expected, committed_at_kill)
    extra_letters = assert_dead_letters_at_least_once(deployment, expected, committed_at_kill)
    blocks = assert_redis_blocks_exact(deployment, expected, MIN_BLOCKS)
    prefs = assert_redis_prefs_exact(deployment, expected)
    assert_violations_at_least_once(deployment, expected)
    log = deployment.log_since("w1", log_offset)
    highwater, starts = _recovery(log)
    repaired = _repaired(log)
    print(
        f"  verified: no decision the replay does not make; the latest record of each of the "
        f"{len(expected.latest)} keys is the replay's latest decision (or a tombstone where that has ended); "
        f"all {len(expected.decisions)} distinct decisions published, superseded ones included "
        f"({published.records} records, {published.resent} sent again)\n"
        f"  verified: every rejection dead-lettered, plus {sum(extra_letters.values())} for redelivered input "
        f"{dict(extra_letters.most_common())}; {blocks} Redis blocks and all {prefs} prefs exact\n"
        f"  verified: every violation the replay finds published, and no other\n"
        f"  repair: outputs of {sum(c for c, _ in repaired.values())} customers changed at or after the committed "
        f"offsets re-sent on restart ({ {p: c for p, (c, _) in sorted(repaired.items())} } per partition)\n"
        f"  recovery: changelog last offsets {highwater}, read from {starts}; {time.monotonic() - started:.0f}s"
    )
    assert repaired, "the kill should leave handled input uncommitted, and the restart re-send those states' records"
    # the restarted worker found them from the offsets the group had committed when it was killed
    assert all(resume == committed_at_kill[p] for p, (_, resume) in repaired.items()), (repaired, committed_at_kill)
    assert "Error in recovery" not in log
    assert "Traceback" not in log
