"""Small JSON / JSONL helpers shared by the data tools: readers that name the bad line, an atomic record writer.

Written by hand because `datasets` would turn a list of records into Arrow tables we do not need for these small
tools.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from processing.files import write_text


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON list of objects (`.json`) or one object per line (any other suffix, e.g. `.jsonl`).

    Raises `ValueError` naming the file and the line of the first record that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ValueError(f"{path}: expected a JSON list of objects, found {type(data).__name__}")
        return data
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({err})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, found {type(record).__name__}")
            records.append(record)
    return records


def write_records(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Write records atomically: a JSON list for a `.json` path, JSON lines otherwise."""
    records = list(records)
    if Path(path).suffix == ".json":
        text = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
    else:
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    write_text(path, text)
