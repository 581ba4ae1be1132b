"""`llava eval judge|scienceqa|pope|exact-match`: the paper's §5 evaluations from the command line.

Every evaluation answers its questions with the model (resumable: rerun the same command after an
interruption), scores the answers and writes `metrics.json` and `report.md` into `--output-dir`.
Each is a short task definition (`evaluation.runner.EvalTask`: options, `load`, `score`) over one runner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from datagen.teachers import JUDGE, add_teacher_arguments, teacher_from_args
from evaluation.runner import (
    EvalTask,
    Inputs,
    Outcome,
    TaskFailed,
    add_model_arguments,
    limited,
    model_name,
    percent,
    question_ids,
)
from evaluation.runner import main as run_main
from inference.messages import question_text
from processing.jsonio import read_records, write_records
from processing.jsonl_store import ResumableJsonl, require_keys


# ---------------------------------------------------------------- the judge (a teacher LLM)
def add_judge_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    group = add_teacher_arguments(parser, "judge", JUDGE, required=required)
    group.add_argument(
        "--judge-attempts", type=int, default=3,
        help="asks per item when the reply cannot be parsed; after the last, the item is recorded as unscored (default 3)",
    )


def build_judge(args: argparse.Namespace):
    """The judge/teacher and its identity string (written next to every score)."""
    judge = teacher_from_args(args, "judge")
    return judge, f"{judge.describe()} (temperature {args.judge_temperature})"


def read_questions(path: str, limit: int | None, keys: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All questions of `path`, and the first `limit` of them, each checked to have `keys`."""
    all_questions = read_records(path)
    questions = limited(all_questions, limit)
    for index, question in enumerate(questions):
        require_keys(question, keys, f"{path}, record {index + 1}")
    return all_questions, questions


# ---------------------------------------------------------------- judge
def _load_judge_contexts(path: str) -> dict[str, str]:
    """Contexts by image file name. Accepts `llava coco-contexts` records (`boxes: [{name, bbox}]`) and
    LLaVA-Bench's (`instances: [{category, bbox}]`)."""
    from datagen.prompting import ImageContext, format_context

    contexts = {}
    for index, record in enumerate(read_records(path)):
        record = dict(record)
        if "instances" in record and "boxes" not in record:
            record["boxes"] = [{"name": item["category"], "bbox": item["bbox"]} for item in record.pop("instances")]
        record.setdefault("id", record.get("image"))
        context = ImageContext.from_record(record, f"{path}, record {index + 1}")
        contexts[context.image] = format_context(context)
    return contexts


def _judge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--questions", required=True, help="questions JSONL: {question_id, image, text, category: conv|detail|complex}"
    )
    parser.add_argument(
        "--contexts", required=True,
        help="contexts JSONL: {image, captions, boxes: [{name, bbox}]} (or LLaVA-Bench's instances)",
    )
    parser.add_argument(
        "--references", required=True, help="reference answers JSONL (teacher-written): {question_id, text}"
    )
    parser.add_argument("--image-root", default=None, help="folder the questions' image paths are relative to")
    parser.add_argument(
        "--swap", action="store_true", help="also judge with the answers swapped and average, cancelling position bias"
    )
    add_model_arguments(parser)
    add_judge_arguments(parser, required=True)


def _load_judge(args: argparse.Namespace) -> Inputs:
    from evaluation.judge import normalize_type

    all_questions, questions = read_questions(args.questions, args.limit, ["question_id", "text", "image", "category"])
    for question in questions:
        normalize_type(question["category"])
    contexts = _load_judge_contexts(args.contexts)
    references = {str(r["question_id"]): r["text"] for r in read_records(args.references)}
    for question in questions:
        if question["image"] not in contexts:
            raise ValueError(
                f"{args.contexts}: no context for image {question['image']!r} (question {question['question_id']})"
            )
        if str(question["question_id"]) not in references:
            raise ValueError(f"{args.references}: no reference answer for question {question['question_id']}")
    judge, judge_id = build_judge(args)  # fail on a bad judge configuration before answering
    return Inputs(questions, args.image_root, question_ids(all_questions, args.questions),
                  {"contexts": contexts, "references": references, "judge": judge, "judge_id": judge_id})


