"""Judge-based relative score (paper §5, Table 3; LLaVA-Bench style).

A text-only judge LLM sees the image only as symbols (captions + object boxes), the question, a
reference answer (written by the teacher) and the model's answer, and scores both from 1 to 10.
The reported number is mean(model score) / mean(reference score) × 100, per question type
(conversation, detail, complex) and overall. The judge is any `datagen.teachers.Teacher`
(an OpenAI-compatible endpoint or a local model); its identity is stored next to every score.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# The question types of the paper's evaluation are the response types of its data (§3), in its tables' order.
from datagen.prompting import RESPONSE_TYPES

# LLaVA-Bench files name the types "conv", "detail", "complex"; both spellings are accepted.
_TYPE_ALIASES = {"conv": "conversation", "conversation": "conversation", "detail": "detail", "complex": "complex"}

JUDGE_SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."

_SHARED_RULE = (
    "We would like your feedback on the performance of two AI assistants answering the user question "
    "shown above. The user asked the question while looking at an image. You cannot see the image: "
    "its visual content is given as five sentences describing it and the bounding boxes of the objects "
    "in it, written (x1, y1, x2, y2) with numbers from 0 to 1 for the top-left x, top-left y, "
    "bottom-right x and bottom-right y.\n"
    "{focus}\n"
    "Each assistant receives an overall score on a scale of 1 to 10, where a higher score means better "
    "overall performance.\n"
    "First output a single line containing only the two scores, for Assistant 1 and Assistant 2 "
    "respectively, separated by a space. From the next line on, explain your evaluation, avoiding any "
    "bias and making sure that the order in which the answers were presented does not affect your judgment."
)

#: Per-type judging rules: the shared instructions plus what matters for that type of question.
JUDGE_RULES: dict[str, str] = {
    "conversation": _SHARED_RULE.format(
        focus="Rate the helpfulness, relevance and accuracy of the answers: the question has a definite "
        "answer that can be checked against the image description."
    ),
    "detail": _SHARED_RULE.format(
        focus="Rate how accurately and completely each answer describes the image: reward correct detail, "
        "and penalise objects or attributes that the description and boxes do not support."
    ),
    "complex": _SHARED_RULE.format(
        focus="Rate the soundness of each answer's reasoning: it should go beyond what is visible, with "
        "steps that follow from the image content and lead to a correct, relevant conclusion."
    ),
}


class ChatJudge(Protocol):
    """What the judge needs from a teacher: `datagen.teachers.Teacher` satisfies it."""

    def complete(self, messages: list[dict[str, Any]]) -> Any:  # returns a TeacherReply (has `.text`)
        ...


def normalize_type(category: str) -> str:
    """Map a question type (`conv`/`conversation`, `detail`, `complex`) to its canonical name."""
    try:
        return _TYPE_ALIASES[category]
    except KeyError:
        raise ValueError(f"unknown question type {category!r}; expected one of {sorted(_TYPE_ALIASES)}") from None


def build_judge_messages(
    *, context: str, question: str, answer_1: str, answer_2: str, question_type: str
) -> list[dict[str, str]]:
    """The chat messages the judge sees for one pair of answers (Assistant 1 first)."""
    rule = JUDGE_RULES[normalize_type(question_type)]
    content = (
        f"[Context]\n{context}\n\n"
        f"[Question]\n{question}\n\n"
        f"[Assistant 1]\n{answer_1}\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{answer_2}\n\n[End of Assistant 2]\n\n"
        f"[System]\n{rule}\n\n"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": content}]


_NUMBER = r"(\d+(?:\.\d+)?)"
_PAIR_LINE = re.compile(rf"^\W*{_NUMBER}\s*(?:/\s*10)?\s*[,;\s]\s*{_NUMBER}\s*(?:/\s*10)?\W*$")
_LABELLED = re.compile(
    rf"Assistant\s*([12])\s*(?:\*\*)?\s*(?:score)?\s*[:=\-]?\s*(?:\*\*)?\s*{_NUMBER}", re.IGNORECASE
)
_TUPLE = re.compile(rf"\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)")


def parse_judge_scores(text: str) -> tuple[float, float] | None:
    """Read the two scores (Assistant 1, Assistant 2) from a judge reply, or `None` if there are none.

    Rules, in order (the first that yields two scores in [0, 10] wins):
    1. the first non-empty line is exactly two numbers (`8 7`, `8, 7`, `8/10 7/10`), as the prompt asks;
    2. labelled scores anywhere: `Assistant 1: 8` ... `Assistant 2: 7` (each label once);
    3. a tuple `(8, 7)` anywhere;
    4. the first later line that is exactly two numbers.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    first = _pair_from_line(lines[0])
    if first is not None:
        return first
    labelled: dict[str, float] = {}
    for label, value in _LABELLED.findall(text):
        labelled.setdefault(label, float(value))
    if len(labelled) == 2 and _valid(labelled["1"], labelled["2"]):
        return labelled["1"], labelled["2"]
    for a, b in _TUPLE.findall(text):
        if _valid(float(a), float(b)):
            return float(a), float(b)
    for line in lines[1:]:
        pair = _pair_from_line(line)
        if pair is not None:
            return pair
    return None


