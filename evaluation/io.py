"""File helpers of the evaluation tools, built on the project's shared JSON helpers
(`processing.jsonio`, `processing.files`) and crash-safe appends (`datagen.store`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from datagen.store import AppendOnlyJsonl
from processing.files import write_text
from processing.jsonio import read_records

logger = logging.getLogger(__name__)

__all__ = ["OutputInUseError", "ResumableJsonl", "read_records", "require_keys"]


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
