"""Which sources the native core (the Rust crate in native/, built as ``fatigue._native``) is built from.

setup.py records :func:`native_source_digest` in ``fatigue/_native.json`` when it builds the extension, so that a
build older than its sources can be told apart from a current one. Standard library only: setup.py runs this file
before the package's dependencies are installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

NATIVE_DIR: Final = "native"
DIGEST_FILE: Final = "_native.json"  # in fatigue/, beside the extension; git-ignored
NO_NATIVE_ENV: Final = "FATIGUE_NO_NATIVE"  # "1" at install time: build the mypyc core but not the Rust one


def native_sources(root: Path) -> list[Path]:
    """The files a build of the crate depends on, in a stable order: Cargo.toml, Cargo.lock and the Rust sources.

    ``root`` is the repository root (the directory holding ``native/``); the crate's own directory works too.
    """
    crate = root if (root / "Cargo.toml").is_file() else root / NATIVE_DIR
    files = [crate / "Cargo.toml", crate / "Cargo.lock", *(crate / "src").rglob("*.rs")]
    return sorted((path for path in files if path.is_file()), key=lambda path: path.relative_to(crate).as_posix())


def native_source_digest(root: Path) -> str:
    """SHA-256 hex of the crate's sources (:func:`native_sources`), in sorted order.

    Each file contributes its path relative to the crate and its length before its bytes, so that renaming a file
    or moving text from one file to the next also changes the digest.
    """
    crate = root if (root / "Cargo.toml").is_file() else root / NATIVE_DIR
    digest = hashlib.sha256()
    for path in native_sources(root):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(crate).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
