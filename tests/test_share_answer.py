"""`llava answer`: batch inference over a JSONL of questions (left-padded batches, progress bar, resume)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from conftest import REPO_ROOT
from hub_upload.export import export_model
from share_fixtures import save_tiny_training_output

QUESTIONS = [
    {"question_id": "q1", "text": "<image>\nWhat is in this photo?", "image": "astronaut.png"},
    {"question_id": "q2", "text": "Describe the image in detail.", "image": "coffee.png"},
    {"question_id": "q3", "text": "What animal is this?", "image": "chelsea.png"},
    {"question_id": "q4", "text": "What is the capital of France?"},
    {"question_id": "q5", "text": "Name a colour."},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    work = tmp_path_factory.mktemp("answer")
    model_dir = export_model(save_tiny_training_output(work / "run"), work / "tiny-llava")
    images = work / "images"
    images.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(images / f"{name}.png")
    questions = work / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return model_dir, images, questions


def answer(setup, output: Path, batch_size: int) -> subprocess.CompletedProcess:
    model_dir, images, questions = setup
    return subprocess.run(
        [sys.executable, "-m", "llava_cli", "answer", "--model", str(model_dir), "--questions", str(questions),
         "--image-root", str(images), "--output", str(output), "--batch-size", str(batch_size), "--max-new-tokens", "10"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def read_answers(path: Path) -> dict[str, str]:
    return {r["question_id"]: r["text"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def batched(setup, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("batched") / "answers.jsonl"
    result = answer(setup, output, batch_size=2)
    assert result.returncode == 0, result.stderr
    assert "answering" in result.stderr and "5/5" in result.stderr  # the progress bar
    return output


def answer_in_process(setup, output: Path, batch_size: int) -> None:
    """The same answering the CLI does, without a new interpreter (what `llava answer` composes)."""
    from inference.answer_cli import StopTrimmingAnswerer
    from inference.batch import BatchAnswerer
    from inference.batch import answer_question_file
    from inference.loading import load_model_and_processor
    from inference.messages import template_stop_string
    from inference.settings import GenerationSettings

    model_dir, images, questions = setup
    model, processor = load_model_and_processor(str(model_dir), device="cpu")
    answerer = StopTrimmingAnswerer(BatchAnswerer(model, processor, GenerationSettings(max_new_tokens=10)),
                                    template_stop_string(processor))
    answer_question_file(QUESTIONS, answerer, output, image_root=images, batch_size=batch_size, model_id=str(model_dir),
                     show_progress=False)


def test_batched_answers_equal_one_by_one_answers(batched, setup, tmp_path):
    answer_in_process(setup, tmp_path / "single.jsonl", batch_size=1)
    by_batch, one_by_one = read_answers(batched), read_answers(tmp_path / "single.jsonl")
    assert sorted(by_batch) == [q["question_id"] for q in QUESTIONS]
    # Left padding done right: a prompt's answer does not depend on its batch-mates' lengths.
    assert by_batch == one_by_one
    assert len(set(by_batch.values())) > 1  # and the questions (images) do matter


def test_rerun_answers_only_what_is_missing(setup, batched, tmp_path):
    output = tmp_path / "answers.jsonl"
    lines = batched.read_text().splitlines()
    output.write_text("\n".join(lines[:2]) + "\n")  # as if interrupted after the first batch
    answer_in_process(setup, output, batch_size=2)
    resumed = output.read_text().splitlines()
    assert resumed[:2] == lines[:2] and len(resumed) == len(QUESTIONS)
    assert read_answers(output) == {r["question_id"]: r["text"] for r in map(json.loads, lines)}


def test_missing_image_is_named(setup, tmp_path, capsys):
    from inference.answer_cli import main

    model_dir, images, _ = setup
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": "x", "text": "What?", "image": "nope.png"}) + "\n")
    code = main(["--model", str(model_dir), "--questions", str(questions), "--image-root", str(images),
                 "--output", str(tmp_path / "a.jsonl"), "--device", "cpu"])
    assert code == 1 and "nope.png" in capsys.readouterr().err
