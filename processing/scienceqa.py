"""ScienceQA (Lu et al. 2022) in the LLaVA JSON format, for fine-tuning and evaluation (paper §4.2, §5).

Input: the dataset's own layout in one folder:

    problems.json                  {pid: {"question", "choices", "answer" (index), "hint", "image"
                                          ("image.png" or null), "subject", "grade", "lecture",
                                          "solution", ...}}
    pid_splits.json                {"train": [pid, ...], "val": [...], "test": [...], ...}
    images/<split>/<pid>/image.png

Output: one record per problem, `{"id", "image"?, "conversations": [human, gpt], "scienceqa": {...}}`:
the human turn is the question, its context and the options ("A. ..."); the gpt turn is the
lecture and solution followed by "The answer is X." (reasoning first, the paper's best) or the
answer first. The `scienceqa` field keeps what scoring needs: the answer letter, the number of
choices and the paper's Table 6 categories.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

#: Option letters; ScienceQA questions have 2 to 5 choices.
OPTION_LETTERS = string.ascii_uppercase

#: Table 6 columns, in the paper's order.
CATEGORIES: tuple[str, ...] = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")

SUBJECT_CATEGORIES = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
_GRADE_CATEGORIES = {f"grade{n}": "G1-6" for n in range(1, 7)} | {f"grade{n}": "G7-12" for n in range(7, 13)}

_REQUIRED_FIELDS = ("question", "choices", "answer", "hint", "image", "subject", "grade")


def problem_categories(pid: str, problem: dict[str, Any]) -> list[str]:
    """The Table 6 categories one problem counts in.

    As in ScienceQA's own `evaluate_acc.py`: the subject gives NAT/SOC/LAN; TXT means a non-empty
    text context (`hint`), IMG means an image, NO means neither — a problem with both a text
    context and an image counts in TXT *and* IMG; the grade gives G1-6 or G7-12.
    """
    subject = SUBJECT_CATEGORIES.get(problem["subject"])
    if subject is None:
        raise ValueError(
            f"problem {pid}: unknown subject {problem['subject']!r}; expected one of {sorted(SUBJECT_CATEGORIES)}"
        )
    grade = _GRADE_CATEGORIES.get(problem["grade"])
    if grade is None:
        raise ValueError(f"problem {pid}: unknown grade {problem['grade']!r}; expected grade1 ... grade12")
    has_text = bool(problem.get("hint"))
    has_image = bool(problem.get("image"))
    categories = [subject]
    if has_text:
        categories.append("TXT")
    if has_image:
        categories.append("IMG")
    if not has_text and not has_image:
        categories.append("NO")
    categories.append(grade)
    return categories


def load_scienceqa(data_dir: str | os.PathLike, split: str) -> dict[str, dict[str, Any]]:
    """Load the problems of one split, in the order `pid_splits.json` lists them, checking each.

    Raises:
        FileNotFoundError / ValueError: naming the file, split or problem id at fault.
    """
    data_dir = Path(data_dir)
    problems_path, splits_path = data_dir / "problems.json", data_dir / "pid_splits.json"
    for path in (problems_path, splits_path):
        if not path.is_file():
            raise FileNotFoundError(f"ScienceQA folder {data_dir}: missing {path.name}")
    problems = json.loads(problems_path.read_text(encoding="utf-8"))
    splits = json.loads(splits_path.read_text(encoding="utf-8"))
    if split not in splits:
        raise ValueError(f"{splits_path}: no split {split!r}; found {sorted(splits)}")
    selected: dict[str, dict[str, Any]] = {}
    for pid in splits[split]:
        pid = str(pid)
        if pid not in problems:
            raise ValueError(
                f"{splits_path}: split {split!r} lists problem {pid}, which is not in {problems_path.name}"
            )
        problem = problems[pid]
        missing = [field for field in _REQUIRED_FIELDS if field not in problem]
        if missing:
            raise ValueError(f"{problems_path}: problem {pid} lacks field(s) {missing}")
        choices = problem["choices"]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(OPTION_LETTERS):
            raise ValueError(
                f"{problems_path}: problem {pid} has {choices!r} as choices; expected a list of 2 or more"
            )
        if not isinstance(problem["answer"], int) or not 0 <= problem["answer"] < len(choices):
            raise ValueError(
                f"{problems_path}: problem {pid} has answer {problem['answer']!r}; expected an index below {len(choices)}"
            )
        problem_categories(pid, problem)  # validates subject and grade
        selected[pid] = problem
    return selected


def image_path(split: str, pid: str, problem: dict[str, Any]) -> str | None:
    """The problem's image path relative to the data folder (`images/<split>/<pid>/image.png`), if any."""
    if not problem.get("image"):
        return None
    return f"images/{split}/{pid}/{problem['image']}"


def format_question(problem: dict[str, Any]) -> str:
    """The human turn without the image token: question, context and lettered options."""
    context = (problem.get("hint") or "").strip() or "N/A"
    options = "\n".join(f"{OPTION_LETTERS[i]}. {choice}" for i, choice in enumerate(problem["choices"]))
    return f"{problem['question'].strip()}\nContext: {context}\nOptions:\n{options}"


def format_answer(problem: dict[str, Any], answer_first: bool = False) -> str:
    """The gpt turn: reasoning (lecture + solution) then "The answer is X.", or the answer first."""
    letter = OPTION_LETTERS[problem["answer"]]
    reasoning = " ".join(
        part.strip() for part in (problem.get("lecture") or "", problem.get("solution") or "") if part.strip()
    )
    answer = f"The answer is {letter}."
    if not reasoning:
        return answer
    return f"{answer} BECAUSE: {reasoning}" if answer_first else f"{reasoning} {answer}"


def to_llava_record(pid: str, problem: dict[str, Any], split: str, answer_first: bool = False) -> dict[str, Any]:
    """One problem as a LLaVA JSON record (image path relative to the ScienceQA folder)."""
    question = format_question(problem)
    record: dict[str, Any] = {"id": pid}
    path = image_path(split, pid, problem)
    if path is not None:
        record["image"] = path
        question = f"<image>\n{question}"
    record["conversations"] = [
        {"from": "human", "value": question},
        {"from": "gpt", "value": format_answer(problem, answer_first)},
    ]
    record["scienceqa"] = {
        "answer": OPTION_LETTERS[problem["answer"]],
        "num_choices": len(problem["choices"]),
        "subject": problem["subject"],
        "grade": problem["grade"],
        "categories": problem_categories(pid, problem),
    }
    return record


def convert_split(
    data_dir: str | os.PathLike, split: str, answer_first: bool = False, check_images: bool = True
) -> list[dict[str, Any]]:
    """Convert one split to LLaVA records; with `check_images`, every referenced image must exist."""
    records = []
    for pid, problem in load_scienceqa(data_dir, split).items():
        record = to_llava_record(pid, problem, split, answer_first)
        if check_images and "image" in record and not (Path(data_dir) / record["image"]).is_file():
            raise FileNotFoundError(f"ScienceQA problem {pid}: image {Path(data_dir) / record['image']} not found")
        records.append(record)
    return records