def _judge_reviews(args: argparse.Namespace, inputs: Inputs, answers: dict[str, dict[str, Any]]) -> list[dict]:
    """The judge's reviews of every (question, order), resumed from and appended to OUTPUT_DIR/reviews.jsonl."""
    from datagen.teachers import TeacherError
    from evaluation.judge import JudgeItem, judge_all, review_key

    judge_id, contexts, references = inputs.data["judge_id"], inputs.data["contexts"], inputs.data["references"]
    orders = ("reference_first", "model_first") if args.swap else ("reference_first",)
    with ResumableJsonl(Path(args.output_dir) / "reviews.jsonl", key="key") as store:
        other_judges = sorted({str(review["judge"]) for review in store} - {judge_id})
        if other_judges:  # one metrics file, one judge: never average scores of different judges
            raise ValueError(f"{store.path} holds reviews by another judge ({other_judges[0]!r}, not {judge_id!r}); "
                             "use another --output-dir")
        tasks = [
            (JudgeItem(str(q["question_id"]), q["category"], question_text(q["text"]), contexts[q["image"]],
                       references[str(q["question_id"])], answers[str(q["question_id"])]["text"]), order)
            for q in inputs.questions for order in orders if review_key(str(q["question_id"]), order) not in store
        ]
        try:
            judge_all(inputs.data["judge"], tasks,
                      lambda review: store.append({"key": review_key(review["question_id"], review["order"]), **review}),
                      judge_id=judge_id, max_attempts=args.judge_attempts, concurrency=args.judge_concurrency,
                      progress=not args.no_progress)
        except TeacherError as error:
            raise TaskFailed(f"the judge failed: {error}\n(finished reviews are kept in {store.path}; "
                             "rerun the same command to resume)") from error
        wanted = {review_key(str(q["question_id"]), order) for q in inputs.questions for order in orders}
        return [review for review in store if review["key"] in wanted]


def _judge_examples(inputs: Inputs, answers: dict[str, dict[str, Any]], reviews: list[dict]):
    by_question: dict[str, list] = {}
    for review in reviews:
        by_question.setdefault(str(review["question_id"]), []).append(review)
    for question in inputs.questions:
        question_id = str(question["question_id"])
        parsed = [r["scores"] for r in by_question.get(question_id, []) if r["scores"] is not None]
        score = (
            "unscored (judge reply unparseable)" if not parsed
            else " / ".join(f"model {s['model']:g}, reference {s['reference']:g}" for s in parsed)
            + f" — judge: {inputs.data['judge_id']}"
        )
        yield {"id": question_id, "image": question["image"], "question": question_text(question["text"]),
               "answer": answers[question_id]["text"], "reference": inputs.data["references"][question_id],
               "score": score}


def _score_judge(args: argparse.Namespace, inputs: Inputs, answers: dict[str, dict[str, Any]]) -> Outcome:
    from evaluation.judge import relative_scores
    from evaluation.report import judge_table

    reviews = _judge_reviews(args, inputs, answers)
    results = relative_scores(reviews)
    judge_id, count = inputs.data["judge_id"], len(inputs.questions)
    return Outcome(
        metrics={"task": "judge", "model": model_name(args), "judge": judge_id, "position_swap": args.swap,
                 "questions": count, "results": results},
        title="Judge relative score (paper Table 3)",
        setup=[f"- model: `{model_name(args)}`", f"- judge: {judge_id}",
               f"- position swap: {'yes' if args.swap else 'no'}", f"- questions: {count}"],
        tables=[("Relative score", judge_table(results) + "\n\nRelative score = mean(model) / mean(reference) × 100.")],
        examples=_judge_examples(inputs, answers, reviews),
        summary=f"overall relative score {percent(results.get('all', {}).get('relative_score'))}",
    )


