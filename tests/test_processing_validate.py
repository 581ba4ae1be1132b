"""`check_dataset` and `llava validate`: every kind of problem is found, counted and tied to its sample ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from processing_fixtures import gradient_image, make_processor, sample, write_jsonl

from processing.llava_data import load_llava_dataset
from processing.validate import check_dataset


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def messy(tmp_path):
    """A JSONL file with one sample of each problem, plus good ones, and its image root."""
    root = tmp_path / "images"
    root.mkdir()
    gradient_image(30, 30).save(root / "ok.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    long_answer = " ".join(["word"] * 80)
    records = [
        sample("good", "ok.png"),
        sample("good-text", None, [("human", "Hi"), ("gpt", "Hello.")]),
        sample("missing", "nope.png"),
        sample("unreadable", "broken.jpg"),
        sample("escape", "../outside.png"),
        sample("count", ["ok.png", "ok.png"]),
        sample("backwards", "ok.png", [("gpt", "Hello."), ("human", "<image>\nHi")]),
        sample("empty", "ok.png", [("human", "<image>\nHi"), ("gpt", "  ")]),
        sample("no-answer", "ok.png", [("human", "<image>\nHi")]),
        sample("long", "ok.png", [("human", "<image>\nTell me a story."), ("gpt", long_answer)]),
    ]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    with path.open("ab") as handle:
        handle.write(b'{"id": "cut", "conversations": [\n')
    return path, root


def test_check_dataset_finds_every_problem(messy):
    path, root = messy
    report = check_dataset(path, root)
    kinds = {problem.sample_id: problem.kind for problem in report.problems if problem.sample_id}
    assert kinds == {
        "missing": "missing_image",
        "unreadable": "unreadable_image",
        "escape": "unsafe_image_path",
        "count": "image_token_mismatch",
        "backwards": "turn_order",
        "empty": "empty_turn",
        "no-answer": "turn_order",
        "cut": "malformed_json",  # the id of a line that is not valid JSON is still read where it can be
    }
    assert [(p.kind, p.line) for p in report.problems if p.sample_id == "cut"] == [("malformed_json", 11)]
    assert report.num_samples == 10 and not report.ok
    assert report.counts()["turn_order"] == 2
    text = report.format()
    assert "missing images (missing_image): 1" in text and "sample 'missing'" in text and "data.jsonl:11" in text

    # Training's skip-with-report path: exclude the failing ids, keep every other sample.
    clean = load_llava_dataset(path, root, exclude_ids=report.failing_ids, skip_unreadable_lines=True)
    assert clean["id"] == ["good", "good-text", "long"]


def test_max_length_counts_expanded_image_tokens(messy):
    """The length check must agree with what the processor really feeds the model, image tokens included."""
    from processing.llava_data import llava_to_messages

    path, root = messy
    processor = make_processor(template="vicuna_v1", image_seq_length=100)
    good = sample("good", "ok.png")
    messages = llava_to_messages(good["conversations"])
    messages[0]["content"][0]["image"] = gradient_image(30, 30)
    real_length = len(processor.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"][0])
    assert real_length > 100

    def too_long(max_length):
        report = check_dataset(path, root, processor, max_length=max_length)
        return {p.sample_id for p in report.problems if p.kind == "too_long"}

    assert "good" not in too_long(real_length)
    assert {"good", "long"} <= too_long(real_length - 1)
    assert too_long(10_000) == set()
    with pytest.raises(ValueError, match="needs a processor"):
        check_dataset(path, root, max_length=10)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llava_cli", "validate", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_reports_and_exits_non_zero(messy, tmp_path):
    path, root = messy
    result = _cli(str(path), "--image-root", str(root), "--json", str(tmp_path / "report.json"))
    assert result.returncode == 1, result.stderr
    assert "missing_image" in result.stdout and "'backwards'" in result.stdout
    saved = json.loads((tmp_path / "report.json").read_text())
    assert "missing" in saved["failing_ids"] and saved["counts"]["malformed_json"] == 1

    good = write_jsonl(tmp_path / "good.jsonl", [sample("good", "ok.png")])
    result = _cli(str(good), "--image-root", str(root))
    assert result.returncode == 0 and "no problems found" in result.stdout

    result = _cli(str(good), "--max-length", "10")
    assert result.returncode == 2 and "--max-length needs --processor" in result.stderr


def test_cli_length_check_with_a_saved_processor(messy, tmp_path):
    path, root = messy
    make_processor(template="vicuna_v1", image_seq_length=100).save_pretrained(tmp_path / "processor")
    result = _cli(str(path), "--image-root", str(root), "--processor", str(tmp_path / "processor"), "--max-length", "150")
    assert result.returncode == 1
    assert "too_long" in result.stdout and "'long'" in result.stdout


def test_cli_help_explains_every_option():
    result = _cli("--help")
    assert result.returncode == 0
    for option in ("--image-root", "--processor", "--max-length", "--no-decode", "--json"):
        assert option in result.stdout

