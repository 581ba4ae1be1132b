"""ScienceQA folder -> LLaVA JSON records (processing/scienceqa.py), on fixture files in the
dataset's exact layout."""

from __future__ import annotations

import json

import pytest

from evaluation_fixtures import write_scienceqa
from processing.scienceqa import convert_split, load_scienceqa


def test_convert_split_reasoning_first(tmp_path):
    root = write_scienceqa(tmp_path / "sqa")
    records = convert_split(root, "test")
    assert [r["id"] for r in records] == ["p1", "p2", "p3", "p4", "p5", "p6"]  # pid_splits order
    p4 = records[3]
    assert p4["image"] == "images/test/p4/image.png" and (root / p4["image"]).is_file()
    assert p4["conversations"] == [
        {
            "from": "human",
            "value": "<image>\nWhich force moves the ball?\nContext: A boy kicks a ball.\nOptions:\nA. push\nB. pull",
        },
        {"from": "gpt", "value": "Forces push or pull. A kick is a push. The answer is A."},
    ]
    assert p4["scienceqa"] == {
        "answer": "A",
        "num_choices": 2,
        "subject": "natural science",
        "grade": "grade10",
        "categories": ["NAT", "TXT", "IMG", "G7-12"],
    }
    p3 = records[2]  # no image, no context, no lecture
    assert "image" not in p3
    assert p3["conversations"][0]["value"] == (
        "Which word rhymes with cat?\nContext: N/A\nOptions:\nA. dog\nB. sun\nC. hat\nD. pen"
    )
    assert p3["conversations"][1]["value"] == "Hat rhymes with cat. The answer is C."
    assert records[4]["conversations"][1]["value"] == "The answer is B."  # no lecture nor solution


def test_convert_split_answer_first_and_train_split(tmp_path):
    root = write_scienceqa(tmp_path / "sqa")
    p1 = convert_split(root, "test", answer_first=True)[0]
    assert (
        p1["conversations"][1]["value"] == "The answer is A. BECAUSE: Animals have features. The picture shows a cat."
    )
    train = convert_split(root, "train")
    assert [r["id"] for r in train] == ["t1"] and train[0]["image"] == "images/train/t1/image.png"


def test_conversion_errors_name_the_problem(tmp_path):
    root = write_scienceqa(tmp_path / "sqa")
    (root / "images/test/p5/image.png").unlink()
    with pytest.raises(FileNotFoundError, match="problem p5: image .*images/test/p5/image.png not found"):
        convert_split(root, "test")
    with pytest.raises(ValueError, match="no split 'minitest'"):
        load_scienceqa(root, "minitest")
    splits = json.loads((root / "pid_splits.json").read_text())
    splits["test"].append("p404")
    (root / "pid_splits.json").write_text(json.dumps(splits))
    with pytest.raises(ValueError, match="lists problem p404, which is not in problems.json"):
        load_scienceqa(root, "test")
    problems = json.loads((root / "problems.json").read_text())
    problems["p2"]["answer"] = 3
    splits["test"].remove("p404")
    (root / "pid_splits.json").write_text(json.dumps(splits))
    (root / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(ValueError, match="problem p2 has answer 3; expected an index below 3"):
        load_scienceqa(root, "test")
