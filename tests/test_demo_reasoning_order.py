"""The Table 7 answer-first / reasoning-first ablation (`demo.reasoning_order`): the synthetic task is valid
ScienceQA data whose every answer is true of its scene (checked against scenes.json and the scene images, not
through the generator), and a tiny end-to-end curve trains, checkpoints, scores through `llava eval scienceqa` and
caches."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from demo.data import DemoData
from demo.progress import Step
from demo.reasoning_order import (
    reasoning_order_curve,
    scene_problem,
    write_scienceqa_task,
)
from demo.scenes import Scene, SceneObject, write_scenes
from processing.scienceqa import OPTION_LETTERS, convert_split, load_scienceqa

TRAIN_SCENES, EVAL_SCENES = 20, 8


def demo_data(root: Path) -> DemoData:
    """Just the scenes of a demo data folder (all `write_scienceqa_task` reads)."""
    write_scenes(root / "train", TRAIN_SCENES, seed=0, image_size=48, prefix="train")
    write_scenes(root / "eval", EVAL_SCENES, seed=1, image_size=48, prefix="eval")
    return DemoData(
        root,
        root / "stage1.json",
        root / "stage2.json",
        root / "eval_questions.jsonl",
        root,
    )


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reasoning_order")
    data = demo_data(root / "data")
    # more train problems than train scenes: the scenes are gone through again
    return write_scienceqa_task(
        root / "task", data, train_problems=50, test_problems=12, seed=0
    ), data.root


def truth_from_scene(question: str, objects: list[dict]) -> str:
    """The one true answer to a question, read off the scene's raw objects (scenes.json)."""
    where = {"on the left": "left", "in the middle": "middle", "on the right": "right"}
    if match := re.fullmatch(r"What color is the (\w+)\?", question):
        (obj,) = [
            o for o in objects if o["shape"] == match[1]
        ]  # exactly one object of that shape
        return obj["color"]
    if match := re.fullmatch(r"Which shape is (.+)\?", question):
        (obj,) = [o for o in objects if o["position"] == where[match[1]]]
        return obj["shape"]
    if match := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
        (obj,) = [
            o for o in objects if (o["color"], o["shape"]) == (match[1], match[2])
        ]
        return obj["position"]
    assert question == "How many shapes are in the image?", question
    return str(len(objects))


@pytest.mark.parametrize(
    ("split", "folder", "count"), [("train", "train", 50), ("test", "eval", 12)]
)
def test_every_problem_is_valid_scienceqa_and_true_of_its_scene(
    task, split, folder, count
):
    task_dir, data_root = task
    problems = load_scienceqa(
        task_dir, split
    )  # checks fields, choices, answer index, subject and grade
    assert len(problems) == count
    # the scene a problem is about, found from its image's bytes (not from the generator's own fields)
    scenes = {
        scene["id"]: scene["objects"]
        for scene in json.loads((data_root / folder / "scenes.json").read_text())
    }
    scene_of_image = {
        (data_root / folder / "images" / f"{sid}.png").read_bytes(): sid
        for sid in scenes
    }
    kinds, letters = set(), set()
    for pid, problem in problems.items():
        image = task_dir / "images" / split / pid / "image.png"
        objects = scenes[scene_of_image[image.read_bytes()]]
        choices = problem["choices"]
        assert 2 <= len(choices) <= 4 and len(set(choices)) == len(choices)
        assert choices[problem["answer"]] == truth_from_scene(
            problem["question"], objects
        )
        assert (
            problem["subject"],
            problem["grade"],
            problem["hint"],
            problem["image"],
        ) == (
            "natural science",
            "grade2",
            "",
            "image.png",
        )
        assert problem["lecture"] and problem["solution"]
        kinds.add(problem["question"].split()[0])
        letters.add(OPTION_LETTERS[problem["answer"]])
    assert kinds == {"What", "Which", "Where", "How"}  # every kind of question occurs
    assert len(letters) > 1  # choices are shuffled: the answer is not always A


def test_both_answer_formats_convert(task):
    task_dir, _ = task
    problems = load_scienceqa(task_dir, "train")
    reasoning_first = convert_split(task_dir, "train", answer_first=False)
    answer_first = convert_split(task_dir, "train", answer_first=True)
    for first, last in zip(answer_first, reasoning_first):
        problem = problems[first["id"]]
        answer = f"The answer is {OPTION_LETTERS[problem['answer']]}."
        reasoning = f"{problem['lecture']} {problem['solution']}"
        assert last["conversations"][1]["value"] == f"{reasoning} {answer}"
        assert first["conversations"][1]["value"] == f"{answer} BECAUSE: {reasoning}"
        assert first["conversations"][0] == last["conversations"][0]  # the same prompt
        assert first["image"] == f"images/train/{first['id']}/image.png"
        # short enough for a 64-token answer budget (about 4 characters a token)
        assert len(last["conversations"][1]["value"]) < 200


