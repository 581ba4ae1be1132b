"""ScienceQA scoring (paper §5, Tables 6 and 7): answer extraction, accuracy per category in the
paper's layout, and the two ways of ensembling with a teacher's predictions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from evaluation.judge import ChatJudge
from processing.scienceqa import CATEGORIES, OPTION_LETTERS, format_question, problem_categories

_PREFIX = re.compile(r"^\(?([A-Z])\)?\.(?:\s|$)")
_THE_ANSWER_IS = re.compile(r"[Tt]he answer is:?\s*\(?([A-Z])\)?(?![A-Za-z])")


def extract_option_letter(text: str | None, num_choices: int) -> str | None:
    """The option letter a prediction chooses, or `None` when it chooses none.

    Rules, in order: the text (or its first line) is a bare letter (`"B"`); the text starts with `"B."`;
    the text says "The answer is B" (anywhere; the reasoning-first format puts it last). A letter
    beyond the question's choices, "The answer is" followed by two different letters, or none of
    the rules matching is a failure (`None`); failures count as wrong, never as a random guess.
    """
    if not text:
        return None
    valid = OPTION_LETTERS[:num_choices]
    stripped = text.strip()
    first_line = stripped.splitlines()[0].strip()
    if len(first_line) == 1:  # "B", or "B" alone on the first line (LLaVA's scorer reads "B\n..." as "B. ...")
        return first_line if first_line in valid else None
    match = _PREFIX.match(stripped)
    if match:
        return match.group(1) if match.group(1) in valid else None
    letters = set(_THE_ANSWER_IS.findall(stripped))
    if len(letters) == 1:
        letter = letters.pop()
        return letter if letter in valid else None
    return None


def accuracy_by_category(
    problems: Mapping[str, dict[str, Any]], predictions: Mapping[str, str | None]
) -> dict[str, dict[str, Any]]:
    """Accuracy (%) for NAT, SOC, LAN, TXT, IMG, NO, G1-6, G7-12 and the average over all problems.

    `predictions` maps every problem id to its extracted letter (`None` = no answer, counted wrong).
    Each entry holds `accuracy` (None for an empty category), `correct` and `total`.

    Raises:
        ValueError: when a problem has no prediction (a missing prediction is a bug upstream,
            not a wrong answer to hide in the average).
    """
    missing = [pid for pid in problems if pid not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} ScienceQA problem(s) have no prediction, e.g. {missing[:5]}")
    counts = {name: [0, 0] for name in (*CATEGORIES, "average")}
    for pid, problem in problems.items():
        correct = predictions[pid] == OPTION_LETTERS[problem["answer"]]
        for name in (*problem_categories(pid, problem), "average"):
            counts[name][0] += int(correct)
            counts[name][1] += 1
    return {
        name: {"accuracy": 100.0 * right / total if total else None, "correct": right, "total": total}
        for name, (right, total) in counts.items()
    }


def format_table(rows: Mapping[str, Mapping[str, dict[str, Any]]]) -> str:
    """A Markdown table in the paper's Table 6 layout: one row per method, accuracies to 2 decimals."""
    header = ["Method", *CATEGORIES, "Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method, results in rows.items():
        cells = [_percent(results[name]["accuracy"]) for name in (*CATEGORIES, "average")]
        lines.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def ensemble_complement(ours: Mapping[str, str | None], teacher: Mapping[str, str | None]) -> dict[str, str | None]:
    """The teacher's answer where it gives one, ours where it gives none (or has no prediction)."""
    return {pid: teacher.get(pid) or ours[pid] for pid in ours}


ARBITER_SYSTEM_PROMPT = "You are a careful science teacher who checks answers to multiple-choice questions."


def build_arbiter_messages(problem: dict[str, Any], answer_1: str, answer_2: str) -> list[dict[str, str]]:
    """The messages that ask the teacher to decide between two answers to one problem."""
    content = (
        f"{format_question(problem)}\n\n"
        f"Two assistants answered this question differently.\n\n"
        f"[Assistant 1]\n{answer_1}\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{answer_2}\n[End of Assistant 2]\n\n"
        "Decide which option is correct, using the question, the context and both answers. "
        'Explain briefly, then end with exactly one sentence of the form "The answer is X." where X '
        "is the letter of the correct option."
    )
    return [{"role": "system", "content": ARBITER_SYSTEM_PROMPT}, {"role": "user", "content": content}]


def ensemble_judge(
    problems: Mapping[str, dict[str, Any]],
    ours: Mapping[str, str | None],
    teacher: Mapping[str, str | None],
    our_texts: Mapping[str, str],
    teacher_texts: Mapping[str, str],
    arbiter: ChatJudge,
    *,
    judge_id: str,
    max_attempts: int = 3,
) -> tuple[dict[str, str | None], list[dict[str, Any]]]:
    """The paper's "judge" scheme: where the two agree, keep the answer; where they disagree (one of
    them may have given no answer), the teacher sees the question and both full answers and decides.

    An arbitration reply with no extractable letter is retried; if none can be read, the
    complement rule decides that problem and the decision is recorded as `fallback`.
    Returns the final letters and one decision record per arbitrated problem (with the judge's identity).
    """
    final: dict[str, str | None] = {}
    decisions: list[dict[str, Any]] = []
    for pid, problem in problems.items():
        mine, theirs = ours[pid], teacher.get(pid)
        if mine == theirs:
            final[pid] = mine
            continue
        messages = build_arbiter_messages(problem, our_texts[pid], teacher_texts.get(pid, ""))
        replies, decided = [], None
        for _ in range(max_attempts):
            reply = arbiter.complete(messages)
            replies.append(reply.text)
            decided = extract_option_letter(reply.text, len(problem["choices"]))
            if decided is not None:
                break
        fallback = decided is None
        final[pid] = (theirs or mine) if fallback else decided
        decisions.append(
            {
                "question_id": pid,
                "ours": mine,
                "teacher": theirs,
                "decided": final[pid],
                "fallback": fallback,
                "judge": judge_id,
                "replies": replies,
            }
        )
    return final, decisions
