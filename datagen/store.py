"""Append-only JSON-lines files that survive `kill -9`.

Each record is written with a single `write` of one complete line, then flushed and fsynced, so a
killed process leaves every earlier record intact and at most one torn line at the end. Opening
the file detects such a torn last line (no trailing newline, or not valid JSON), cuts it off and
reports it. A bad line anywhere else is corruption we did not cause: that is an error, not a repair.

Written by hand because neither `datasets` nor the standard library offers crash-safe appends
with resume.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

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
