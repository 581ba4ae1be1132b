"""Append-only JSON-lines files that survive `kill -9`, and the resumable keyed results file built on them.

Each record is written with a single `write` of one complete line, then flushed and fsynced, so a
killed process leaves every earlier record intact and at most one torn line at the end. Opening
the file detects such a torn last line (no trailing newline, or not valid JSON), cuts it off and
reports it. A bad line anywhere else is corruption we did not cause: that is an error, not a repair.

Written by hand because neither `datasets` nor the standard library offers crash-safe appends
with resume. `ResumableJsonl` (results keyed by one field, held under an OS file lock) is what batched
answering (`inference.batch`) and the judge's reviews (`evaluation`) resume from; data generation
(`datagen.generate`) appends to `AppendOnlyJsonl` directly.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from processing.files import write_text

logger = logging.getLogger(__name__)


class AppendOnlyJsonl:
    """One JSONL file opened for appending. `records` holds what it contained when opened."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.dropped_torn_line: bytes | None = None
        self.records: list[dict[str, Any]] = self._load_and_repair()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("ab")
        self._lock = threading.Lock()

    def _load_and_repair(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # After split, a file that ends with "\n" has an empty last element; anything else is a tail
        # that was being written when the process died (even if it happens to parse: it is redone).
        tail = lines.pop()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{number}: corrupt line in the middle of the file ({err}); not repairing") from err
        if tail:
            self.dropped_torn_line = tail
            keep = len(data) - len(tail)
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
            logger.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", self.path, len(tail))
        return records

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> AppendOnlyJsonl:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def require_keys(record: dict[str, Any], keys: Iterable[str], where: str) -> None:
    """Raise a `ValueError` naming `where` (file + record) when `record` lacks any of `keys`."""
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; found {sorted(record)}")


class OutputInUseError(ValueError):
    """Another process holds the output file (its lock): two runs appending to one file would answer twice."""


class ResumableJsonl:
    """An append-only JSONL file of results keyed by one field (e.g. `question_id`).

    Every record is flushed and fsynced as soon as it exists, so an interrupted run keeps all it
    finished; opening the file again loads those records (a torn last line left by a crash is cut
    off and its item computed again) and `in` tells the caller what to skip. Use as a context manager.

    The file is held with an OS file lock (`filelock`, on `PATH.lock`) from opening to `close()`: a second
    process opening it meanwhile gets `OutputInUseError` instead of computing the same items again. Records
    whose key repeats an earlier one (left by runs before the lock existed) are dropped from the file when it
    is opened, keeping the first; `duplicates` lists their keys.
    """

    def __init__(self, path: str | os.PathLike, key: str = "question_id") -> None:
        from filelock import FileLock, Timeout

        self.key = key
        self._lock = FileLock(f"{os.fspath(path)}.lock", timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise OutputInUseError(
                f"{path} is in use by another run (it holds {self._lock.lock_file}); wait for it to finish or "
                "write to another file"
            ) from None
        try:
            self._file = AppendOnlyJsonl(path)
            self.path = self._file.path
            self.records: dict[str, dict[str, Any]] = {}
            self.duplicates: list[str] = []
            for number, record in enumerate(self._file.records, start=1):
                require_keys(record, [key], f"{self.path}, record {number}")
                if str(record[key]) in self.records:
                    self.duplicates.append(str(record[key]))
                else:
                    self.records[str(record[key])] = record
            if self.duplicates:
                self._drop_duplicates()
        except BaseException:
            self._lock.release()
            raise

    def _drop_duplicates(self) -> None:
        self._file.close()
        write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records.values()))
        self._file = AppendOnlyJsonl(self.path)
        shown = ", ".join(repr(item) for item in self.duplicates[:10])
        more = f" and {len(self.duplicates) - 10} more" if len(self.duplicates) > 10 else ""
        logger.warning("%s: dropped %d duplicate record(s) of %s %s%s (kept the first of each)",
                       self.path, len(self.duplicates), self.key, shown, more)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records.values())

    def get(self, item_id: object) -> dict[str, Any] | None:
        return self.records.get(str(item_id))

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably before returning."""
        require_keys(record, [self.key], f"record for {self.path}")
        self._file.append(record)
        self.records[str(record[self.key])] = record

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._lock.release()

    def __enter__(self) -> ResumableJsonl:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
