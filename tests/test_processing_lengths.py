"""The batched length measure shared by `llava validate --max-length` and training's scan: exact, parallel, cached."""

from __future__ import annotations

import json

from processing_fixtures import make_processor, sample, write_jsonl

from processing.llava_data import llava_to_messages
from processing.validate import LengthCache, SampleMeasure, check_dataset


def records(count: int) -> list[dict]:
    return [sample(f"s{i}", None, [("human", "Hi " * (i % 7 + 1)), ("gpt", "Hello there " * (i % 5 + 1))]) for i in range(count)]


def per_sample_length(processor, record) -> int:
    """The code before issue 26: one `processor.apply_chat_template` and one tokenizer call per sample."""
    text = processor.apply_chat_template(llava_to_messages(record["conversations"]), tokenize=False)
    tokens = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(tokens) + tokens.count(processor.image_token_id) * (processor.image_seq_length - 1)


def test_batched_lengths_equal_the_per_sample_path():
    processor = make_processor(template="vicuna_v1", image_seq_length=100)
    data = records(5) + [sample("img", "a.png"), sample("two", ["a.png", "b.png"], [("human", "<image> and <image>?"), ("gpt", "Both.")])]
    measured = SampleMeasure.from_processor(processor, supervision=False)([llava_to_messages(r["conversations"]) for r in data])
    assert [m.length for m in measured] == [per_sample_length(processor, r) for r in data]


def test_processes_and_cache_give_the_same_report_and_a_cached_run_measures_nothing(tmp_path, monkeypatch):
    processor = make_processor(template="vicuna_v1", image_seq_length=5)
    path = write_jsonl(tmp_path / "data.jsonl", records(2500))  # three batches: the process pool is used
    limit = 50
    plain = check_dataset(path, None, processor, max_length=limit)
    assert 0 < len(plain.problems) < 2500
    parallel = check_dataset(path, None, processor, max_length=limit, num_proc=2, cache_dir=tmp_path / "cache")
    assert parallel.problems == plain.problems

    calls = []
    monkeypatch.setattr(SampleMeasure, "__call__", lambda self, batch: calls.append(len(batch)) or [])
    cached = check_dataset(path, None, processor, max_length=limit, cache_dir=tmp_path / "cache")
    assert cached.problems == plain.problems and calls == []

    # one edited sample is measured again, the rest still comes from the cache
    monkeypatch.undo()
    edited = records(2500)
    edited[3]["conversations"][1]["value"] = "long " * 50
    path.write_text("".join(json.dumps(r) + "\n" for r in edited), encoding="utf-8")
    measure_calls = []
    original = SampleMeasure.__call__
    monkeypatch.setattr(SampleMeasure, "__call__", lambda self, batch: measure_calls.append(len(batch)) or original(self, batch))
    again = check_dataset(path, None, processor, max_length=limit, cache_dir=tmp_path / "cache")
    assert measure_calls == [1]
    assert "s3" in {p.sample_id for p in again.problems}


def test_another_processor_has_its_own_cache_entries(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", records(3))
    measures = [SampleMeasure.from_processor(make_processor(template=name, image_seq_length=5)) for name in ("vicuna_v1", "chatml")]
    paths = {LengthCache(tmp_path, path, measure, "validate").path for measure in measures}
    assert len(paths) == 2