def test_the_task_is_reused_and_a_different_size_is_refused(task):
    task_dir, data_root = task
    data = DemoData(
        data_root,
        data_root / "stage1.json",
        data_root / "stage2.json",
        data_root / "q.jsonl",
        data_root,
    )
    before = (task_dir / "problems.json").stat().st_mtime_ns
    assert write_scienceqa_task(task_dir, data, 50, 12, seed=0) == task_dir
    assert (task_dir / "problems.json").stat().st_mtime_ns == before
    with pytest.raises(
        ValueError, match="50 train and 12 test problems, not 40 and 12"
    ):
        write_scienceqa_task(task_dir, data, 40, 12, seed=0)


def test_the_same_seed_writes_the_same_task(tmp_path):
    data = demo_data(tmp_path / "data")
    one = write_scienceqa_task(tmp_path / "one", data, 10, 4, seed=3)
    two = write_scienceqa_task(tmp_path / "two", data, 10, 4, seed=3)
    other = write_scienceqa_task(tmp_path / "other", data, 10, 4, seed=4)
    assert (one / "problems.json").read_text() == (two / "problems.json").read_text()
    assert (one / "problems.json").read_text() != (other / "problems.json").read_text()


def test_a_scene_with_two_identical_objects_gets_only_questions_with_one_true_answer():
    """Two red circles: "What color is the circle?" and "Where is the red circle?" have no single answer; the
    blue square's colour and position do."""
    box = (0.0, 0.0, 0.1, 0.1)
    objects = [SceneObject("circle", "red", "left", box), SceneObject("circle", "red", "middle", box),
               SceneObject("square", "blue", "right", box)]  # fmt: skip
    asked = set()
    for seed in range(60):
        problem = scene_problem(Scene("s", objects), random.Random(seed), "test")
        truth = truth_from_scene(
            problem["question"], [vars(obj) for obj in objects]
        )  # raises when ambiguous
        assert problem["choices"][problem["answer"]] == truth
        asked.add(problem["question"])
    assert {"What color is the square?", "Where is the blue square?"} <= asked
    assert not {"What color is the circle?", "Where is the red circle?"} & asked
    only_circles = Scene(
        "c", objects[:2]
    )  # nothing but the two red circles: only shape and count are asked
    kinds = {
        scene_problem(only_circles, random.Random(seed), "test")["category"]
        for seed in range(20)
    }
    assert kinds == {"shape", "count"}


def test_steps_must_be_a_multiple_of_checkpoints(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"steps \(10\) must be a positive multiple of checkpoints \(3\)",
    ):
        reasoning_order_curve(
            tmp_path,
            tmp_path,
            tmp_path,
            None,
            answer_first=False,
            steps=10,
            checkpoints=3,
            seed=0,
            log=print,
        )


def test_a_tiny_curve_trains_scores_every_checkpoint_and_is_cached(
    tmp_path, monkeypatch
):
    """The real path (demo.main.train_stage with the shipped stage-2 config, `llava eval scienceqa`) with the tiny
    random model of the training tests: two checkpoints, both scored and then deleted; a rerun trains nothing."""
    from training_fixtures import save_tiny_model

    import demo.main

    data = demo_data(tmp_path / "data")
    task_dir = write_scienceqa_task(
        tmp_path / "task", data, train_problems=8, test_problems=4, seed=0
    )
    start = save_tiny_model(tmp_path / "start")
    monkeypatch.setattr(
        "demo.reasoning_order.MAX_NEW_TOKENS", 8
    )  # a random model never stops by itself
    out = tmp_path / "answer_first"
    curve = reasoning_order_curve(
        out,
        task_dir,
        start,
        data,
        answer_first=True,
        steps=2,
        checkpoints=2,
        seed=0,
        log=Step(0.0),
    )
    assert [point["step"] for point in curve] == [1, 2]
    for point in curve:
        metrics = json.loads(
            (out / "eval" / f"step-{point['step']}" / "metrics.json").read_text()
        )
        (row,) = metrics["results"].values()
        assert metrics["variant"] == "answer first" and metrics["split"] == "test"
        assert point["accuracy"] == row["average"]["accuracy"] and point["total"] == 4
        assert point["unanswered"] == metrics["unanswered"]
        assert not (
            out / "train" / f"checkpoint-{point['step']}"
        ).exists()  # scored, then deleted
    log_history = json.loads((out / "train" / "log_history.json").read_text())
    assert max(entry["step"] for entry in log_history) == 2
    assert json.loads((out / "curve.json").read_text()) == curve

    def no_training(*args, **kwargs):
        raise AssertionError("a cached curve must not train")

    monkeypatch.setattr(demo.main, "train_stage", no_training)
    rerun = {
        "answer_first": True,
        "steps": 2,
        "checkpoints": 2,
        "seed": 0,
        "log": Step(0.0),
    }
    assert reasoning_order_curve(out, task_dir, start, data, **rerun) == curve
    # interrupted after scoring, before the curve was written: the scores are read back, nothing is retrained
    (out / "curve.json").unlink()
    assert reasoning_order_curve(out, task_dir, start, data, **rerun) == curve