def _pair_from_line(line: str) -> tuple[float, float] | None:
    match = _PAIR_LINE.match(line)
    if match and _valid(float(match.group(1)), float(match.group(2))):
        return float(match.group(1)), float(match.group(2))
    return None


def _valid(a: float, b: float) -> bool:
    return 0.0 <= a <= 10.0 and 0.0 <= b <= 10.0


@dataclass
class JudgeItem:
    """One question to judge: its symbolic context, the reference answer and the model's answer."""

    question_id: str
    question_type: str
    question: str
    context: str
    reference: str
    answer: str


def judge_one(
    judge: ChatJudge,
    item: JudgeItem,
    *,
    judge_id: str,
    order: str = "reference_first",
    max_attempts: int = 3,
) -> dict[str, Any]:
    """Ask the judge to score one pair of answers; retry unparseable replies.

    `order` is `"reference_first"` (the paper's: reference = Assistant 1) or `"model_first"` (the swap).
    The returned review always carries the judge's identity and every raw reply; when no attempt
    could be parsed, `scores` is `None` and `error` says so (the item is recorded, not dropped).
    """
    if order not in ("reference_first", "model_first"):
        raise ValueError(f"order must be 'reference_first' or 'model_first', got {order!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    reference_first = order == "reference_first"
    messages = build_judge_messages(
        context=item.context,
        question=item.question,
        answer_1=item.reference if reference_first else item.answer,
        answer_2=item.answer if reference_first else item.reference,
        question_type=item.question_type,
    )
    replies: list[str] = []
    scores = None
    for _ in range(max_attempts):
        reply = judge.complete(messages)
        replies.append(reply.text)
        pair = parse_judge_scores(reply.text)
        if pair is not None:
            first, second = pair
            scores = (
                {"reference": first, "model": second} if reference_first else {"reference": second, "model": first}
            )
            break
    review: dict[str, Any] = {
        "question_id": item.question_id,
        "question_type": normalize_type(item.question_type),
        "order": order,
        "judge": judge_id,
        "scores": scores,
        "attempts": len(replies),
        "replies": replies,
    }
    if scores is None:
        review["error"] = f"unparseable judge reply after {len(replies)} attempt(s)"
    return review


def review_key(question_id: str, order: str) -> str:
    """The key of one review in the resumable reviews file."""
    return f"{question_id}::{order}"


def relative_scores(reviews: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Aggregate reviews into the paper's Table 3 numbers.

    Per question, the reference and model scores are averaged over the orders that were judged
    (one without swap, two with it), which cancels the judge's position bias. Then, per type and
    overall: `model_mean`, `reference_mean`, `relative_score` = model_mean / reference_mean × 100,
    the number of questions scored, and how many could not be scored (all their replies
    unparseable; they are left out of the means and counted here).
    """
    per_question: dict[str, dict[str, Any]] = {}
    for review in reviews:
        entry = per_question.setdefault(
            str(review["question_id"]), {"type": normalize_type(review["question_type"]), "scores": []}
        )
        if review.get("scores") is not None:
            entry["scores"].append(review["scores"])

    buckets: dict[str, dict[str, list]] = {
        name: {"model": [], "reference": [], "unscored": []} for name in (*RESPONSE_TYPES, "all")
    }
    for question_id, entry in per_question.items():
        for bucket in (buckets[entry["type"]], buckets["all"]):
            if not entry["scores"]:
                bucket["unscored"].append(question_id)
                continue
            bucket["model"].append(sum(s["model"] for s in entry["scores"]) / len(entry["scores"]))
            bucket["reference"].append(sum(s["reference"] for s in entry["scores"]) / len(entry["scores"]))

    results: dict[str, dict[str, Any]] = {}
    for name, bucket in buckets.items():
        count = len(bucket["model"])
        if count == 0 and not bucket["unscored"]:
            continue
        model_mean = sum(bucket["model"]) / count if count else None
        reference_mean = sum(bucket["reference"]) / count if count else None
        relative = model_mean / reference_mean * 100 if count and reference_mean else None
        results[name] = {
            "relative_score": relative,
            "model_mean": model_mean,
            "reference_mean": reference_mean,
            "count": count,
            "unscored": len(bucket["unscored"]),
        }
    return results


def judge_all(
    judge: ChatJudge,
    tasks: Sequence[tuple[JudgeItem, str]],
    record: Callable[[dict[str, Any]], None],
    *,
    judge_id: str,
    max_attempts: int = 3,
    concurrency: int = 4,
    progress: bool = True,
) -> None:
    """Judge every `(item, order)` with at most `concurrency` requests in flight.

    Each finished review goes to `record` (from this thread, so a file sees no interleaved
    lines) as soon as it arrives. If the judge fails for good (a `TeacherError`), the requests not
    yet started are cancelled, the reviews finished so far are already recorded, and the error is
    raised: rerunning resumes from there.
    """
    from datagen.concurrency import bounded_map

    def review(item: JudgeItem, order: str) -> dict[str, Any]:
        return judge_one(judge, item, judge_id=judge_id, order=order, max_attempts=max_attempts)

    for _, future in bounded_map(review, tasks, concurrency, total=len(tasks), desc="judging", unit="review", progress=progress):
        record(future.result())
