"""File helpers of the evaluation tools, built on the project's shared JSON helpers
(`processing.jsonio`) and crash-safe appends (`datagen.store`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from datagen.store import AppendOnlyJsonl
from processing.jsonio import read_records, write_atomic

__all__ = ["ResumableJsonl", "read_records", "require_keys", "write_atomic", "write_json_atomic"]


def require_keys(record: dict[str, Any], keys: Iterable[str], where: str) -> None:
    """Raise a `ValueError` naming `where` (file + record) when `record` lacks any of `keys`."""
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; found {sorted(record)}")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON through a temporary file and a rename (never half-written)."""
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class ResumableJsonl:
    """An append-only JSONL file of results keyed by one field (e.g. `question_id`).

    Every record is flushed and fsynced as soon as it exists, so an interrupted run keeps all it
    finished; opening the file again loads those records (a torn last line left by a crash is cut
    off and its item computed again) and `in` tells the caller what to skip. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, key: str = "question_id") -> None:
        self.key = key
        self._file = AppendOnlyJsonl(path)
        self.path = self._file.path
        self.records: dict[str, dict[str, Any]] = {}
        for number, record in enumerate(self._file.records, start=1):
            require_keys(record, [key], f"{self.path}, record {number}")
            self.records[str(record[key])] = record

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
        self._file.close()

    def __enter__(self) -> ResumableJsonl:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