JUDGE_TASK = EvalTask(
    "judge", "judge relative score (paper Table 3; LLaVA-Bench style)",
    "A text-only judge scores the reference and the model's answer 1-10 "
    "from the image's captions and boxes; reports mean(model)/mean(reference)x100.",
    _judge_arguments, _load_judge, _score_judge,
)


# ---------------------------------------------------------------- ScienceQA
def _load_teacher_predictions(path: str) -> dict[str, str]:
    """Teacher predictions: JSONL `{question_id, text}`, or JSON `{"outputs": {pid: text}}` / `{pid: text}`."""
    if path.endswith(".jsonl"):
        return {str(r["question_id"]): r["text"] for r in read_records(path)}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data = data.get("outputs", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path}: expected {{question_id: text}} (optionally under 'outputs') or a .jsonl file")
    return {str(k): v for k, v in data.items()}


def _scienceqa_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, help="ScienceQA folder with problems.json, pid_splits.json and images/<split>/<pid>/"
    )
    parser.add_argument("--split", default="test", help="split of pid_splits.json to evaluate (default test)")
    parser.add_argument(
        "--answer-first", action="store_true",
        help="the model was trained with answer-first targets (Table 7 ablation): labels the result and the "
        "stored references; the prompt is the same and extraction reads both formats",
    )
    parser.add_argument(
        "--teacher-predictions", default=None,
        help="a teacher's predictions (JSONL {question_id, text} or JSON {pid: text}); adds the teacher's own "
        "row and the complement ensemble, and with --judge the judge ensemble",
    )
    add_model_arguments(parser)
    add_judge_arguments(parser, required=False)


def _load_scienceqa(args: argparse.Namespace) -> Inputs:
    from processing.scienceqa import convert_split, load_scienceqa

    problems = load_scienceqa(args.data, args.split)
    all_records = convert_split(args.data, args.split, answer_first=args.answer_first)
    records = limited(all_records, args.limit)
    questions = [
        {"question_id": r["id"], "text": r["conversations"][0]["value"], **({"image": r["image"]} if "image" in r else {})}
        for r in records
    ]
    write_records(Path(args.output_dir) / "questions.jsonl", questions)
    return Inputs(questions, args.data, {str(r["id"]) for r in all_records},
                  {"problems": {r["id"]: problems[r["id"]] for r in records}, "records": records})


def _teacher_rows(args, problems, ours, our_texts, rows: dict, metrics: dict) -> None:
    """The teacher's own row, the complement ensemble and, with --judge, the judge ensemble (Table 6)."""
    from evaluation.scienceqa import accuracy_by_category, ensemble_complement, ensemble_judge, extract_option_letter

    teacher_texts = _load_teacher_predictions(args.teacher_predictions)
    teacher = {pid: extract_option_letter(teacher_texts.get(pid), len(problems[pid]["choices"])) for pid in problems}
    rows["teacher"] = accuracy_by_category(problems, teacher)
    rows["ours + teacher (complement)"] = accuracy_by_category(problems, ensemble_complement(ours, teacher))
    metrics["teacher_unanswered"] = sum(v is None for v in teacher.values())
    if args.judge:
        judge, judge_id = build_judge(args)
        final, decisions = ensemble_judge(problems, ours, teacher, our_texts, teacher_texts, judge,
                                          judge_id=judge_id, max_attempts=args.judge_attempts)
        rows["ours + teacher (judge)"] = accuracy_by_category(problems, final)
        write_records(Path(args.output_dir) / "ensemble_decisions.jsonl", decisions)
        metrics.update(judge=judge_id, arbitrated=len(decisions), arbiter_fallbacks=sum(d["fallback"] for d in decisions))


def _scienceqa_examples(records, ours, our_texts):
    for record in records:
        pid, expected = record["id"], record["scienceqa"]["answer"]
        verdict = "correct" if ours[pid] == expected else "wrong"
        yield {"id": pid, "image": record.get("image"), "question": question_text(record["conversations"][0]["value"]),
               "answer": our_texts[pid], "reference": record["conversations"][1]["value"],
               "score": f"extracted {ours[pid] or 'nothing'}, expected {expected}: {verdict}"}


