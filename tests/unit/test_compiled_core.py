"""The compiled core (mypyc, setup.py) and the Python sources are one engine: same outputs, byte for byte.

The rest of the suite runs whichever flavour ``import fatigue`` loads (the compiled one after ``make venv``);
these tests run the other one beside it, in a child process, and check how the flavour is chosen.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import fatigue
from fatigue import _core
from fatigue.engine import Guard
from fatigue.generate import generate_events
from fatigue.replay import Replay
from fatigue.testing import policy_named

REPO = Path(__file__).resolve().parents[2]
COMPILED = fatigue.core_flavour() == "compiled"
needs_compiled = pytest.mark.skipif(not COMPILED, reason="the compiled core is not built (FATIGUE_PURE_PYTHON=1?)")


def replay_digests(events: int, customers: int) -> dict[str, str]:
    """A digest of everything a replay produces, per policy and partitioning: every step's decisions, violations
    and rejection, the decisions of the final flush and every customer's final state bytes."""
    lines = list(generate_events(events, customers, seed=7, skew=1.0))
    digests = {}
    for name in ("default", "reg-f", "tcpa"):
        for partitions in (None, 6):
            replay = Replay(Guard(policy_named(name)), partitions=partitions)
            digest = hashlib.sha256()
            for line in lines:
                step = replay.feed(line)
                rejection = step.rejection.to_dict() if step.rejection is not None else None
                digest.update(orjson.dumps([step.decisions, step.violations, rejection], option=orjson.OPT_SORT_KEYS))
            digest.update(orjson.dumps(replay.finish(replay.newest_ms), option=orjson.OPT_SORT_KEYS))
            for customer_id in sorted(replay.states):
                digest.update(customer_id.encode() + b"\0" + replay.states[customer_id].to_bytes())
            digests[f"{name}/{partitions}"] = digest.hexdigest()
    return digests


def _in_child(code: str, *, pure: bool) -> str:
    env = {**os.environ, _core.PURE_ENV: "1" if pure else "0"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_ci_runs_the_compiled_core() -> None:
    # `make test` sets this: without it a broken build would silently leave CI testing the sources only
    if os.environ.get("FATIGUE_REQUIRE_COMPILED") != "1":
        pytest.skip("FATIGUE_REQUIRE_COMPILED is not set")
    assert fatigue.core_flavour() == "compiled"
    for name in _core.COMPILED_MODULES:
        module = importlib.import_module(f"fatigue.{name}")
        assert not str(module.__file__).endswith(".py"), f"fatigue.{name} was loaded from source"


@needs_compiled
def test_the_pure_core_gives_byte_identical_outputs_on_a_realistic_stream() -> None:
    code = (
        "import orjson, fatigue\n"
        "from tests.unit.test_compiled_core import replay_digests\n"
        "print(orjson.dumps([fatigue.core_flavour(), replay_digests(30_000, 3_000)]).decode())\n"
    )
    flavour, pure = orjson.loads(_in_child(code, pure=True))
    assert flavour == "pure"
    assert replay_digests(30_000, 3_000) == pure


@needs_compiled
def test_pure_python_env_loads_every_hot_module_from_source() -> None:
    code = (
        "import importlib, fatigue\n"
        "from fatigue import _core\n"
        "files = [importlib.import_module(f'fatigue.{name}').__file__ for name in _core.COMPILED_MODULES]\n"
        "print(fatigue.core_flavour(), *files)\n"
    )
    flavour, *files = _in_child(code, pure=True).split()
    assert flavour == "pure"
    assert files and all(file.endswith(".py") for file in files)


def _package_copy(tmp_path: Path) -> Path:
    for name in _core.COMPILED_MODULES:
        (tmp_path / f"{name}.py").write_bytes((REPO / "fatigue" / f"{name}.py").read_bytes())
    digests = {name: _core.source_digest(tmp_path / f"{name}.py") for name in _core.COMPILED_MODULES}
    (tmp_path / _core.DIGESTS_FILE).write_bytes(orjson.dumps(digests))
    return tmp_path


def test_a_build_is_current_only_while_every_source_has_its_recorded_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _package_copy(tmp_path)
    monkeypatch.setattr(_core, "_PACKAGE_DIR", package)
    assert _core._stale_reason() is None

    engine = package / "engine.py"
    engine.write_text(engine.read_text() + "\n# an edit after the build\n")
    assert _core._stale_reason() == "fatigue/engine.py changed after it was compiled"

    (package / _core.DIGESTS_FILE).unlink()
    assert _core._stale_reason() == f"{_core.DIGESTS_FILE} is missing or unreadable"


@needs_compiled
def test_the_installed_build_matches_the_sources_in_the_tree() -> None:
    # what `make venv` leaves: every hot module compiled from exactly the source beside it
    assert _core._stale_reason() is None
    for name in _core.COMPILED_MODULES:
        assert _core._has_extension(name), name
