"""A judge that knows the scene's truth: the role GPT-4 plays in the paper's §5.1, for the demo's synthetic scenes.

The paper's judge is a text-only LLM that sees the image as captions and boxes and scores two answers 1-10.
Offline there is no such LLM, and the demo's scenes have an exact truth, so this judge reads that truth from the
same context the LLM would get (the boxes, `datagen.prompting.format_context`: `red circle: [x1, y1, x2, y2]`) and
scores each answer by the facts it states. It speaks the judge's interface (`evaluation.judge.ChatJudge`:
`complete(messages)` returns a reply with `.text`, two scores on the first line), so `evaluation.judge.judge_all`
and `relative_scores` turn its reviews into the paper's relative score exactly as for an LLM judge.

The scoring rule (deterministic, order-independent):
- the facts an answer states are the objects it names with a colour (`a red circle`, `the circle on the left is
  red`, `it is a circle, and its color is red` within one sentence), the number of shapes it gives (the first
  number word), and for a yes/no question its first word;
- the scene's facts are, for a description, every object and the count; for a question about the leftmost shape,
  that object; for "do all the shapes have the same color?", every object and the yes/no answer;
- score = 1 + 9 x F1(stated facts, scene facts), rounded to one decimal: 10 for an answer that states every fact
  and nothing false, 1 for one that states no true fact.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from datagen.prompting import ImageContext, format_context
from demo.scenes import COLORS, NUMBER_WORDS, SHAPES, Scene, captions

_BOX_LINE = re.compile(rf"^({'|'.join(COLORS)}) ({'|'.join(SHAPES)}): \[([^\]]*)\]$", re.MULTILINE)
_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_NAMED = re.compile(rf"\b({_COLOR})\s+({_SHAPE})s?\b")
_SHAPE_IS_COLOR = re.compile(rf"\b({_SHAPE})s?\b[^.;!?]*?\b(?:is|are)\s+({_COLOR})\b")
_SHAPE_THEN_COLOR = re.compile(rf"\b({_SHAPE})s?\b[^.;!?]*?\bcolou?r is\s+({_COLOR})\b")
_NUMBER = re.compile(rf"\b({'|'.join(NUMBER_WORDS.values())})\b")


@dataclass(frozen=True)
class JudgeReply:
    """What `judge_one` reads from a judge: the text of its reply."""

    text: str


def judge_context(scene: Scene, rng: random.Random) -> str:
    """What the judge (an LLM's or this one) sees of a scene: its captions, then its boxes (paper Table 1)."""
    boxes = tuple((obj.name, obj.bbox) for obj in scene.objects)
    return format_context(ImageContext(id=scene.id, image=f"{scene.id}.png", captions=tuple(captions(scene, rng)), boxes=boxes))


def _section(content: str, name: str) -> str:
    match = re.search(rf"\[{re.escape(name)}\]\n(.*?)\n\n\[", content, re.DOTALL)
    return match.group(1).strip() if match else ""


def scene_objects(context: str) -> list[tuple[str, str]]:
    """(colour, shape) of every box in a judge context."""
    return [(color, shape) for color, shape, _ in _BOX_LINE.findall(context)]


def leftmost_object(context: str) -> tuple[str, str] | None:
    boxes = [(float(coords.split(",")[0]), (color, shape)) for color, shape, coords in _BOX_LINE.findall(context)]
    return min(boxes)[1] if boxes else None


def stated_facts(answer: str) -> set[tuple]:
    """The facts `answer` states, as comparable tuples (see the module's docstring)."""
    text = answer.lower()
    facts = {("object", color, shape) for color, shape in _NAMED.findall(text)}
    facts |= {("object", color, shape) for shape, color in _SHAPE_IS_COLOR.findall(text)}
    facts |= {("object", color, shape) for shape, color in _SHAPE_THEN_COLOR.findall(text)}
    number = _NUMBER.search(text)
    if number:
        facts.add(("count", number.group(1)))
    first = re.match(r"\W*(yes|no)\b", text)
    if first:
        facts.add(("same color", first.group(1)))
    return facts


def scene_facts(context: str, question: str) -> set[tuple]:
    objects = scene_objects(context)
    question = question.lower()
    if "leftmost" in question:
        leftmost = leftmost_object(context)
        return {("object", *leftmost)} if leftmost else set()
    facts = {("object", color, shape) for color, shape in objects}
    if "same color" in question:
        facts.add(("same color", "yes" if len({color for color, _ in objects}) == 1 else "no"))
    elif objects:
        facts.add(("count", NUMBER_WORDS.get(len(objects), str(len(objects)))))
    return facts


def score_answer(answer: str, context: str, question: str) -> float:
    truth = scene_facts(context, question)
    stated = stated_facts(answer)
    if "leftmost" in question.lower():  # the other objects and the count are not what was asked
        stated = {fact for fact in stated if fact[0] == "object"}
    true_stated = len(stated & truth)
    if not truth or not true_stated:
        return 1.0
    precision, recall = true_stated / len(stated), true_stated / len(truth)
    return round(1 + 9 * (2 * precision * recall / (precision + recall)), 1)


class SceneJudge:
    """`evaluation.judge.ChatJudge` that scores from the scene's truth in the context (no LLM)."""

    name = "scene-truth-judge"

    def complete(self, messages: list[dict[str, Any]]) -> JudgeReply:
        content = messages[-1]["content"]
        context, question = _section(content, "Context"), _section(content, "Question")
        first = score_answer(_section(content, "Assistant 1"), context, question)
        second = score_answer(_section(content, "Assistant 2"), context, question)
        return JudgeReply(f"{first} {second}\nScored from the scene's objects by demo.judge.SceneJudge.")


__all__ = ["SceneJudge", "judge_context", "scene_facts", "score_answer", "stated_facts"]