def _score_scienceqa(args: argparse.Namespace, inputs: Inputs, answers: dict[str, dict[str, Any]]) -> Outcome:
    from evaluation.scienceqa import accuracy_by_category, extract_option_letter, format_table

    problems = inputs.data["problems"]
    our_texts = {pid: answers[pid]["text"] for pid in problems}
    ours = {pid: extract_option_letter(our_texts[pid], len(problems[pid]["choices"])) for pid in problems}
    variant = "answer first" if args.answer_first else "reasoning first"
    rows = {f"{model_name(args)} ({variant})": accuracy_by_category(problems, ours)}
    metrics: dict[str, Any] = {"task": "scienceqa", "split": args.split, "model": model_name(args), "variant": variant,
                               "unanswered": sum(v is None for v in ours.values())}
    if args.teacher_predictions:
        _teacher_rows(args, problems, ours, our_texts, rows, metrics)
    metrics["results"] = rows
    return Outcome(
        metrics=metrics,
        title=f"ScienceQA {args.split} (paper Table 6)",
        setup=[f"- model: `{model_name(args)}` ({variant})", f"- problems: {len(problems)}",
               f"- no answer extracted: {metrics['unanswered']}",
               *([f"- judge: {metrics['judge']}"] if "judge" in metrics else [])],
        tables=[("Accuracy (%)", format_table(rows) + "\n\nTXT: has a text context; IMG: has an image; NO: neither "
                 "(a problem with both counts in TXT and IMG), as in ScienceQA's own evaluation.")],
        examples=_scienceqa_examples(inputs.data["records"], ours, our_texts),
        summary=f"average accuracy {percent(next(iter(rows.values()))['average']['accuracy'])}",
    )


SCIENCEQA_TASK = EvalTask(
    "scienceqa", "ScienceQA accuracy by category (paper Table 6) and teacher ensembles",
    "Answers a ScienceQA split (problems.json + pid_splits.json + images/) and reports "
    "NAT/SOC/LAN/TXT/IMG/NO/G1-6/G7-12/average accuracy.",
    _scienceqa_arguments, _load_scienceqa, _score_scienceqa,
)


# ---------------------------------------------------------------- POPE
def _pope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--questions", required=True, help="questions JSONL: {question_id, image, text, label: yes|no, category?}"
    )
    parser.add_argument("--image-root", default=None, help="folder the questions' image paths are relative to")
    add_model_arguments(parser)


def _load_pope(args: argparse.Namespace) -> Inputs:
    all_questions, questions = read_questions(args.questions, args.limit, ["question_id", "text", "label"])
    for index, question in enumerate(questions):
        if question["label"] not in ("yes", "no"):
            raise ValueError(
                f"{args.questions}, record {index + 1}: label must be 'yes' or 'no', found {question['label']!r}"
            )
    return Inputs(questions, args.image_root, question_ids(all_questions, args.questions))


def _score_pope(args: argparse.Namespace, inputs: Inputs, answers: dict[str, dict[str, Any]]) -> Outcome:
    from evaluation.pope import parse_yes_no, pope_metrics
    from evaluation.report import pope_table

    questions = inputs.questions
    predicted = {str(q["question_id"]): parse_yes_no(answers[str(q["question_id"])]["text"]) for q in questions}
    subsets: dict[str, list[dict[str, Any]]] = {}
    for question in questions:
        if "category" in question:
            subsets.setdefault(str(question["category"]), []).append(question)
    subsets["all"] = questions
    results = {
        name: pope_metrics([q["label"] for q in group], [predicted[str(q["question_id"])] for q in group])
        for name, group in subsets.items()
    }
    examples = (
        {"id": str(q["question_id"]), "image": q.get("image"), "question": question_text(q["text"]),
         "answer": answers[str(q["question_id"])]["text"],
         "score": f"read as {predicted[str(q['question_id'])]}, label {q['label']}"}
        for q in questions
    )
    return Outcome(
        metrics={"task": "pope", "model": model_name(args), "results": results},
        title="POPE object hallucination",
        setup=[f"- model: `{model_name(args)}`", f"- questions: {len(questions)}"],
        tables=[("Metrics (%)", pope_table(results) + '\n\n"yes" is the positive class; the yes-ratio is the share of '
                 "answers read as yes (near 50% on balanced sets; higher means hallucinating objects).")],
        examples=examples,
        summary=f"F1 {percent(100 * results['all']['f1'])}, yes-ratio {results['all']['yes_ratio']:.3f}",
    )


