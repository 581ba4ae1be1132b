"""Atomic output folders: a folder either appears complete under its final name or not at all.

An export writes several large files (weight shards, configs, remote code, the card). If the
process dies half way, a folder named `OUT` holding half of them would look like a finished
export and could be uploaded. So every file is written into a staging folder *beside* `OUT`
(same filesystem, so the final `os.replace` is a single atomic rename) whose name says it is
incomplete; only a clean exit renames it to `OUT`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Marker in the names of staging folders; `find_stale_staging_dirs` looks for it.
STAGING_MARKER = ".incomplete-"


def staging_prefix(out: Path) -> str:
    """Name prefix of the staging folders of `out` (hidden, and obviously unfinished)."""
    return f".{out.name}{STAGING_MARKER}"


def find_stale_staging_dirs(out: Path) -> list[Path]:
    """Staging folders left beside `out` by interrupted runs (e.g. after `kill -9`)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if p.is_dir() and p.name.startswith(staging_prefix(out)))


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on a clean exit it becomes `out`, on any error it is removed.

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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
        os.replace(out, retired / out.name)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out)
