"""Small file helpers shared by the evaluation tools: JSON/JSONL reading with errors that name the
file and line, atomic writes, and an append-only JSONL store that makes long runs resumable."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file (one JSON object per line, blank lines skipped).

    Raises:
        ValueError: naming the file and line when a line is not a JSON object.
    """
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {line_number}: expected a JSON object, found {type(record).__name__}")
            records.append(record)
    return records


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a list of records from a `.jsonl` file or a `.json` file holding a list of objects."""
    if str(path).endswith(".jsonl"):
        return read_jsonl(path)
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"{path}: expected a JSON list of objects (or a .jsonl file)")
    return data


def require_keys(record: dict[str, Any], keys: Iterable[str], where: str) -> None:
    """Raise a `ValueError` naming `where` (file + record) when `record` lacks any of `keys`."""
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; found {sorted(record)}")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON through a temporary file and a rename, so that readers never
    see a half-written file."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ResumableJsonl:
    """An append-only JSONL file keyed by a field (e.g. `question_id`).

    Every record is written and flushed as soon as it exists, so an interrupted run keeps all it
    finished; opening the file again loads those records and `done` tells the caller what to skip.
    A final line without its newline can only come from a crash in the middle of a write: it is
    incomplete, so it is cut off (with a warning) and its item is computed again.
    """

    def __init__(self, path: str | os.PathLike, key: str = "question_id") -> None:
        self.path = Path(path)
        self.key = key
        self.records: dict[str, dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._drop_partial_last_line()
            for record in read_jsonl(self.path):
                require_keys(record, [key], f"{self.path}")
                self.records[str(record[key])] = record

    def _drop_partial_last_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning(
                "%s: the last line is incomplete (interrupted write); dropping it (%d bytes) to recompute that item",
                self.path,
                len(data) - keep,
            )
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records.values())

    def get(self, item_id: object) -> dict[str, Any] | None:
        return self.records.get(str(item_id))

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and flush it to disk before returning."""
        require_keys(record, [self.key], f"record for {self.path}")
        line = json.dumps(record, ensure_ascii=False)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[str(record[self.key])] = record