POPE_TASK = EvalTask(
    "pope", "POPE yes/no object-hallucination metrics",
    "Accuracy, precision, recall, F1 and yes-ratio, overall and per `category`.",
    _pope_arguments, _load_pope, _score_pope,
)

# ---------------------------------------------------------------- exact match
EXACT_MATCH_KEYS = ["id", "image", "type", "question", "answer"]


def _exact_match_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", required=True,
                        help="questions JSONL: {id, image, type, question, answer} (one true one-word answer)")
    parser.add_argument("--image-root", default=None, help="folder the questions' image paths are relative to")
    parser.add_argument("--vocabularies", default=None,
                        help="JSON {type: [words]}: the answer is the first word of the reply in its type's "
                        "vocabulary (default: the first word of the reply)")
    add_model_arguments(parser)


def _load_exact_match(args: argparse.Namespace) -> Inputs:
    all_questions, questions = read_questions(args.questions, args.limit, EXACT_MATCH_KEYS)
    vocabularies = None
    if args.vocabularies:
        vocabularies = {kind: set(words) for kind, words in json.loads(Path(args.vocabularies).read_text()).items()}
    return Inputs(
        [{"question_id": q["id"], "text": q["question"], "image": q["image"]} for q in questions], args.image_root,
        {str(q["id"]) for q in all_questions}, {"items": questions, "vocabularies": vocabularies},
    )


def _score_exact_match(args: argparse.Namespace, inputs: Inputs, answers: dict[str, dict[str, Any]]) -> Outcome:
    from evaluation.exact_match import accuracy_by_type, predict

    items = inputs.data["items"]
    predictions = [predict(item, answers[str(item["id"])]["text"], inputs.data["vocabularies"]) for item in items]
    accuracy = accuracy_by_type(predictions)
    table = "| Type | Accuracy (%) |\n|---|---:|\n" + "\n".join(
        f"| {kind} | {percent(100 * value)} |" for kind, value in accuracy.items())
    examples = (
        {"id": p.id, "image": p.image, "question": p.question, "answer": p.prediction, "reference": p.answer,
         "score": f"extracted {p.extracted or 'nothing'}: {'correct' if p.correct else 'wrong'}"}
        for p in predictions
    )
    return Outcome(
        metrics={"task": "exact_match", "model": model_name(args), "questions": len(items), "results": accuracy},
        title="Exact-match accuracy",
        setup=[f"- model: `{model_name(args)}`", f"- questions: {len(items)}"],
        tables=[("Accuracy", table)],
        examples=examples,
        summary=f"overall accuracy {percent(100 * accuracy['overall'])}",
    )


EXACT_MATCH_TASK = EvalTask(
    "exact-match", "exact-match accuracy on one-word-answer questions (the offline demo's measure)",
    "Reads the first answer-vocabulary word of each reply and compares it with the true answer; accuracy per "
    "question type and overall.",
    _exact_match_arguments, _load_exact_match, _score_exact_match,
)

TASKS = (JUDGE_TASK, SCIENCEQA_TASK, POPE_TASK, EXACT_MATCH_TASK)


def build_parser() -> argparse.ArgumentParser:
    from evaluation.runner import build_parser as build

    return build(TASKS, __doc__)


def main(argv: list[str] | None = None) -> int:
    return run_main(TASKS, argv, __doc__)
