"""The scene-truth judge (demo/judge.py) through the project's judge pipeline (evaluation.judge): the teacher's own
answers score 10, answers with false or missing facts score less by the documented rule, and `judge_all` +
`relative_scores` aggregate its reviews as they do an LLM judge's."""

from __future__ import annotations

import random

import pytest

from demo.judge import SceneJudge, judge_context, score_answer
from demo.scenes import COLORS, Scene, SceneObject, random_scene
from demo.teacher import TemplateTeacher
from evaluation.judge import (
    JudgeItem,
    build_judge_messages,
    judge_all,
    parse_judge_scores,
    relative_scores,
)

SCENE = Scene("s", [SceneObject("circle", "red", "left", (0.05, 0.4, 0.3, 0.6)),
                    SceneObject("square", "blue", "right", (0.7, 0.4, 0.95, 0.6))])


def context() -> str:
    return judge_context(SCENE, random.Random(0))


def test_the_context_is_what_an_llm_judge_gets():
    text = context()
    assert "red circle: [0.05, 0.4, 0.3, 0.6]" in text and "blue square: [0.7, 0.4, 0.95, 0.6]" in text


@pytest.mark.parametrize(("answer", "expected"), [
    ("The image shows two shapes. On the left there is a red circle; on the right a blue square.", 10.0),
    # facts: {red circle, blue square, two}; stated {red circle, green square, two}: P = R = 2/3, 1 + 9 * 2/3 = 7
    ("The image shows two shapes: a red circle and a green square.", 7.0),
    # stated {red circle}: P = 1, R = 1/3, F1 = 1/2 -> 5.5
    ("There is a red circle.", 5.5),
    ("I cannot tell.", 1.0),
])
def test_description_scores_by_hand(answer, expected):
    assert score_answer(answer, context(), "Describe the image in detail.") == expected


def test_complex_questions_score_what_was_asked():
    question = "What is the color of the leftmost shape, and what kind of shape is it?"
    assert score_answer("It is a circle, and its color is red.", context(), question) == 10.0
    assert score_answer("It is a square, and its color is blue.", context(), question) == 1.0
    same = "Do all the shapes in the image have the same color? Explain."
    assert score_answer("No. The circle on the left is red; the square on the right is blue.", context(), same) == 10.0
    assert score_answer("Yes. They are all red.", context(), same) < 5


def test_teacher_answers_score_ten_and_the_pipeline_aggregates_them():
    """Reference = the teacher's answer; model = the same answer with one colour changed. Through judge_all (both
    orders, as `llava eval judge --swap` asks) and relative_scores, the reference averages 10 and the model less."""
    rng = random.Random(1)
    teacher = TemplateTeacher(["Describe the image in detail."])
    items = []
    for index in range(12):
        scene, _ = random_scene(f"s{index}", rng, 48)
        kind = ("detail", "complex")[index % 2]
        (question, reference), = teacher.write(kind, scene, rng)
        wrong = scene.objects[0].color
        other = next(color for color in COLORS if color != wrong)
        items.append(JudgeItem(f"q{index}", kind, question, judge_context(scene, rng), reference, reference.replace(wrong, other)))
    reviews = []
    judge_all(SceneJudge(), [(item, order) for item in items for order in ("reference_first", "model_first")],
              reviews.append, judge_id=SceneJudge.name, progress=False)
    scores = relative_scores(reviews)
    assert scores["all"]["reference_mean"] == 10.0 and scores["all"]["count"] == 12 and scores["all"]["unscored"] == 0
    assert 0 < scores["all"]["relative_score"] < 100
    assert set(scores) == {"detail", "complex", "all"}


def test_the_reply_is_read_by_the_projects_parser():
    messages = build_judge_messages(context=context(), question="Describe the image in detail.",
                                    answer_1="A red circle and a blue square, two shapes.", answer_2="Nothing.",
                                    question_type="detail")
    assert parse_judge_scores(SceneJudge().complete(messages).text) == (10.0, 1.0)
