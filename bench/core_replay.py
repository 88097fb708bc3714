"""In-process replay throughput of the pure core (parse + engine) on one core, with same-run JSON baselines.

The events file is generated once with ``fatigue.generate`` and cached under ``.cache/bench/`` (git-ignored); its
name carries the generator's source digest, so a changed generator never reuses a stale file. The file is read
into memory before any timing: the figures are CPU only, no I/O.

    .venv/bin/python bench/core_replay.py [--events N] [--customers N] [--seed S] [--policy FILE] [--profile]
                                          [--chunk N] [--no-pure] [--no-native]

Measured, in this order, over the same lines:

* ``orjson.loads`` of every line: the floor any JSON-in service pays (the baseline of the ratio);
* ``json.loads`` of every line: what a naive standard-library parser costs;
* ``parse_event`` alone: decoding plus contract validation;
* the full replay (``Replay.feed`` for every line, then ``finish``): parse, de-duplication, state, rules,
  decisions and violations, all customers' state in memory;
* when the compiled core runs (``make venv`` builds it, see setup.py), the same replay once more with the pure-Python
  sources, in a child process (``FATIGUE_PURE_PYTHON=1``): the speed-up of the compiled build in the same run;
* when the native core is built (``fatigue.native``, the Rust crate in native/), the same replay on it
  (``NativeReplay.feed_all`` of every line, then ``finish``). Its stats must equal the Python replay's (the run fails
  otherwise), and the one-core target is judged on its figure.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

import fatigue
import fatigue.generate
from fatigue.engine import Guard
from fatigue.events import parse_event
from fatigue.generate import generate_events
from fatigue.policy import Policy, load_policy
from fatigue.replay import Replay, ReplayStats, tune_gc

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench"
TARGET_EVENTS_PER_S = 150_000


def events_file(events: int, customers: int, seed: int, skew: float) -> Path:
    """The cached stream for these arguments, generated on first use."""
    digest = hashlib.sha256(Path(fatigue.generate.__file__).read_bytes()).hexdigest()[:12]
    path = CACHE / f"events-{events}-{customers}-{seed}-{skew:g}-{digest}.jsonl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        partial = path.with_suffix(".partial")
        with partial.open("wb") as out:
            out.writelines(line + b"\n" for line in generate_events(events, customers, seed, skew=skew))
        partial.replace(path)  # never leave a truncated file where a complete one is expected
        print(f"generated {path.relative_to(REPO)} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return path


def timed(label: str, work: Callable[[], object], count: int) -> float:
    gc.collect()  # start each measurement without garbage left by the previous one
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    print(f"  {label:<40} {count / elapsed:>12,.0f} events/s  {elapsed * 1e6 / count:>8.2f} us/event  {elapsed:7.2f}s")
    return elapsed


def pure_replay_seconds(argv: list[str], count: int) -> float:
    """The same replay with the pure-Python core, in a child process (a process loads one flavour only)."""
    child = subprocess.run(
        [sys.executable, __file__, *argv, "--replay-only"],
        env={**os.environ, "FATIGUE_PURE_PYTHON": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    line = child.stdout.rstrip().splitlines()[-1]
    print(line)
    return float(line.rsplit(None, 1)[1].rstrip("s"))


@dataclass
class NativeResult:
    seconds: float
    stats: ReplayStats
    newest_ms: int | None
    customers: int


def native_replay(policy: Policy, lines: list[bytes], count: int) -> NativeResult | None:
    """The same replay on the native core (``feed_all`` of every line, then ``finish``); None when it is not built."""
    try:
        import fatigue.native
    except ImportError as error:
        print(f"  native replay: not available (fatigue.native does not import: {error})")
        return None
    if not fatigue.native.native_available():
        reason = getattr(fatigue.native, "UNAVAILABLE_REASON", None) or "native_available() is False"
        print(f"  native replay: not available ({reason}; --no-native to skip)")
        return None
    replay = fatigue.native.NativeReplay(Guard(policy))

    def run() -> None:
        replay.feed_all(lines)
        replay.finish(replay.newest_ms)

    seconds = timed("native replay (parse + engine, Rust)", run, count)
    return NativeResult(seconds, replay.stats, replay.newest_ms, len(replay.customers()))


def native_agrees(native: NativeResult, stats: ReplayStats, newest_ms: int | None, customers: int) -> bool:
    """Print whether the native replay reached what the Python replay reached; loudly when it did not."""
    same = native.stats == stats and native.newest_ms == newest_ms and native.customers == customers
    if same:
        print(
            f"  native and Python replays agree: same stats ({stats.accepted:,} accepted, "
            f"{sum(stats.decisions.values()):,} decisions, {sum(stats.violations.values()):,} violations, "
            f"{sum(stats.rejections.values()):,} rejections), newest event time and {customers:,} customers"
        )
        return True
    lines = ["  !!! native and Python replays DIFFER:"]
    if native.newest_ms != newest_ms:
        lines.append(f"  !!!   newest event time: python {newest_ms}, native {native.newest_ms}")
    if native.customers != customers:
        lines.append(f"  !!!   customers: python {customers:,}, native {native.customers:,}")
    for name in ("events", "accepted"):
        python_value, native_value = getattr(stats, name), getattr(native.stats, name)
        if python_value != native_value:
            lines.append(f"  !!!   {name}: python {python_value:,}, native {native_value:,}")
    for name in ("decisions", "rejections", "violations"):
        python_counts, native_counts = getattr(stats, name), getattr(native.stats, name)
        for key in sorted(python_counts.keys() | native_counts.keys(), key=str):
            if python_counts[key] != native_counts[key]:
                shown = "/".join(key) if isinstance(key, tuple) else key
                lines.append(f"  !!!   {name} {shown}: python {python_counts[key]:,}, native {native_counts[key]:,}")
    lines.append("  !!! find the first differing line: .venv/bin/python -m tests.unit.test_native_parity --help")
    print("\n".join(lines))
    print("\n".join(lines), file=sys.stderr)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="stream length (default: %(default)s)")
    parser.add_argument("--customers", type=int, default=100_000, help="customers (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default: %(default)s)")
    parser.add_argument("--skew", type=float, default=1.0, help="Zipf exponent, 0 = uniform (default: %(default)s)")
    parser.add_argument("--policy", default=str(REPO / "config" / "policies" / "default.toml"), help="policy TOML")
    parser.add_argument("--no-json", action="store_true", help="skip the json.loads baseline")
    parser.add_argument("--profile", action="store_true", help="also cProfile the replay and print the hot spots")
    parser.add_argument("--profile-events", type=int, default=200_000, help="lines to profile (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=0, help="also print the replay's rate per N events")
    parser.add_argument("--no-pure", action="store_true", help="skip the pure-Python replay of a compiled build")
    parser.add_argument("--no-native", action="store_true", help="skip the native (Rust) replay")
    parser.add_argument("--replay-only", action="store_true", help=argparse.SUPPRESS)  # the pure child's mode
    args = parser.parse_args(argv)

    path = events_file(args.events, args.customers, args.seed, args.skew)
    lines = path.read_bytes().splitlines()
    policy = load_policy(args.policy)
    count = len(lines)
    flavour = fatigue.core_flavour()
    if not args.replay_only:
        print(
            f"core replay: {count:,} events, {args.customers:,} customers (skew {args.skew:g}), seed {args.seed}, "
            f"policy {policy.version}\n"
            f"  Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpu(s); file {path.name}; "
            f"{flavour} core"
        )

    def orjson_baseline() -> None:
        loads, error = orjson.loads, orjson.JSONDecodeError
        for line in lines:
            try:  # noqa: SIM105 - contextlib.suppress would add its own cost to the baseline
                loads(line)
            except error:
                pass

    def json_baseline() -> None:
        loads = json.loads
        for line in lines:
            try:  # noqa: SIM105 - as above
                loads(line)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
                pass

    def parse_only() -> None:
        for line in lines:
            parse_event(line)

    # the same collector setting as `fatigue replay` (off: the core makes no cycles), for every measurement below
    tune_gc(core_only=True)
    replay = Replay(Guard(policy))

    chunks: list[tuple[int, float, int, int]] = []  # (events so far, seconds, customers after, decisions in it)

    def full_replay() -> None:
        feed = replay.feed
        size = args.chunk or count
        for start in range(0, count, size):
            began = time.perf_counter()
            for line in lines[start : start + size]:
                feed(line)
            if args.chunk:
                decided = sum(replay.stats.decisions.values())
                chunks.append((min(start + size, count), time.perf_counter() - began, len(replay.states), decided))
        replay.finish(replay.newest_ms)

    if args.replay_only:
        timed(f"replay, {flavour} core", full_replay, count)
        return 0
    baseline = timed("orjson.loads (baseline)", orjson_baseline, count)
    naive = None if args.no_json else timed("json.loads (naive baseline)", json_baseline, count)
    parsing = timed("parse_event (decode + validate)", parse_only, count)
    total = timed(f"replay (parse + engine), {flavour} core", full_replay, count)
    pure = None if flavour != "compiled" or args.no_pure else pure_replay_seconds(argv or sys.argv[1:], count)

    stats = replay.stats
    customers = len(replay.states)
    newest_ms = replay.newest_ms
    native: NativeResult | None = None
    if args.no_native:
        print("  native replay: skipped (--no-native)")
    else:
        replay.states.clear()  # the Python states are not needed any more: the native run starts on a clean heap
        native = native_replay(policy, lines, count)

    decisions = sum(stats.decisions.values())
    rate = count / total
    print(f"  accepted {stats.accepted:,}  rejected {sum(stats.rejections.values()):,}  decisions {decisions:,}")
    print(f"  customers in memory {customers:,}")
    print(f"  ratio replay / orjson.loads: {total / baseline:.1f}x")
    if naive is not None:
        print(f"  ratio replay / json.loads:   {total / naive:.1f}x")
    print(f"  engine share of replay time: {(total - parsing) / total:.0%}")
    if pure is not None:
        print(f"  compiled core speed-up over the pure-Python sources: {pure / total:.2f}x")
    agree = True
    if native is not None:
        agree = native_agrees(native, stats, newest_ms, customers)
        print(f"  ratio native replay / orjson.loads: {native.seconds / baseline:.1f}x")
        if naive is not None:
            print(f"  ratio native replay / json.loads:   {native.seconds / naive:.1f}x")
        print(f"  native core speed-up over the Python replay ({flavour} core): {total / native.seconds:.2f}x")
    if chunks:
        print(f"  per {args.chunk:,} events: events/s, customers in memory after them, decisions among them")
        done, decided = 0, 0
        for upto, seconds, customers, decided_so_far in chunks:
            print(
                f"    {done + 1:>9,}-{upto:<9,} {(upto - done) / seconds:>9,.0f} {customers:>9,} "
                f"{decided_so_far - decided:>9,}"
            )
            done, decided = upto, decided_so_far
    if native is not None and agree:
        judged, rate = "native replay", count / native.seconds
    else:
        judged = f"replay ({flavour} core)"
    verdict = "meets" if rate >= TARGET_EVENTS_PER_S else "is BELOW"
    print(f"  {judged}: {rate:,.0f} events/s {verdict} the {TARGET_EVENTS_PER_S:,} events/s one-core target")
    if not agree:
        print("  no verdict on the native replay: its results differ from the Python replay's (see above)")
    print(
        f"reproduce: .venv/bin/python bench/core_replay.py --events {args.events} --customers {args.customers} "
        f"--seed {args.seed} --skew {args.skew:g}"
    )

    if args.profile:
        subset = lines[: args.profile_events]
        profiled = Replay(Guard(policy))
        profiler = cProfile.Profile()
        profiler.enable()
        for line in subset:
            profiled.feed(line)
        profiled.finish(profiled.newest_ms)
        profiler.disable()
        report = io.StringIO()
        pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(20)
        print(f"\ncProfile of the first {len(subset):,} events, by own time:")
        print(report.getvalue())
    if not agree:
        print("core_replay: FAILED: the native replay's results differ from the Python replay's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
