"""Atomic writes: every file and folder this project writes appears complete under its final name or not at all.

A run that dies half way (a crash, `kill -9`, a full disk) must not leave a half-written JSON file that the next
run reads as finished, or a half-written model folder that looks like a complete export. Every writer therefore
writes beside its target (same filesystem, so the final `os.replace` is one atomic rename) under a name that says
it is unfinished, and renames only on a clean exit. This is the one place that does it; everything else calls
`atomic_output_file`, `write_text`, `write_json` or `atomic_output_dir`.

Written by hand because the standard library has no "write to a temporary file, then rename".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_output_dir", "atomic_output_file", "find_stale_staging_dirs", "write_json", "write_text"]

#: Marker in the names of staging folders; `find_stale_staging_dirs` looks for it.
STAGING_MARKER = ".incomplete-"


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on a clean exit it becomes `path`, on an error it is removed.

    For writers that take a file name (`safetensors.save_file`, `np.savez`, `PIL.Image.save`, `torch.save`). The
    parent folder is created if needed; several processes may write the same target (the last rename wins).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, flushed to disk before the rename."""
    with atomic_output_file(path) as temporary, temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write `data` as JSON (non-ASCII kept, a final newline) to `path` atomically."""
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def staging_prefix(out: Path) -> str:
    """Name prefix of the staging folders of `out` (hidden, and obviously unfinished)."""
    return f".{out.name}{STAGING_MARKER}"


def find_stale_staging_dirs(out: str | os.PathLike) -> list[Path]:
    """Staging folders left beside `out` by interrupted runs (e.g. after `kill -9`)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if p.is_dir() and p.name.startswith(staging_prefix(out)))


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on a clean exit it becomes `out`, on any error it is removed.

    An export writes several large files (weight shards, configs, remote code, the card): a folder named `out`
    holding half of them would look like a finished export and could be uploaded.

    Args:
        out: final folder. Its parent is created if needed.
        overwrite: replace an existing `out`. The old folder is only deleted after the new one is in
            place, so a failed export never destroys a previous good one.

    Raises:
        FileExistsError: `out` exists and `overwrite` is False (checked before any work is done).
    """
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another output folder or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(out), dir=out.parent))
    try:
        yield staging
    except BaseException:
        # KeyboardInterrupt included: nothing half-written stays behind under any name.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # mkdtemp creates 0700 folders; give the result the permissions of a normally created folder.
    os.chmod(staging, 0o777 & ~_umask())
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
        os.replace(out, retired / out.name)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out)
