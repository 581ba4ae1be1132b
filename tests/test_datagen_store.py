"""Append-only JSONL with torn-line repair (processing/jsonl_store.py)."""

import json

import pytest

from processing.jsonl_store import AppendOnlyJsonl


def test_append_then_reopen_reads_everything(tmp_path):
    path = tmp_path / "out.jsonl"
    with AppendOnlyJsonl(path) as store:
        assert store.records == []
        store.append({"a": 1})
        store.append({"a": "ünïcode"})
    assert AppendOnlyJsonl(path).records == [{"a": 1}, {"a": "ünïcode"}]


def test_torn_last_line_is_dropped_and_file_stays_appendable(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    store = AppendOnlyJsonl(path)
    assert store.records == [{"a": 1}, {"a": 2}]
    assert store.dropped_torn_line == b'{"a": 3, "b"'
    store.append({"a": 4})
    store.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"a": 2}, {"a": 4}]


def test_line_without_newline_is_treated_as_torn_even_if_it_parses(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')
    assert AppendOnlyJsonl(path).records == [{"a": 1}]
    assert path.read_bytes() == b'{"a": 1}\n'


def test_corruption_in_the_middle_is_an_error_not_a_repair(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match="out.jsonl:2: corrupt line"):
        AppendOnlyJsonl(path)
    assert path.read_bytes() == b'{"a": 1}\nnot json\n{"a": 2}\n'
