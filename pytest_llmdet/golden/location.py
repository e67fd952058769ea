"""Where a test's golden file lives: `<test dir>/<snapshot dir>/<module>/<test name>.json`, with names that
are safe on Linux, macOS and Windows, never leave the folder, and stay distinct after sanitising."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SUFFIX = ".json"
PENDING_SUFFIX = ".llmdet-pending"  # beside the golden file: `<golden file>.llmdet-pending`
MAX_NAME_CHARS = 80
HASH_CHARS = 10
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-\[\]]+")
_HASHED = re.compile(rf"-[0-9a-f]{{{HASH_CHARS}}}$")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


def safe_file_stem(name: str) -> str:
    """A file name stem for `name`: readable, portable, and distinct for distinct names.

    Characters outside [A-Za-z0-9._-[]] become `_`; leading dots and trailing dots are dropped; long names
    are cut. Whenever the result differs from `name`, could collide on a case-insensitive file system, or
    looks like a hashed stem itself, a short hash of the original name is appended so that two names never
    share a file.
    """
    readable = _UNSAFE.sub("_", name).strip(". ")
    readable = readable[:MAX_NAME_CHARS].rstrip(". ") or "_"
    if readable.split(".")[0].upper() in _WINDOWS_RESERVED:
        readable = "_" + readable
    if readable != name or name != name.lower() or _HASHED.search(name):
        readable += "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    return readable


def test_name_of(nodeid: str) -> str:
    """The part of a node id after the module: `TestClass::test_x[param]` becomes `TestClass.test_x[param]`.

    Only the class and function part is rewritten; a parameter id keeps its `::` (sanitised and hashed like
    any unsafe character), so that `test_x[a::b]` and `test_x[a.b]` get different files.
    """
    name = nodeid.split("::", 1)[1] if "::" in nodeid else nodeid
    function, bracket, parameters = name.partition("[")
    return function.replace("::", ".") + bracket + parameters


def module_folder(test_path: Path, snapshot_dir: str) -> Path:
    """The folder holding the golden files of one test module."""
    return test_path.parent / snapshot_dir / safe_file_stem(test_path.stem)


def golden_path(test_path: Path, nodeid: str, snapshot_dir: str) -> Path:
    """The golden file of one test (each parametrized id its own file)."""
    return module_folder(test_path, snapshot_dir) / (safe_file_stem(test_name_of(nodeid)) + SUFFIX)


def pending_path(golden: Path) -> Path:
    """Where the pending snapshots of a golden file go."""
    return golden.with_name(golden.name + PENDING_SUFFIX)


def module_file_stem(nodeid: str) -> str:
    """The stem of the module a node id names (`tests/test_x.py::test_y` gives `test_x`)."""
    module = nodeid.split("::", 1)[0]
    return module.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".py")


def placed_as_named(path: Path, nodeid: str) -> bool:
    """Whether a golden file at `path` sits where our naming puts the golden file of test `nodeid`: its name
    from the test's name, its folder from the test's module (the folders above are not compared, so a file
    stays recognised when the rootdir, and with it the node id's prefix, changes)."""
    return (path.name == safe_file_stem(test_name_of(nodeid)) + SUFFIX
            and path.parent.name == safe_file_stem(module_file_stem(nodeid)))


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` stays inside `folder` once both are resolved."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
