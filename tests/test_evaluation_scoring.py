"""Scoring functions against hand-computed fixtures: judge relative score and score parsing,
ScienceQA answer extraction / per-category accuracy / ensembling, POPE metrics."""

from __future__ import annotations

import pytest

from datagen.teachers import TeacherError
from evaluation.judge import JudgeItem, judge_all, judge_one, parse_judge_scores, relative_scores
from evaluation.pope import parse_yes_no, pope_metrics
from evaluation.scienceqa import (
    accuracy_by_category,
    ensemble_complement,
    ensemble_judge,
    extract_option_letter,
    format_table,
)
from processing.scienceqa import load_scienceqa, problem_categories
from evaluation_fixtures import SCIENCEQA_TEST_PROBLEMS, ScriptedJudge, write_scienceqa


# ---------------------------------------------------------------- judge score parsing
@pytest.mark.parametrize(
    "reply, expected",
    [
        ("8 7\nAssistant 1 is more detailed.", (8.0, 7.0)),  # the format the prompt asks for
        ("  9, 6.5  \nreasons", (9.0, 6.5)),
        ("8/10 7/10\n", (8.0, 7.0)),
        ("Here are my scores.\nAssistant 1: 8\nAssistant 2: 6.5\nBoth are fine.", (8.0, 6.5)),  # labelled
        ("**Assistant 1**: 7 and **Assistant 2**: 3", (7.0, 3.0)),
        ("My verdict is (9, 4) because ...", (9.0, 4.0)),  # tuple
        ("Let me think about both answers.\nThey differ.\n7 5\n", (7.0, 5.0)),  # a later line
    ],
)
def test_parse_judge_scores_rules(reply, expected):
    assert parse_judge_scores(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I cannot decide which answer is better.",
        "Assistant 1 was better than Assistant 2.",  # labels but no scores
        "80 70\nout of a hundred",  # out of the 1-10 range
        "Assistant 1: 8\nI could not score the second one.",  # only one labelled score
        "8 7 6\nthree numbers",
    ],
)
def test_parse_judge_scores_failures(reply):
    assert parse_judge_scores(reply) is None


# ---------------------------------------------------------------- judge_one: retries and orders
def _item(qid="q1", qtype="conv"):
    return JudgeItem(
        qid,
        qtype,
        "What is on the table?",
        "A cat on a table.\n\ncat: [0.1, 0.2, 0.5, 0.6]",
        reference="REFERENCE ANSWER",
        answer="MODEL ANSWER",
    )


def test_judge_one_retries_unparseable_reply_then_scores():
    judge = ScriptedJudge(lambda messages, n: "no scores here" if n == 1 else "8 6\nok")
    review = judge_one(judge, _item(), judge_id="openai:judge-x")
    assert review["scores"] == {"reference": 8.0, "model": 6.0}
    assert review["attempts"] == 2 and review["replies"] == ["no scores here", "8 6\nok"]
    assert review["judge"] == "openai:judge-x" and review["question_type"] == "conversation"
    user = judge.calls[0][1]["content"]
    assert user.index("REFERENCE ANSWER") < user.index("MODEL ANSWER")  # reference is Assistant 1


def test_judge_one_swapped_order_maps_scores_back():
    judge = ScriptedJudge(lambda messages, n: "6 8")
    review = judge_one(judge, _item(), judge_id="j", order="model_first")
    user = judge.calls[0][1]["content"]
    assert user.index("MODEL ANSWER") < user.index("REFERENCE ANSWER")
    assert review["scores"] == {"reference": 8.0, "model": 6.0}


def test_judge_one_records_unparseable_after_all_attempts():
    judge = ScriptedJudge(lambda messages, n: f"I refuse ({n})")
    review = judge_one(judge, _item(), judge_id="j", max_attempts=3)
    assert review["scores"] is None and review["attempts"] == 3 and len(judge.calls) == 3
    assert "unparseable" in review["error"] and review["replies"][-1] == "I refuse (3)"


def test_judge_all_concurrent_and_stops_on_teacher_error():
    items = [(_item(f"q{i}"), "reference_first") for i in range(6)]
    judge = ScriptedJudge(lambda messages, n: "9 7")
    recorded = []
    judge_all(judge, items, recorded.append, judge_id="j", concurrency=3, progress=False)
    assert sorted(r["question_id"] for r in recorded) == [f"q{i}" for i in range(6)]
    assert all(r["scores"] == {"reference": 9.0, "model": 7.0} for r in recorded)

    def fail_on_q1(messages, n):
        if "(q1)" in messages[1]["content"]:
            raise TeacherError("HTTP 500 from the teacher")
        return "9 7"

    tagged = [
        (JudgeItem(f"q{i}", "detail", f"Describe it. (q{i})", "ctx", "ref", "ans"), "model_first") for i in range(3)
    ]
    recorded = []
    with pytest.raises(TeacherError, match="HTTP 500"):
        judge_all(ScriptedJudge(fail_on_q1), tagged, recorded.append, judge_id="j", concurrency=1, progress=False)
    assert [r["question_id"] for r in recorded] == ["q0"]  # finished work kept; q2 never started


