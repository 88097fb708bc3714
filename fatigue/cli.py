"""The ``fatigue`` command line: ``replay``, ``backtest``, ``import-bank`` (offline, pure core) and ``worker``
(the Faust guard)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

import orjson

from fatigue import backtest_cli
from fatigue.engine import Guard
from fatigue.events import Rejection
from fatigue.policy import PolicyError, load_policy
from fatigue.replay import Replay, file_size, read_lines, resolve_flush_at, tune_gc
from fatigue.timeutil import parse_duration_ms

if TYPE_CHECKING:
    from fatigue.native import NativeReplay

DEFAULT_POLICY = Path("config/policies/default.toml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fatigue", description="Streaming contact-fatigue guard.")
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser(
        "replay",
        help="replay an events file through the engine; decisions as JSON lines on stdout",
        description="Replay contract events (JSON lines) through the decision engine, deterministically.",
    )
    replay.add_argument("events", help="events file, one JSON object per line ('-' for stdin)")
    replay.add_argument("--policy", default=str(DEFAULT_POLICY), help="policy TOML file (default: %(default)s)")
    replay.add_argument("-o", "--output", help="write decisions here instead of stdout")
    replay.add_argument("--rejects", help="write rejected inputs (with reasons) here instead of stderr")
    replay.add_argument("--violations", help="write sender violations here (JSON lines)")
    replay.add_argument("--summary", action="store_true", help="print counts by reason and channel to stderr")
    replay.add_argument(
        "--flush-at",
        default="end",
        help="settle unread deadlines before this instant at the end: 'end' (newest event time, default), "
        "'never', epoch ms or ISO-8601",
    )
    replay.add_argument(
        "--partitions",
        type=int,
        help="mirror a worker on a topic with this many partitions: quiet customers' deadlines fire by partition "
        "event time, as the worker fires them",
    )
    replay.add_argument(
        "--deadline-settle",
        default="1h",
        help="with --partitions: how far partition event time must pass a deadline (default: %(default)s)",
    )
    replay.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    replay.add_argument(
        "--engine",
        choices=("python", "native"),
        default="python",
        help="python (default): the engine the worker runs; native: the compiled Rust core (native/), the same "
        "output byte for byte, several times faster; not with --partitions",
    )

    # offline backtest of policies on a history, and the bank marketing importer (see fatigue/backtest_cli.py)
    backtest_cli.add_parsers(commands)

    # these run on the real infrastructure and parse their own options (see streams/)
    commands.add_parser("worker", help="run the streaming guard (Faust worker); see fatigue worker --help")
    commands.add_parser(
        "send", help="check events against the contract and produce them to the input topic; see fatigue send --help"
    )
    commands.add_parser("check", help="show a customer's blocks and preferences in Redis; see fatigue check --help")
    commands.add_parser("follow", help="print block decisions, current then live, like a dialer sees them")
    commands.add_parser("filter", help="keep the audience ids that may be contacted now (Redis, bulk)")
    commands.add_parser("inspect", help="explain what the guard holds about one customer (right of access)")
    commands.add_parser("erase", help="erase one customer (right to erasure); opt-outs stay suppressed")

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in _INFRA_COMMANDS:
        return _infra(argv[0], argv[1:])
    args = parser.parse_args(argv)
    if args.command == "replay":
        return _replay(args)
    if args.command in backtest_cli.COMMANDS:
        return backtest_cli.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


_INFRA_COMMANDS = ("worker", "send", "check", "follow", "filter", "inspect", "erase")


def _infra(command: str, argv: list[str]) -> int:
    # imported on demand: the core must not pull in Kafka, Redis or Faust
    if command == "worker":
        from streams.worker import main as worker_main

        return worker_main(argv)
    from streams import tools

    commands = {
        "send": tools.send_main,
        "check": tools.check_main,
        "follow": tools.follow_main,
        "filter": tools.filter_main,
        "inspect": tools.inspect_main,
        "erase": tools.erase_main,
    }
    return commands[command](argv)


def _replay(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.policy)
    except PolicyError as error:
        print(f"fatigue replay: invalid policy: {error}", file=sys.stderr)
        return 2
    try:
        source: IO[bytes] = sys.stdin.buffer if args.events == "-" else open(args.events, "rb")  # noqa: SIM115
    except OSError as error:
        print(f"fatigue replay: cannot read {args.events}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        output = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
        rejects = open(args.rejects, "wb") if args.rejects else sys.stderr.buffer  # noqa: SIM115
        violations = open(args.violations, "wb") if args.violations else None  # noqa: SIM115
    except OSError as error:
        print(f"fatigue replay: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    progress = not args.no_progress and sys.stderr.isatty() and (file_size(source) or 0) > 8_000_000
    try:
        settle_ms = parse_duration_ms(args.deadline_settle)
    except ValueError as error:
        print(f"fatigue replay: --deadline-settle: {error}", file=sys.stderr)
        return 2
    tune_gc(core_only=True)
    dumps = orjson.dumps
    replay: Replay | NativeReplay
    if args.engine == "native":
        from fatigue.native import UNAVAILABLE_REASON, NativeReplay, native_available

        if args.partitions:
            print("fatigue replay: --engine native does not support --partitions", file=sys.stderr)
            return 2
        if not native_available():
            print(f"fatigue replay: the native engine is not available: {UNAVAILABLE_REASON}", file=sys.stderr)
            return 2
        native = replay = NativeReplay(Guard(policy))

        def feed(raw: bytes) -> tuple[list[bytes], Rejection | None, list[bytes]]:
            step = native.feed(raw)  # its decisions and violations are JSON bytes already
            return step.decisions, step.rejection, step.violations

        def finish(flush_at_ms: int | None) -> list[bytes]:
            return native.finish(flush_at_ms)

    else:
        python = replay = Replay(Guard(policy), partitions=args.partitions, settle_ms=settle_ms)

        def feed(raw: bytes) -> tuple[list[bytes], Rejection | None, list[bytes]]:
            step = python.feed(raw)
            return [dumps(d) for d in step.decisions], step.rejection, [dumps(v) for v in step.violations]

        def finish(flush_at_ms: int | None) -> list[bytes]:
            return [dumps(d) for d in python.finish(flush_at_ms)]

    try:
        for line_number, raw in read_lines(source, file_size(source), progress):
            decisions, rejection, step_violations = feed(raw)
            for decision in decisions:
                output.write(decision + b"\n")
            if rejection is not None:
                record = rejection.to_dict()
                record["line"] = line_number
                rejects.write(dumps(record) + b"\n")
            if violations is not None:
                for violation in step_violations:
                    violations.write(violation + b"\n")
        for decision in finish(resolve_flush_at(args.flush_at, replay.newest_ms)):
            output.write(decision + b"\n")
    except ValueError as error:
        print(f"fatigue replay: {error}", file=sys.stderr)
        return 2
    finally:
        output.flush()
        rejects.flush()
        for stream in (source, output, rejects, violations):
            if stream is not None and stream not in (sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer):
                stream.close()
    if args.summary:
        sys.stderr.write("\n".join(replay.stats.summary_lines()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
