"""Fixtures for the evaluation tests: a tiny ScienceQA folder in the dataset's exact layout, and a
scripted stand-in for a judge/teacher (for unit tests of the scoring logic only; the end-to-end
judge tests go through the real Teacher and the loopback chat server)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


def _problem(question, choices, answer, hint, image, subject, grade, lecture="", solution=""):
    return {
        "question": question,
        "choices": choices,
        "answer": answer,
        "hint": hint,
        "image": image,
        "task": "closed choice",
        "grade": grade,
        "subject": subject,
        "topic": "fixture",
        "category": "fixture",
        "skill": "fixture",
        "lecture": lecture,
        "solution": solution,
        "split": "test",
    }


# Six test problems chosen so that every Table 6 category is exercised (see test_evaluation_scoring).
SCIENCEQA_TEST_PROBLEMS: dict[str, dict[str, Any]] = {
    # NAT, IMG, G1-6
    "p1": _problem("Which animal is shown?", ["cat", "dog"], 0, "", "image.png", "natural science", "grade2",
                   lecture="Animals have features.", solution="The picture shows a cat."),
    # SOC, TXT, G7-12
    "p2": _problem("Which city is the capital?", ["Paris", "Rome", "Oslo"], 1, "The map shows Italy.", None,
                   "social science", "grade8", lecture="Capitals are cities.", solution="Rome is Italy's capital."),
    # LAN, NO, G1-6
    "p3": _problem("Which word rhymes with cat?", ["dog", "sun", "hat", "pen"], 2, "", None,
                   "language science", "grade5", lecture="", solution="Hat rhymes with cat."),
    # NAT, TXT, IMG, G7-12
    "p4": _problem("Which force moves the ball?", ["push", "pull"], 0, "A boy kicks a ball.", "image.png",
                   "natural science", "grade10", lecture="Forces push or pull.", solution="A kick is a push."),
    # SOC, IMG, G1-6
    "p5": _problem("Which state is highlighted?", ["Ohio", "Utah"], 1, "", "image.png", "social science", "grade3"),
    # NAT, NO, G7-12
    "p6": _problem("Which is a metal?", ["wood", "glass", "clay", "iron", "wool"], 3, "", None,
                   "natural science", "grade12", lecture="Metals conduct.", solution="Iron is a metal."),
}

SCIENCEQA_TRAIN_PROBLEMS: dict[str, dict[str, Any]] = {
    "t1": {**_problem("Which is hot?", ["ice", "fire"], 1, "", "image.png", "natural science", "grade1",
                      lecture="Heat.", solution="Fire is hot."), "split": "train"},
}


def write_scienceqa(root: Path) -> Path:
    """Write `problems.json`, `pid_splits.json` and `images/<split>/<pid>/image.png` under `root`."""
    problems = {**SCIENCEQA_TEST_PROBLEMS, **SCIENCEQA_TRAIN_PROBLEMS}
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems, indent=1))
    splits = {"train": list(SCIENCEQA_TRAIN_PROBLEMS), "val": [], "test": list(SCIENCEQA_TEST_PROBLEMS)}
    (root / "pid_splits.json").write_text(json.dumps(splits))
    for pid, problem in problems.items():
        if problem["image"]:
            folder = root / "images" / problem["split"] / pid
            folder.mkdir(parents=True, exist_ok=True)
            colour = (40 * len(pid), 200, 10 * int(pid[1:]))
            Image.new("RGB", (40, 30), colour).save(folder / problem["image"])
    return root


@dataclass
class ScriptedReply:
    text: str
    finish_reason: str = "stop"
    usage: dict = field(default_factory=dict)


class ScriptedJudge:
    """Answers each call with the next scripted text chosen by a function of the messages."""

    def __init__(self, respond):
        self.respond = respond
        self.calls: list[list[dict[str, Any]]] = []

    def complete(self, messages):
        self.calls.append(messages)
        return ScriptedReply(self.respond(messages, len(self.calls)))
