"""Which flavour of the hot modules ``import fatigue`` loads: compiled by mypyc (setup.py) or the Python sources.

Both come from the same source files. The compiled ones are used only while they were built from exactly the
sources beside them (setup.py records a digest of each); an edited source, a missing digest or
``FATIGUE_PURE_PYTHON=1`` makes the whole set load from source instead, so a stale build can never run.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# What setup.py compiles (it reads this list).
COMPILED_MODULES = ("clock", "engine", "events", "partition", "policy", "replay", "state", "timeutil")
DIGESTS_FILE = "_compiled.json"
PURE_ENV = "FATIGUE_PURE_PYTHON"
_PACKAGE_DIR = Path(__file__).resolve().parent


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _has_extension(name: str) -> bool:
    return any((_PACKAGE_DIR / f"{name}{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _stale_reason() -> str | None:
    """Why the compiled modules must not be used (None: they match their sources)."""
    import orjson  # a dependency anyway; imported here so the pure path pays nothing for it

    try:
        recorded = orjson.loads((_PACKAGE_DIR / DIGESTS_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return f"{DIGESTS_FILE} is missing or unreadable"
    for name in COMPILED_MODULES:
        source = _PACKAGE_DIR / f"{name}.py"
        if not source.exists():
            continue  # an install without sources: nothing to be stale against
        if recorded.get(name) != source_digest(source):
            return f"fatigue/{name}.py changed after it was compiled"
    return None


class _SourceFinder:
    """Loads the hot modules from their .py files, ahead of the extension modules Python would prefer."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != "fatigue" or name not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _PACKAGE_DIR / f"{name}.py")


def select() -> None:
    """Called by ``fatigue/__init__`` before any hot module is imported."""
    if not any(_has_extension(name) for name in COMPILED_MODULES):
        return  # a pure install: Python finds the sources by itself
    if os.environ.get(PURE_ENV) == "1":
        reason = None
    else:
        reason = _stale_reason()
        if reason is None:
            return
        warnings.warn(
            f"fatigue: not using the compiled core ({reason}); running the pure-Python core. "
            "Rebuild it with `make venv` (or pip install -e .).",
            RuntimeWarning,
            stacklevel=3,
        )
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def flavour() -> str:
    """``compiled`` or ``pure``: what the running process actually loaded."""
    engine = sys.modules.get("fatigue.engine")
    origin = getattr(engine, "__file__", "") or ""
    return "compiled" if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) else "pure"
