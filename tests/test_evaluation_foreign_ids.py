"""`llava eval pope|scienceqa --answers/--predictions`: a prediction whose question_id is not among the questions
(a predictions file of another question set) is refused by id; `--limit` with a full predictions file still works."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from evaluation.cli import main as eval_main
from evaluation_fixtures import SCIENCEQA_TEST_PROBLEMS, write_scienceqa


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _pope(tmp_path: Path, answer_ids, limit=None):
    Image.new("RGB", (30, 30)).save(tmp_path / "img.png")
    questions = [
        {"question_id": i, "image": "img.png", "text": "is there a dog?", "label": "yes" if i % 2 else "no"}
        for i in range(4)
    ]
    _write_jsonl(tmp_path / "pope.jsonl", questions)
    answers = _write_jsonl(tmp_path / "answers.jsonl", [{"question_id": i, "text": "Yes"} for i in answer_ids])
    argv = ["pope", "--questions", str(tmp_path / "pope.jsonl"), "--answers", str(answers),
            "--image-root", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    return eval_main(argv + (["--limit", str(limit)] if limit else []))


def test_pope_refuses_a_prediction_for_an_unknown_question(tmp_path, capsys):
    assert _pope(tmp_path, [0, 1, 2, 3, 99]) != 0
    err = capsys.readouterr().err
    assert "question_id '99' is not in the questions" in err and "record 5" in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_pope_limit_with_the_full_predictions_file(tmp_path):
    assert _pope(tmp_path, [0, 1, 2, 3], limit=2) == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["results"]["all"]["count"] == 2


def _scienceqa(tmp_path: Path, prediction_ids, limit=None):
    data = write_scienceqa(tmp_path / "sqa")
    predictions = _write_jsonl(tmp_path / "predictions.jsonl", [{"question_id": i, "text": "A"} for i in prediction_ids])
    argv = ["scienceqa", "--data", str(data), "--predictions", str(predictions), "--output-dir", str(tmp_path / "o")]
    return eval_main(argv + (["--limit", str(limit)] if limit else []))


def test_scienceqa_refuses_a_prediction_for_an_unknown_question(tmp_path, capsys):
    assert _scienceqa(tmp_path, [*SCIENCEQA_TEST_PROBLEMS, "not-a-pid"]) != 0
    assert "question_id 'not-a-pid' is not in the questions" in capsys.readouterr().err


def test_scienceqa_limit_with_the_full_predictions_file(tmp_path):
    assert _scienceqa(tmp_path, list(SCIENCEQA_TEST_PROBLEMS), limit=2) == 0


def test_a_question_answered_twice_is_refused(tmp_path, capsys):
    assert _pope(tmp_path, [0, 1, 2, 3, 2]) != 0
    assert "question_id '2' is answered more than once" in capsys.readouterr().err