# ---------------------------------------------------------------- relative score
def test_relative_scores_hand_computed():
    def review(qid, qtype, ref, model, order="reference_first"):
        scores = None if ref is None else {"reference": ref, "model": model}
        return {"question_id": qid, "question_type": qtype, "order": order, "scores": scores}

    reviews = [
        review("q1", "conv", 8, 6),
        review("q2", "conversation", 10, 9),
        review("q3", "detail", 7, 7),
        review("q4", "complex", 9, 6),
        review("q4", "complex", 7, 8, order="model_first"),  # swap: q4 averages to ref 8, model 7
        review("q5", "complex", None, None),  # unparseable: out of the means, counted
    ]
    results = relative_scores(reviews)
    assert results["conversation"]["model_mean"] == pytest.approx(7.5)
    assert results["conversation"]["reference_mean"] == pytest.approx(9.0)
    assert results["conversation"]["relative_score"] == pytest.approx(83.3333, abs=1e-3)
    assert results["detail"]["relative_score"] == pytest.approx(100.0)
    assert results["complex"] == {
        "relative_score": pytest.approx(87.5),
        "model_mean": 7.0,
        "reference_mean": 8.0,
        "count": 1,
        "unscored": 1,
    }
    overall = results["all"]
    assert overall["model_mean"] == pytest.approx(29 / 4) and overall["reference_mean"] == pytest.approx(33 / 4)
    assert overall["relative_score"] == pytest.approx(29 / 33 * 100)
    assert overall["count"] == 4 and overall["unscored"] == 1


# ---------------------------------------------------------------- ScienceQA answer extraction
@pytest.mark.parametrize(
    "text, num_choices, expected",
    [
        ("B", 3, "B"),  # bare letter
        (" C \n", 4, "C"),
        ("B\nRome is the capital of Italy.", 3, "B"),  # letter alone on the first line
        ("A. The sun", 2, "A"),  # "X." prefix
        ("(B). Rome", 3, "B"),
        ("Lecture text. Solution text. The answer is C.", 4, "C"),  # reasoning first
        ("The answer is A. BECAUSE: forces push.", 2, "A"),  # answer first
        ("the answer is (D)", 5, "D"),
        ("The answer is B. Again, the answer is B.", 3, "B"),  # repeated, consistent
    ],
)
def test_extract_answer_rules(text, num_choices, expected):
    assert extract_option_letter(text, num_choices) == expected


@pytest.mark.parametrize(
    "text, num_choices",
    [
        ("", 2),
        ("I am not sure.", 3),
        ("E", 4),  # bare letter beyond the choices
        ("D. iron", 3),  # prefix letter beyond the choices
        ("The answer is E.", 4),  # "The answer is" letter beyond the choices
        ("The answer is A. No wait, the answer is B.", 3),  # contradictory
        ("The answer is a dog.", 2),  # the article "a", not an option
        ("A cat is on the mat.", 2),  # starts with the article, no "X." prefix
    ],
)
def test_extract_answer_failures(text, num_choices):
    assert extract_option_letter(text, num_choices) is None


# ---------------------------------------------------------------- ScienceQA categories and accuracy
def test_problem_categories_follow_scienceqa_rules():
    got = {pid: problem_categories(pid, p) for pid, p in SCIENCEQA_TEST_PROBLEMS.items()}
    assert got == {
        "p1": ["NAT", "IMG", "G1-6"],
        "p2": ["SOC", "TXT", "G7-12"],
        "p3": ["LAN", "NO", "G1-6"],
        "p4": ["NAT", "TXT", "IMG", "G7-12"],  # text and image: counts in both
        "p5": ["SOC", "IMG", "G1-6"],
        "p6": ["NAT", "NO", "G7-12"],
    }
    with pytest.raises(ValueError, match="p9: unknown subject 'alchemy'"):
        problem_categories("p9", {**SCIENCEQA_TEST_PROBLEMS["p1"], "subject": "alchemy"})


OUR_TEXTS = {
    "p1": "A",  # correct
    "p2": "A. Paris",  # wrong (B)
    "p3": "Rhymes share endings. Hat rhymes with cat. The answer is C.",  # correct
    "p4": "The answer is B.",  # wrong (A)
    "p5": "I do not know.",  # no answer: wrong
    "p6": "Iron conducts. The answer is D.",  # correct
}


def _letters(texts, problems):
    return {pid: extract_option_letter(text, len(problems[pid]["choices"])) for pid, text in texts.items()}


