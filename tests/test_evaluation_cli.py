"""`llava eval judge|scienceqa|pope` end to end: the judge path through the real OpenAITeacher and
the loopback chat-completions server (with an unparseable judge reply), ScienceQA with both
ensembles, POPE, metrics.json and report.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from chat_server import chat_server  # noqa: F401, F811  (pytest fixture)
from evaluation.cli import main as eval_main
from processing.jsonio import read_records
from evaluation_fixtures import save_tiny_image_text_model, write_scienceqa

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "LLAVA_TEST_JUDGE_KEY"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_image_text_model(tmp_path_factory.mktemp("tiny") / "model")


def _judge_inputs(root: Path) -> dict[str, Path]:
    (root / "images").mkdir(parents=True)
    types = {"q0": "conv", "q1": "detail", "q2": "complex", "q3": "conv"}
    questions, contexts, references = [], [], []
    for index, (qid, qtype) in enumerate(types.items()):
        image = f"coco_{index}.jpg"
        Image.new("RGB", (48, 40), (60 * index, 100, 150)).save(root / "images" / image)
        questions.append(
            {"question_id": qid, "image": image, "text": f"what is in the image ? ({qid})", "category": qtype}
        )
        contexts.append(
            {
                "id": f"c{index}",
                "image": image,
                "captions": [f"Caption number {index}."],
                "boxes": [{"name": "cat", "bbox": [0.1, 0.2, 0.3, 0.4]}],
            }
        )
        references.append({"question_id": qid, "text": f"REF-{qid}: a cat sits on a mat."})
    # LLaVA-Bench's own context format is accepted too (instances with category + bbox).
    contexts[3] = {
        "image": contexts[3]["image"],
        "captions": ["Caption number 3."],
        "instances": [{"category": "dog", "bbox": [0.5, 0.5, 0.9, 0.9]}],
    }
    paths = {}
    for name, records in (("questions", questions), ("contexts", contexts), ("references", references)):
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return paths


# Replies keyed by which answer comes first: "[Assistant 1]\nREF-q0" = reference first.
JUDGE_SPEC = {
    "responses": [
        {"match": "[Assistant 1]\nREF-q0", "content": "8 6\nThe reference is more precise."},
        {"match": "[Assistant 2]\nREF-q0", "content": "5 9\nAssistant 2 is right."},
        {"match": "[Assistant 1]\nREF-q1", "content": "Scores follow.\nAssistant 1: 7\nAssistant 2: 7"},
        {"match": "[Assistant 2]\nREF-q1", "content": "7 7"},
        {"match": "REF-q2", "content": "I cannot judge this without seeing the image."},  # never parseable
        {"match": "[Assistant 1]\nREF-q3", "content": "10 5"},
        {"match": "[Assistant 2]\nREF-q3", "content": "5 10"},
    ]
}


def test_judge_end_to_end_through_loopback_server(tmp_path, tiny_model_dir, chat_server, monkeypatch):
    server = chat_server(JUDGE_SPEC)
    paths = _judge_inputs(tmp_path / "bench")
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "llava_cli",
        "eval",
        "judge",
        "--model",
        str(tiny_model_dir),
        "--questions",
        str(paths["questions"]),
        "--contexts",
        str(paths["contexts"]),
        "--references",
        str(paths["references"]),
        "--image-root",
        str(tmp_path / "bench" / "images"),
        "--judge",
        "openai",
        "--judge-model",
        "judge-gpt",
        "--judge-base-url",
        server.base_url,
        "--judge-api-key-env",
        KEY_ENV,
        "--swap",
        "--judge-concurrency",
        "3",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
        "--output-dir",
        str(out),
        "--no-progress",
    ]
    env = {**os.environ, KEY_ENV: "test-key"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    requests = server.requests()
    assert len(requests) == 3 * 2 + 2 * 3  # q0, q1, q3: one per order; q2: 3 attempts per order
    assert all(r["body"]["model"] == "judge-gpt" for r in requests)
    # Requests run concurrently, so the server sees them in any order: pick q0's by its question.
    first = next(r["body"]["messages"][1]["content"] for r in requests if "(q0)" in r["body"]["messages"][1]["content"])
    assert (
        "Caption number 0.\n\ncat: [0.1, 0.2, 0.3, 0.4]" in first
        and "[Question]\nwhat is in the image ? (q0)" in first
    )

    metrics = json.loads((out / "metrics.json").read_text())
    assert "judge-gpt" in metrics["judge"] and server.base_url in metrics["judge"]
    results = metrics["results"]
    # q0: reference (8+9)/2, model (6+5)/2; q1: 7 and 7; q3: reference (10+10)/2, model (5+5)/2; q2 unscored.
    assert results["conversation"]["model_mean"] == pytest.approx(5.25)
    assert results["conversation"]["reference_mean"] == pytest.approx(9.25)
    assert results["conversation"]["relative_score"] == pytest.approx(5.25 / 9.25 * 100)
    assert results["detail"]["relative_score"] == pytest.approx(100.0)
    assert results["complex"] == {
        "relative_score": None,
        "model_mean": None,
        "reference_mean": None,
        "count": 0,
        "unscored": 1,
    }
    assert results["all"]["relative_score"] == pytest.approx((17.5 / 3) / (25.5 / 3) * 100)

    reviews = read_records(out / "reviews.jsonl")
    assert len(reviews) == 8 and all(r["judge"] == metrics["judge"] for r in reviews)
    q2 = [r for r in reviews if r["question_id"] == "q2"]
    assert all(r["scores"] is None and r["attempts"] == 3 and "unparseable" in r["error"] for r in q2)
    predictions = read_records(out / "predictions.jsonl")
    assert sorted(p["question_id"] for p in predictions) == ["q0", "q1", "q2", "q3"]

    report = (out / "report.md").read_text()
    assert "| conversation | 56.8 | 5.25 | 9.25 | 2 | 0 |" in report
    assert "![q0](report_images/q0.png)" in report and (out / "report_images" / "q0.png").is_file()
    assert "unscored (judge reply unparseable)" in report

    # Rerunning resumes: nothing is answered or judged again (in-process this time, to save a start-up).
    monkeypatch.setenv(KEY_ENV, "test-key")
    assert eval_main(command[command.index("judge") :]) == 0
    assert len(server.requests()) == len(requests)
    assert read_records(out / "predictions.jsonl") == predictions


def test_scienceqa_cli_with_both_ensembles(tmp_path, chat_server, monkeypatch, capsys):
    data = write_scienceqa(tmp_path / "sqa")
    ours = {
        "p1": "A",
        "p2": "A. Paris",
        "p3": "Hat rhymes with cat. The answer is C.",
        "p4": "The answer is B.",
        "p5": "I do not know.",
        "p6": "The answer is D.",
    }
    teacher = {
        "p1": "I cannot see the image.",
        "p2": "The answer is B.",
        "p3": "The answer is A.",
        "p4": "The answer is A.",
        "p5": "The answer is B.",
        "p6": "The answer is D.",
    }
    (tmp_path / "ours.jsonl").write_text(
        "".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in ours.items())
    )
    (tmp_path / "teacher.json").write_text(json.dumps({"outputs": teacher}))
    server = chat_server(
        {
            "responses": [
                {"match": "Which city", "content": "Both are unsure."},  # unparseable: complement fallback
                {"match": "Which word rhymes", "content": "Hat rhymes with cat. The answer is C."},
            ],
            "default": {"content": "Checking the options, the answer is A."},
        }
    )
    monkeypatch.setenv(KEY_ENV, "test-key")
    out = tmp_path / "out"
    code = eval_main(
        [
            "scienceqa",
            "--data",
            str(data),
            "--split",
            "test",
            "--predictions",
            str(tmp_path / "ours.jsonl"),
            "--teacher-predictions",
            str(tmp_path / "teacher.json"),
            "--judge",
            "openai",
            "--judge-model",
            "teacher-gpt",
            "--judge-base-url",
            server.base_url,
            "--judge-api-key-env",
            KEY_ENV,
            "--judge-attempts",
            "2",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["results"]
    assert [name for name in rows][1:] == ["teacher", "ours + teacher (complement)", "ours + teacher (judge)"]
    ours_row = next(iter(rows.values()))
    assert ours_row["average"]["correct"] == 3 and ours_row["NAT"]["accuracy"] == pytest.approx(200 / 3)
    assert rows["teacher"]["average"]["correct"] == 4  # p2, p4, p5, p6
    assert rows["ours + teacher (complement)"]["average"]["correct"] == 5
    # Judge: p1 (A vs none) -> A; p2 unparseable twice -> teacher's B; p3 -> C; p4 -> A; p5 -> A (wrong).
    assert rows["ours + teacher (judge)"]["average"]["correct"] == 5
    assert metrics["arbitrated"] == 5 and metrics["arbiter_fallbacks"] == 1 and "teacher-gpt" in metrics["judge"]
    decisions = read_records(out / "ensemble_decisions.jsonl")
    assert {d["question_id"]: d["decided"] for d in decisions} == {
        "p1": "A",
        "p2": "B",
        "p3": "C",
        "p4": "A",
        "p5": "A",
    }
    report = (out / "report.md").read_text()
    assert "| Method | NAT | SOC | LAN | TXT | IMG | NO | G1-6 | G7-12 | Avg |" in report
    assert (
        "| ours + teacher (complement) | 100.00 | 100.00 | 0.00 | 100.00 | 100.00 | 50.00 | 66.67 | 100.00 | 83.33 |"
        in report
    )
    assert "![p1](report_images/p1.png)" in report
    assert "average accuracy 50.00" in capsys.readouterr().out


def test_scienceqa_cli_answers_with_the_model(tmp_path, tiny_model_dir):
    data = write_scienceqa(tmp_path / "sqa")
    out = tmp_path / "out"
    code = eval_main(
        [
            "scienceqa",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--answer-first",
            "--max-new-tokens",
            "3",
            "--batch-size",
            "4",
            "--output-dir",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    predictions = read_records(out / "predictions.jsonl")
    assert sorted(p["question_id"] for p in predictions) == ["p1", "p2", "p3", "p4", "p5", "p6"]
    metrics = json.loads((out / "metrics.json").read_text())
    row = next(iter(metrics["results"].values()))
    assert metrics["variant"] == "answer first" and row["average"]["total"] == 6 and row["IMG"]["total"] == 3
    questions = read_records(out / "questions.jsonl")
    assert (
        questions[0]["text"].startswith("<image>\nWhich animal is shown?")
        and questions[0]["image"] == "images/test/p1/image.png"
    )


def test_pope_cli(tmp_path, tiny_model_dir):
    answers = [
        "Yes, there is a dog.",
        "No.",
        "There is not a cat in it.",
        "Yes",
        "No, there isn't.",
        "I don't see one.",
        "There is a bench in the picture.",
        "Yes. No other objects.",
    ]
    labels = ["yes", "yes", "yes", "no", "no", "no", "yes", "yes"]
    Image.new("RGB", (30, 30)).save(tmp_path / "img.png")
    questions = [
        {
            "question_id": i,
            "image": "img.png",
            "text": "is there a dog in the image ?",
            "label": label,
            "category": "random" if i < 4 else "adversarial",
        }
        for i, label in enumerate(labels)
    ]
    (tmp_path / "pope.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tmp_path / "answers.jsonl").write_text(
        "".join(json.dumps({"question_id": i, "text": a}) + "\n" for i, a in enumerate(answers))
    )
    out = tmp_path / "out"
    assert (
        eval_main(
            [
                "pope",
                "--questions",
                str(tmp_path / "pope.jsonl"),
                "--answers",
                str(tmp_path / "answers.jsonl"),
                "--image-root",
                str(tmp_path),
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert results["all"]["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35) and results["all"]["yes_ratio"] == 0.5
    assert results["random"]["tp"] == 1 and results["random"]["fp"] == 1  # q0 yes/yes, q3 no/yes
    assert "| all | 62.50 | 75.00 | 60.00 | 66.67 | 50.00 | 8 |" in (out / "report.md").read_text()

    out_model = tmp_path / "out_model"
    assert (
        eval_main(
            [
                "pope",
                "--questions",
                str(tmp_path / "pope.jsonl"),
                "--model",
                str(tiny_model_dir),
                "--image-root",
                str(tmp_path),
                "--limit",
                "3",
                "--max-new-tokens",
                "2",
                "--output-dir",
                str(out_model),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((out_model / "metrics.json").read_text())["results"]["all"]["count"] == 3


def test_cli_errors_are_clear(tmp_path, capsys):
    data = write_scienceqa(tmp_path / "sqa")
    (tmp_path / "partial.jsonl").write_text(json.dumps({"question_id": "p1", "text": "A"}) + "\n")
    code = eval_main(
        [
            "scienceqa",
            "--data",
            str(data),
            "--predictions",
            str(tmp_path / "partial.jsonl"),
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "no prediction for 5 question(s), e.g. ['p2', 'p3', 'p4', 'p5', 'p6']" in capsys.readouterr().err
    code = eval_main(["scienceqa", "--data", str(data), "--output-dir", str(tmp_path / "o")])
    assert code == 2 and "give --model" in capsys.readouterr().err


def test_exact_match_cli(tmp_path, tiny_model_dir):
    Image.new("RGB", (30, 30)).save(tmp_path / "img.png")
    questions = [
        {"id": "e0", "image": "img.png", "type": "color", "question": "What colour is the circle?", "answer": "red"},
        {"id": "e1", "image": "img.png", "type": "color", "question": "What colour is the square?", "answer": "blue"},
        {"id": "e2", "image": "img.png", "type": "count", "question": "How many shapes?", "answer": "two"},
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tmp_path / "vocab.json").write_text(json.dumps({"color": ["red", "blue"], "count": ["one", "two"]}))
    replies = ["It is red.", "The square is red, not blue.", "I see two."]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"question_id": q["id"], "text": r}) + "\n"
                                              for q, r in zip(questions, replies)))
    out = tmp_path / "out"
    argv = ["exact-match", "--questions", str(tmp_path / "q.jsonl"), "--image-root", str(tmp_path),
            "--vocabularies", str(tmp_path / "vocab.json"), "--output-dir"]
    assert eval_main([*argv, str(out), "--predictions", str(tmp_path / "p.jsonl")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["results"] == {"color": 0.5, "count": 1.0, "overall": pytest.approx(2 / 3)}
    assert "extracted red: wrong" in (out / "report.md").read_text()

    out_model = tmp_path / "out_model"
    assert eval_main([*argv, str(out_model), "--model", str(tiny_model_dir), "--max-new-tokens", "2",
                      "--no-progress"]) == 0
    assert json.loads((out_model / "metrics.json").read_text())["questions"] == 3
