"""The golden-file store: read with clear errors, write atomically under a cross-process lock, delete.

A write goes to a temporary file beside the golden file (`*.llmdet-tmp`, ignored by name) and replaces it
with `os.replace`, so a reader or a crash never sees half a file; a `filelock` lock per golden file keeps
pytest-xdist workers and concurrent pytest runs from interleaving. Unchanged content is never rewritten.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from pytest_llmdet.golden_format import GoldenFile, GoldenFileError, dumps, loads

TMP_SUFFIX = ".llmdet-tmp"
LOCK_TIMEOUT_SECONDS = 120


def lock_path(path: Path) -> Path:
    """A lock file outside the project (so no lock files sit among the goldens), one per golden file."""
    key = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:32]
    folder = Path(tempfile.gettempdir()) / "pytest-llmdet-locks"
    folder.mkdir(exist_ok=True)
    return folder / f"{key}.lock"


def _lock(path: Path):
    from filelock import FileLock

    return FileLock(str(lock_path(path)), timeout=LOCK_TIMEOUT_SECONDS)


def read_golden(path: Path, where: str | None = None) -> GoldenFile | None:
    """The golden file at `path`, or None if there is none; GoldenFileError if it cannot be used."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise GoldenFileError(f"{where or path} cannot be read: {error.strerror}") from None
    return loads(raw, where or str(path))


def _remove_stale_temporaries(path: Path) -> None:
    # Called under the file's lock: a temporary file of this golden file is then a crashed writer's leftover.
    for leftover in path.parent.glob(f"{path.name}.*{TMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def write_golden(path: Path, golden: GoldenFile) -> bool:
    """Write `golden` atomically unless the file already holds exactly these bytes; True if it wrote."""
    content = dumps(golden).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        _remove_stale_temporaries(path)
        try:
            if path.read_bytes() == content:
                return False
        except FileNotFoundError:
            pass
        handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(content)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return True


def delete_golden(path: Path) -> bool:
    """Delete a golden file (only ever on an explicit update); True if it existed."""
    with _lock(path):
        _remove_stale_temporaries(path)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
    folder = path.parent
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return True


def clean_temporaries(folder: Path) -> int:
    """Remove leftover temporary files of crashed writers in one snapshot folder; returns how many."""
    removed = 0
    for leftover in folder.glob(f"*{TMP_SUFFIX}"):
        target = folder / (leftover.name.split(".json.")[0] + ".json")
        with _lock(target):
            if leftover.exists():
                leftover.unlink()
                removed += 1
    return removed


__all__ = ["GoldenFileError", "clean_temporaries", "delete_golden", "read_golden", "write_golden"]
