"""``fatigue replay`` as a user runs it: a real subprocess, files and pipes, exit codes."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from fatigue.generate import generate_events

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO / "config" / "policies" / "default.toml"


def sms(event_id: str, ts: str | int, **extra: Any) -> bytes:
    body = {"type": "contact", "event_id": event_id, "customer_id": "c1", "ts": ts, "channel": "sms", **extra}
    return orjson.dumps(body)


# The default policy allows 2 marketing SMS per 7 days: the 2nd blocks sms, the 3rd is sent while blocked.
TIMELINE = [
    sms("e1", "2026-11-23T10:00:00Z", sender="crm"),  # line 1
    sms("e2", "2026-11-23T19:00:00+08:00", sender="crm"),  # line 2: 11:00Z, blocks
    b"",  # line 3: blank lines are skipped but keep the numbering
    b"{not json",  # line 4
    sms("e3", 1_795_435_200_000, sender="sms-gateway"),  # line 5: 12:00Z, inside the block
    sms("e1", "2026-11-23T10:00:00Z", sender="crm"),  # line 6: redelivery of line 1
    orjson.dumps({"type": "contact", "event_id": "e4", "customer_id": "c1", "ts": 1_795_435_200_000, "channel": "fax"}),
]


def run_replay(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "fatigue.cli", "replay", "--policy", str(DEFAULT_POLICY), *args]
    return subprocess.run(command, input=stdin, capture_output=True, cwd=REPO, timeout=300, check=False)


def json_lines(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


@pytest.fixture
def timeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "timeline.jsonl"
    path.write_bytes(b"\n".join(TIMELINE) + b"\n")
    return path


def test_decisions_on_stdout_and_rejects_on_stderr(timeline_file):
    result = run_replay(str(timeline_file))
    assert result.returncode == 0, result.stderr
    decisions = json_lines(result.stdout)
    assert [(d["action"], d["reason"], d["channel"], d["customer_id"]) for d in decisions] == [
        ("block", "cap", "sms", "c1"),
        ("block", "cap", "sms", "c1"),  # the 3rd SMS pushes the end of the block later
    ]
    assert decisions[0]["rule_id"] == "cap.sms.7d"
    assert decisions[0]["until"] == "2026-11-30T10:00:00Z"
    assert decisions[1]["until"] == "2026-11-30T11:00:00Z"
    assert [d["cause_event_id"] for d in decisions] == ["e2", "e3"]
    rejects = json_lines(result.stderr)
    assert [(r["line"], r["reason"]) for r in rejects] == [(4, "bad_json"), (6, "duplicate"), (7, "unknown_channel")]
    assert rejects[1]["event_id"] == "e1" and rejects[1]["customer_id"] == "c1"
    assert all(r["detail"] for r in rejects)


def test_rejects_file_keeps_stderr_quiet(timeline_file, tmp_path):
    rejects_path = tmp_path / "rejects.jsonl"
    result = run_replay(str(timeline_file), "--rejects", str(rejects_path))
    assert result.returncode == 0
    assert result.stderr == b""
    assert [(r["line"], r["reason"]) for r in json_lines(rejects_path.read_bytes())] == [
        (4, "bad_json"),
        (6, "duplicate"),
        (7, "unknown_channel"),
    ]


def test_summary_counts(timeline_file, tmp_path):
    result = run_replay(str(timeline_file), "--rejects", str(tmp_path / "rejects.jsonl"), "--summary")
    assert result.returncode == 0
    summary = result.stderr.decode()
    assert "events 6  accepted 3  rejected 3" in summary
    lines = [line.split() for line in summary.splitlines()]
    assert ["block", "cap", "sms", "2"] in lines
    assert ["bad_json", "1"] in lines and ["duplicate", "1"] in lines and ["unknown_channel", "1"] in lines
    assert ["blocked", "sms", "1"] in lines


def test_violations_file_names_the_sender(timeline_file, tmp_path):
    violations_path = tmp_path / "violations.jsonl"
    result = run_replay(str(timeline_file), "--violations", str(violations_path), "--rejects", "/dev/null")
    assert result.returncode == 0
    violations = json_lines(violations_path.read_bytes())
    assert len(violations) == 1
    violation = violations[0]
    assert (violation["kind"], violation["reason"], violation["rule_id"]) == ("blocked", "cap", "cap.sms.7d")
    assert (violation["event_id"], violation["sender"], violation["channel"]) == ("e3", "sms-gateway", "sms")
    assert violation["until"] == "2026-11-30T10:00:00Z"


def test_output_file(timeline_file, tmp_path):
    output = tmp_path / "decisions.jsonl"
    result = run_replay(str(timeline_file), "-o", str(output), "--rejects", "/dev/null")
    assert result.returncode == 0 and result.stdout == b""
    assert len(json_lines(output.read_bytes())) == 2


def test_missing_input_and_bad_policy_exit_2(tmp_path):
    missing = run_replay(str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and b"cannot read" in missing.stderr
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "x"\n[caps]\n', encoding="utf-8")
    command = [sys.executable, "-m", "fatigue.cli", "replay", "--policy", str(policy), "-"]
    bad = subprocess.run(command, input=b"", capture_output=True, cwd=REPO, timeout=60, check=False)
    assert bad.returncode == 2 and b"invalid policy" in bad.stderr


@pytest.fixture(scope="module")
def generated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("generated") / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in generate_events(20_000, 1_500, seed=21)))
    return path


@pytest.mark.slow
def test_replay_is_deterministic_from_file_and_stdin(generated_file, tmp_path):
    # three independent processes, run side by side to keep the test short
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = [
            pool.submit(run_replay, str(generated_file), "--summary", "--rejects", str(tmp_path / "r1.jsonl")),
            pool.submit(run_replay, str(generated_file), "--summary", "--rejects", str(tmp_path / "r2.jsonl")),
            pool.submit(
                run_replay, "-", "--summary", "--rejects", str(tmp_path / "r3.jsonl"), stdin=generated_file.read_bytes()
            ),
        ]
        first, second, piped = (run.result() for run in runs)
    for result in (first, second, piped):
        assert result.returncode == 0, result.stderr[-2000:]
    decisions = json_lines(first.stdout)
    assert len(decisions) > 1_000
    assert second.stdout == first.stdout
    assert piped.stdout == first.stdout
    assert second.stderr == first.stderr == piped.stderr  # the summary
    rejects = (tmp_path / "r1.jsonl").read_bytes()
    assert rejects == (tmp_path / "r2.jsonl").read_bytes() == (tmp_path / "r3.jsonl").read_bytes()
    assert {r["reason"] for r in json_lines(rejects)} >= {"bad_json", "duplicate", "unknown_channel", "too_large"}
    assert b"events 20000 " in first.stderr


@pytest.mark.parametrize("policy", ["default", "tcpa", "reg-f"])
def test_native_engine_writes_the_same_files_as_the_python_engine(tmp_path, policy):
    # the whole command, files included: decisions, rejects (with line numbers), violations and the summary
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(generate_events(6_000, 60, seed=11)) + b"\n")
    outputs = {}
    for engine in ("python", "native"):
        out = tmp_path / engine
        out.mkdir()
        result = run_replay(
            "--policy",
            str(REPO / "config" / "policies" / f"{policy}.toml"),
            "--engine",
            engine,
            "-o",
            str(out / "decisions.jsonl"),
            "--rejects",
            str(out / "rejects.jsonl"),
            "--violations",
            str(out / "violations.jsonl"),
            "--summary",
            str(events),
        )
        assert result.returncode == 0, result.stderr
        outputs[engine] = [
            (out / name).read_bytes() for name in ("decisions.jsonl", "rejects.jsonl", "violations.jsonl")
        ]
        outputs[engine].append(result.stderr)
    assert outputs["python"][0].count(b"\n") > 100  # a stream with decisions, violations and rejects to compare
    assert outputs["python"][1] and outputs["python"][2]
    assert outputs["native"] == outputs["python"]


def test_native_engine_refuses_partitions(timeline_file):
    result = run_replay("--engine", "native", "--partitions", "6", str(timeline_file))
    assert result.returncode == 2
    assert b"--partitions" in result.stderr