def test_accuracy_by_category_hand_computed(tmp_path):
    problems = load_scienceqa(write_scienceqa(tmp_path / "sqa"), "test")
    results = accuracy_by_category(problems, _letters(OUR_TEXTS, problems))
    expected = {  # (correct, total) worked out by hand from the comments above
        "NAT": (2, 3),
        "SOC": (0, 2),
        "LAN": (1, 1),
        "TXT": (0, 2),
        "IMG": (1, 3),
        "NO": (2, 2),
        "G1-6": (2, 3),
        "G7-12": (1, 3),
        "average": (3, 6),
    }
    for name, (right, total) in expected.items():
        assert (results[name]["correct"], results[name]["total"]) == (right, total), name
        assert results[name]["accuracy"] == pytest.approx(100 * right / total), name
    table = format_table({"LLaVA (ours)": results})
    assert table.splitlines()[0] == "| Method | NAT | SOC | LAN | TXT | IMG | NO | G1-6 | G7-12 | Avg |"
    assert (
        table.splitlines()[2]
        == "| LLaVA (ours) | 66.67 | 0.00 | 100.00 | 0.00 | 33.33 | 100.00 | 66.67 | 33.33 | 50.00 |"
    )


def test_accuracy_refuses_missing_predictions(tmp_path):
    problems = load_scienceqa(write_scienceqa(tmp_path / "sqa"), "test")
    with pytest.raises(ValueError, match=r"1 ScienceQA problem\(s\) have no prediction, e.g. \['p6'\]"):
        accuracy_by_category(problems, {pid: "A" for pid in list(problems)[:5]})


TEACHER_TEXTS = {
    "p1": "I cannot see the image.",  # no answer
    "p2": "The answer is B.",
    "p3": "The answer is A.",
    "p4": "The answer is A.",
    "p5": "The answer is B.",
    "p6": "The answer is D.",  # agrees with ours
}


def test_ensemble_complement_hand_computed(tmp_path):
    problems = load_scienceqa(write_scienceqa(tmp_path / "sqa"), "test")
    ours, teacher = _letters(OUR_TEXTS, problems), _letters(TEACHER_TEXTS, problems)
    combined = ensemble_complement(ours, teacher)
    assert combined == {"p1": "A", "p2": "B", "p3": "A", "p4": "A", "p5": "B", "p6": "D"}
    assert accuracy_by_category(problems, combined)["average"]["correct"] == 5


def test_ensemble_judge_asks_teacher_only_on_disagreement(tmp_path):
    problems = load_scienceqa(write_scienceqa(tmp_path / "sqa"), "test")
    ours, teacher = _letters(OUR_TEXTS, problems), _letters(TEACHER_TEXTS, problems)
    verdicts = {
        "Which animal": "The answer is A.",
        "Which word rhymes": "Both close; The answer is C.",
        "Which force": "The answer is A.",
        "Which state": "The answer is B.",
        "Which city": "I cannot tell.",
    }  # p2: unparseable every time -> complement fallback

    def respond(messages, n):
        user = messages[-1]["content"]
        return next(reply for prefix, reply in verdicts.items() if user.startswith(prefix))

    arbiter = ScriptedJudge(respond)
    final, decisions = ensemble_judge(
        problems, ours, teacher, OUR_TEXTS, TEACHER_TEXTS, arbiter, judge_id="openai:teacher", max_attempts=2
    )
    assert final == {"p1": "A", "p2": "B", "p3": "C", "p4": "A", "p5": "B", "p6": "D"}
    assert [d["question_id"] for d in decisions] == ["p1", "p2", "p3", "p4", "p5"]  # p6 agreed: not asked
    assert len(arbiter.calls) == 4 + 2  # p2 retried once
    p2 = next(d for d in decisions if d["question_id"] == "p2")
    assert p2["fallback"] is True and p2["decided"] == "B" and len(p2["replies"]) == 2
    assert all(d["judge"] == "openai:teacher" for d in decisions)
    p3_prompt = next(c[-1]["content"] for c in arbiter.calls if c[-1]["content"].startswith("Which word"))
    assert OUR_TEXTS["p3"] in p3_prompt and TEACHER_TEXTS["p3"] in p3_prompt  # sees both answers
    assert accuracy_by_category(problems, final)["average"]["correct"] == 6


# ---------------------------------------------------------------- POPE
def test_pope_parse_and_metrics_hand_computed():
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
    predictions = [parse_yes_no(a) for a in answers]
    assert predictions == ["yes", "no", "no", "yes", "no", "no", "yes", "yes"]
    metrics = pope_metrics(labels, predictions)  # TP=3 FP=1 TN=2 FN=2
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (3, 1, 2, 2)
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["precision"] == pytest.approx(3 / 4)
    assert metrics["recall"] == pytest.approx(3 / 5)
    assert metrics["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert metrics["yes_ratio"] == pytest.approx(4 / 8)


def test_pope_metrics_errors_and_degenerate_case():
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        pope_metrics(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match=r"labels must be 'yes' or 'no'; found \['maybe'\]"):
        pope_metrics(["maybe"], ["yes"])
    all_no = pope_metrics(["yes", "no"], ["no", "no"])
    assert all_no["precision"] == 0.0 and all_no["f1"] == 0.0 and all_no["yes_ratio"] == 0.0
