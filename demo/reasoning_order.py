"""Paper Table 7, answer-first vs reasoning-first, in the demo's world: a synthetic multiple-choice task about the
demo's scenes in ScienceQA's on-disk format, stage 2 on it in either answer format, and accuracy against training
steps as `llava eval scienceqa` scores it.

The task (`write_scienceqa_task`): one question per problem about a scene, with exactly one true option — the colour
of a shape, the shape in a column, the column of an object, or the number of shapes — 2 to 4 shuffled options, a
one-sentence lecture per kind of question and a solution that states the scene's fact. Training problems are about
the demo's training scenes, test problems about its held-out scenes.

The curve (`reasoning_order_curve`): stage 2 from a given model (the shared stage-1 model) on the task's train split,
converted by `processing.scienceqa.convert_split` to "The answer is B. BECAUSE: lecture solution" (answer first) or
"lecture solution The answer is B." (reasoning first), checkpointed at evenly spaced steps; each checkpoint is scored
on the test split through `evaluation.cli.main(["scienceqa", ...])` and then deleted.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
from pathlib import Path

from demo.data import DemoData
from demo.progress import Step
from demo.scenes import (
    COLORS,
    NUMBER_WORDS,
    POSITIONS,
    SHAPES,
    WHERE,
    Scene,
    read_scenes,
)
from demo.settings import EVAL_BATCH_SIZE
from processing.files import write_json

#: Generation budget for scoring: the longest reasoning-first answer of the task is about 35 SmolLM2 tokens.
MAX_NEW_TOKENS = 64
#: The counts a count question offers: the scenes hold 1 to 3 shapes, "4" is a distractor only.
COUNTS = ("1", "2", "3", "4")
MAX_CHOICES = 4

LECTURES = {
    "color": "Objects in a picture can be told apart by their shape and color.",
    "shape": "Each shape in a picture sits on the left, in the middle or on the right.",
    "position": "Where an object sits in a picture tells it apart from the others.",
    "count": "To count the shapes in a picture, count each shape once.",
}


def _listing(scene: Scene) -> str:
    names = [f"a {obj.name}" for obj in scene.objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _question(
    kind: str, scene: Scene, rng: random.Random
) -> tuple[str, str, list[str], str]:
    """(question, true answer, the options it is drawn against, solution) of one kind about `scene`."""
    if kind == "color":
        obj = rng.choice(
            [o for o in scene.objects if len(scene.objects_with_shape(o.shape)) == 1]
        )
        return (
            f"What color is the {obj.shape}?",
            obj.color,
            list(COLORS),
            f"The {obj.shape} in the image is {obj.color}.",
        )
    if kind == "shape":
        obj = rng.choice(scene.objects)
        where = WHERE[obj.position]
        return (
            f"Which shape is {where}?",
            obj.shape,
            list(SHAPES),
            f"The shape {where} is a {obj.name}.",
        )
    if kind == "position":
        obj = rng.choice(
            [
                o
                for o in scene.objects
                if sum(other.name == o.name for other in scene.objects) == 1
            ]
        )
        return (
            f"Where is the {obj.name}?",
            obj.position,
            list(POSITIONS),
            f"The {obj.name} is {WHERE[obj.position]}.",
        )
    count = len(scene.objects)
    noun = "shape" if count == 1 else "shapes"
    return (
        "How many shapes are in the image?",
        str(count),
        list(COUNTS),
        f"The image shows {_listing(scene)}: {NUMBER_WORDS[count]} {noun}.",
    )


def _kinds(scene: Scene) -> list[str]:
    """The question kinds `scene` has one true answer to: a colour question needs a shape that occurs once, a
    position question an object ("red circle") that occurs once."""
    names = [obj.name for obj in scene.objects]
    possible = {
        "color": any(
            len(scene.objects_with_shape(obj.shape)) == 1 for obj in scene.objects
        ),
        "position": any(names.count(name) == 1 for name in names),
    }
    return [kind for kind in LECTURES if possible.get(kind, True)]


def scene_problem(scene: Scene, rng: random.Random, split: str) -> dict:
    """One ScienceQA-style problem about `scene`: a kind drawn at random, the truth and 1-3 distractors, shuffled."""
    kind = rng.choice(_kinds(scene))
    question, truth, options, solution = _question(kind, scene, rng)
    distractors = [option for option in options if option != truth]
    choices = [
        truth,
        *rng.sample(
            distractors, rng.randint(1, min(MAX_CHOICES - 1, len(distractors)))
        ),
    ]
    rng.shuffle(choices)
    return {
        "question": question,
        "choices": choices,
        "answer": choices.index(truth),
        "hint": "",
        "image": "image.png",
        "task": "closed choice",
        "grade": "grade2",
        "subject": "natural science",
        "topic": "scenes",
        "category": kind,
        "skill": kind,
        "lecture": LECTURES[kind],
        "solution": solution,
        "split": split,
        "scene": scene.id,
    }


def write_scienceqa_task(
    out: Path, data: DemoData, train_problems: int, test_problems: int, seed: int
) -> Path:
    """A synthetic multiple-choice task in ScienceQA's on-disk format under `out` (cached: reused when present):
    problems.json, pid_splits.json ("train" and "test"), images/<split>/<pid>/image.png — train problems from the
    demo's training scenes (read with demo.scenes.read_scenes(data.root / "train")), test problems from its held-out
    scenes (data.root / "eval"). Returns `out`.

    Problems go through the scenes in order, one per scene, round again when there are more problems than scenes.
    """
    out = Path(out)
    problems_path, splits_path = out / "problems.json", out / "pid_splits.json"
    if problems_path.is_file() and splits_path.is_file():
        splits = json.loads(splits_path.read_text())
        found = {split: len(splits.get(split, [])) for split in ("train", "test")}
        if found != {"train": train_problems, "test": test_problems}:
            raise ValueError(
                f"{out} holds a task with {found['train']} train and {found['test']} test problems, not "
                f"{train_problems} and {test_problems}; use another folder"
            )
        return out
    rng = random.Random(seed)
    problems: dict[str, dict] = {}
    splits: dict[str, list[str]] = {}
    for split, folder, count in (
        ("train", "train", train_problems),
        ("test", "eval", test_problems),
    ):
        scenes = read_scenes(data.root / folder)
        splits[split] = []
        for index in range(count):
            scene = scenes[index % len(scenes)]
            pid = str(len(problems) + 1)
            problems[pid] = scene_problem(scene, rng, split)
            image = out / "images" / split / pid / "image.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data.root / folder / "images" / f"{scene.id}.png", image)
            splits[split].append(pid)
    write_json(splits_path, splits)
    # last: its presence means the task is complete
    write_json(problems_path, problems, indent=1)
    return out


def score_checkpoint(
    model_dir: Path, task_dir: Path, out: Path, answer_first: bool
) -> dict:
    """`llava eval scienceqa` on the test split with the model in `model_dir`; its metrics.json, read back."""
    from evaluation.cli import main as eval_main

    argv = [
        "scienceqa",
        "--data",
        str(task_dir),
        "--split",
        "test",
        "--model",
        str(model_dir),
        "--output-dir",
        str(out),
        "--no-progress",
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        "--batch-size",
        str(EVAL_BATCH_SIZE),
    ]
    # The CLI's own summary line stays off the console (the curve logs one line per checkpoint); errors go to stderr.
    with contextlib.redirect_stdout(io.StringIO()):
        code = eval_main(argv + (["--answer-first"] if answer_first else []))
    if code != 0:
        raise RuntimeError(
            f"llava eval scienceqa failed (exit status {code}) on {model_dir}; see the message above"
        )
    return json.loads((out / "metrics.json").read_text())


def reasoning_order_curve(
    out: Path,
    task_dir: Path,
    start_model: Path,
    data,
    *,
    answer_first: bool,
    steps: int,
    checkpoints: int,
    seed: int,
    log: Step,
) -> list[dict]:
    """Stage 2 from `start_model` on the task's train split in the answer-first ("The answer is B. BECAUSE: ...")
    or reasoning-first ("<lecture> <solution> The answer is B.") format, `steps` optimiser steps, scored with
    `llava eval scienceqa` on the test split at `checkpoints` evenly spaced steps (the last = `steps`).
    Returns (and caches in out/curve.json) [{"step": k, "accuracy": average %, "unanswered": n}, ...]
    (each point also holds "correct" and "total", for an interval).

    Resumable: a scored step keeps its metrics in out/eval/step-<k>/, so an interrupted run retrains only when a
    checkpoint it still needs is gone.
    """
    out = Path(out)
    curve_path = out / "curve.json"
    if curve_path.is_file():
        return json.loads(curve_path.read_text())
    if checkpoints < 1 or steps % checkpoints:
        raise ValueError(
            f"steps ({steps}) must be a positive multiple of checkpoints ({checkpoints}), so that the "
            "checkpoints are evenly spaced and the last is at the final step"
        )
    every = steps // checkpoints
    scored_steps = [every * k for k in range(1, checkpoints + 1)]
    variant = "answer first" if answer_first else "reasoning first"
    train_dir, eval_dir = out / "train", out / "eval"

    def scored(step: int) -> bool:
        return (eval_dir / f"step-{step}" / "metrics.json").is_file()

    def checkpoint(step: int) -> Path:
        return train_dir / f"checkpoint-{step}"

    if not all(scored(step) or checkpoint(step).is_dir() for step in scored_steps):
        _train(out, train_dir, task_dir, start_model, data, answer_first, steps, every, seed, log, variant)
    curve = []
    for step in scored_steps:
        if not scored(step):
            score_checkpoint(checkpoint(step), task_dir, eval_dir / f"step-{step}", answer_first)
            # ~0.5 GB each; the scores stay in eval/step-<k>/
            shutil.rmtree(checkpoint(step))
        curve.append(_curve_point(eval_dir / f"step-{step}", step, steps, variant, log))
    write_json(curve_path, curve)
    return curve


def _curve_point(scores_dir: Path, step: int, steps: int, variant: str, log: Step) -> dict:
    """One point of the curve, read back from `llava eval scienceqa`'s metrics.json of that step."""
    metrics = json.loads((scores_dir / "metrics.json").read_text())
    average = next(iter(metrics["results"].values()))["average"]
    log(f"ScienceQA-style task, {variant}, step {step}/{steps}: accuracy {average['accuracy']:.1f}% "
        f"({average['correct']}/{average['total']}, {metrics['unanswered']} unanswered)")
    return {"step": step, "accuracy": average["accuracy"], "unanswered": metrics["unanswered"],
            "correct": average["correct"], "total": average["total"]}


def _train(
    out: Path,
    train_dir: Path,
    task_dir: Path,
    start_model: Path,
    data,
    answer_first: bool,
    steps: int,
    every: int,
    seed: int,
    log: Step,
    variant: str,
) -> None:
    from demo.main import train_stage
    from processing.scienceqa import convert_split

    data_path = (
        out / f"train_{'answer_first' if answer_first else 'reasoning_first'}.json"
    )
    write_json(
        data_path, convert_split(task_dir, "train", answer_first=answer_first), indent=1
    )
    # a finished run whose checkpoints are gone: train again
    (train_dir / "losses.json").unlink(missing_ok=True)
    overrides = {
        "max_steps": steps,
        "save_strategy": "steps",
        "save_steps": every,
        # Model, processor and remote code only (each loads with trust_remote_code); no optimizer state to resume.
        "save_only_model": True,
        # convert_split's image paths are relative to the task folder
        "image_root": str(task_dir),
    }
    train_stage(
        2,
        start_model,
        data,
        train_dir,
        {"stage2_epochs": 1},
        seed,
        log,
        data_path=data_path,
        overrides=overrides,
        name=f"stage 2, ScienceQA-style task, {variant}",
    )
