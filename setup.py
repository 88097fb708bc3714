"""Builds the compiled parts of the core; everything else is declared in pyproject.toml.

- The decision core's hot modules are compiled to C with mypyc. The compiled modules are the same source as the
  pure-Python ones (the tests check that both give byte-identical outputs), about twice as fast.
- The native core, the Rust crate in native/, is built (release) with setuptools-rust as ``fatigue._native``; its
  results must equal the Python core's too. It needs cargo; an unpacked tree without native/ (the Docker build
  context) builds without it.

``FATIGUE_PURE_PYTHON=1`` at install time builds neither, e.g. where no compiler is available; at run time it makes
``import fatigue`` load the sources even when compiled modules are present. ``FATIGUE_NO_NATIVE=1`` at install
time skips only the Rust build.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "fatigue"
# run from its file, not imported: importing the package needs its dependencies, not installed yet
_NATIVE = runpy.run_path(str(PACKAGE / "_native_build.py"))
NATIVE_DIGESTS = PACKAGE / _NATIVE["DIGEST_FILE"]


def compiled_modules() -> tuple[str, ...]:
    # the list fatigue._core checks at import time, read without importing the package (which needs its deps)
    return tuple(runpy.run_path(str(PACKAGE / "_core.py"))["COMPILED_MODULES"])


def compiled_extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("FATIGUE_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify

    modules = compiled_modules()
    # fatigue._core loads the compiled modules only while their sources still have these digests
    digests = {name: hashlib.sha256((PACKAGE / f"{name}.py").read_bytes()).hexdigest() for name in modules}
    (PACKAGE / "_compiled.json").write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    return mypycify([f"fatigue/{name}.py" for name in modules], opt_level="3", group_name="fatigue_core")


def native_extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("FATIGUE_PURE_PYTHON") == "1" or os.environ.get(_NATIVE["NO_NATIVE_ENV"]) == "1":
        return []
    manifest = ROOT / _NATIVE["NATIVE_DIR"] / "Cargo.toml"
    if not manifest.is_file():
        return []  # e.g. the Docker image's build context, which has only the Python package
    if shutil.which("cargo") is None:
        raise SystemExit(
            "fatigue-guard: cargo not found: the native core (native/, Rust) needs a Rust toolchain "
            "(https://rustup.rs); or install with FATIGUE_NO_NATIVE=1 to build without it"
        )
    from setuptools_rust import Binding, RustExtension

    write_native_digest()  # now, so that a wheel's package data has it; again after the build (see below)
    return [
        RustExtension(
            "fatigue._native",
            path=str(manifest.relative_to(ROOT)),
            binding=Binding.PyO3,
            debug=False,  # release, also for `pip install -e` (setuptools-rust would make that a debug build)
        )
    ]


def write_native_digest() -> None:
    digest = _NATIVE["native_source_digest"](ROOT)
    NATIVE_DIGESTS.write_text(json.dumps({"digest": digest}, indent=1) + "\n")


native = native_extensions()
try:
    # rust_extensions only when there are some: without them setup.py also runs where setuptools-rust is missing
    setup(ext_modules=compiled_extensions(), **({"rust_extensions": native} if native else {}))
except BaseException:
    # a failed build must not leave a record claiming that the current sources were built
    if native:
        NATIVE_DIGESTS.unlink(missing_ok=True)
    raise
if native:
    write_native_digest()  # cargo may have updated Cargo.lock while building
