"""`llava eval judge|scienceqa|pope`: the paper's §5 evaluations from the command line.

Every evaluation answers its questions with the model (resumable: rerun the same command after an
interruption), scores the answers and writes `metrics.json` and `report.md` into `--output-dir`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from inference.settings import GenerationSettings, add_generation_arguments
from processing.jsonio import read_records, write_records
from processing.jsonl_store import ResumableJsonl, require_keys

logger = logging.getLogger(__name__)

REPORT_EXAMPLES = 6


# ---------------------------------------------------------------- shared arguments
def _add_model_arguments(parser: argparse.ArgumentParser, answers_flag: str) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", help="model folder or Hub id (loaded with AutoModelForImageTextToText, trust_remote_code=True)"
    )
    group.add_argument(
        answers_flag,
        dest="answers",
        default=None,
        help="score this predictions JSONL ({question_id, text}) instead of running --model",
    )
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument(
        "--dtype", default="auto", help="weights dtype: auto (the checkpoint's), float32, bfloat16, float16"
    )
    group.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions (quick checks)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generation_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="folder for predictions, metrics.json and report.md")
    parser.add_argument(
        "--report-examples",
        type=int,
        default=REPORT_EXAMPLES,
        help=f"examples shown in report.md (default {REPORT_EXAMPLES})",
    )


def _add_judge_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("judge (a teacher LLM: datagen.teachers)")
    group.add_argument(
        "--judge",
        choices=("openai", "local"),
        required=required,
        default=None,
        help="openai: any OpenAI-compatible endpoint; local: a transformers causal LM folder or .gguf file",
    )
    group.add_argument(
        "--judge-model", default=None, help="model name at the endpoint (openai) or folder / .gguf file (local)"
    )
    group.add_argument(
        "--judge-base-url", default=None, help="API root of an OpenAI-compatible server, e.g. http://localhost:8000/v1"
    )
    group.add_argument(
        "--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key"
    )
    group.add_argument(
        "--judge-temperature", type=float, default=0.2, help="judge sampling temperature (default 0.2, as LLaVA's)"
    )
    group.add_argument(
        "--judge-max-tokens", type=int, default=1024, help="token limit of each judge reply (default 1024)"
    )
    group.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per HTTP attempt (openai)")
    group.add_argument("--judge-max-retries", type=int, default=5, help="transport retries per request (openai)")
    group.add_argument("--judge-concurrency", type=int, default=4, help="judge requests in flight at once (default 4)")
    group.add_argument(
        "--judge-attempts",
        type=int,
        default=3,
        help="asks per item when the reply cannot be parsed; after the last, the item is recorded as unscored (default 3)",
    )


def _build_judge(args: argparse.Namespace):
    """The judge/teacher and its identity string (written next to every score)."""
    if not args.judge_model:
        raise ValueError("--judge-model is required with --judge")
    from datagen.teachers import build_teacher

    judge = build_teacher(
        args.judge, args.judge_model, base_url=args.judge_base_url, api_key_env=args.judge_api_key_env,
        temperature=args.judge_temperature, max_tokens=args.judge_max_tokens, timeout=args.judge_timeout,
        max_retries=args.judge_max_retries,
    )
    return judge, f"{judge.describe()} (temperature {args.judge_temperature})"


def _answers(
    args: argparse.Namespace,
    questions: list[dict[str, Any]],
    image_root: str | None,
    all_question_ids: set[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Predictions for `questions`: read from `--answers`/`--predictions`, or produced by `--model`
    into OUTPUT_DIR/predictions.jsonl (resuming whatever an earlier run of it finished).

    A predictions file must answer every question and nothing else: a `question_id` that is not in the question
    file (`all_question_ids`, the whole file even under `--limit`) means the file belongs to another question set,
    and scoring the rest would hide it. A question_id answered twice is refused too."""
    if args.answers:
        known = all_question_ids if all_question_ids is not None else {str(q["question_id"]) for q in questions}
        records = {}
        for index, record in enumerate(read_records(args.answers)):
            where = f"{args.answers}, record {index + 1}"
            require_keys(record, ["question_id", "text"], where)
            question_id = str(record["question_id"])
            if question_id not in known:
                raise ValueError(f"{where}: question_id {question_id!r} is not in the questions")
            if question_id in records:
                raise ValueError(f"{where}: question_id {question_id!r} is answered more than once")
            records[question_id] = record
        missing = [str(q["question_id"]) for q in questions if str(q["question_id"]) not in records]
        if missing:
            raise ValueError(f"{args.answers}: no prediction for {len(missing)} question(s), e.g. {missing[:5]}")
        return records
    if not args.model:
        raise ValueError("give --model (to answer the questions) or a predictions file")
    from inference.batch import BatchAnswerer, answer_question_file
    from inference.loading import load_model_and_processor

    output = Path(args.output_dir) / "predictions.jsonl"
    with ResumableJsonl(output) as done:
        if all(str(q["question_id"]) in done for q in questions):  # a finished run: no need to load the model
            return {str(q["question_id"]): done.get(q["question_id"]) for q in questions}
    model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
    answerer = BatchAnswerer(model, processor, GenerationSettings.from_args(args))
    return answer_question_file(
        questions,
        answerer,
        output,
        image_root=image_root,
        batch_size=args.batch_size,
        model_id=args.model,
        show_progress=not args.no_progress,
    )


def _model_name(args: argparse.Namespace) -> str:
    return args.model or f"predictions from {args.answers}"


def _question_ids(questions: list[dict[str, Any]], path: str) -> set[str]:
    for index, question in enumerate(questions):
        require_keys(question, ["question_id"], f"{path}, record {index + 1}")
    return {str(question["question_id"]) for question in questions}


def _limited(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


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


def run_judge(args: argparse.Namespace) -> int:

    from evaluation.judge import JudgeItem, judge_all, normalize_type, relative_scores, review_key
    from evaluation.report import judge_table, render_examples, write_metrics, write_report

    all_questions = read_records(args.questions)
    questions = _limited(all_questions, args.limit)
    for index, question in enumerate(questions):
        require_keys(question, ["question_id", "text", "image", "category"], f"{args.questions}, record {index + 1}")
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
    judge, judge_id = _build_judge(args)  # fail on a bad judge configuration before answering
    answers = _answers(args, questions, args.image_root, _question_ids(all_questions, args.questions))

    orders = ("reference_first", "model_first") if args.swap else ("reference_first",)
    from datagen.teachers import TeacherError

    with ResumableJsonl(Path(args.output_dir) / "reviews.jsonl", key="key") as store:
        other_judges = sorted({str(review["judge"]) for review in store} - {judge_id})
        if other_judges:  # one metrics file, one judge: never average scores of different judges
            raise ValueError(
                f"{store.path} holds reviews by another judge ({other_judges[0]!r}, not {judge_id!r}); "
                "use another --output-dir"
            )
        tasks = [
            (
                JudgeItem(
                    str(q["question_id"]),
                    q["category"],
                    q["text"].replace("<image>", "").strip(),
                    contexts[q["image"]],
                    references[str(q["question_id"])],
                    answers[str(q["question_id"])]["text"],
                ),
                order,
            )
            for q in questions
            for order in orders
            if review_key(str(q["question_id"]), order) not in store
        ]
        try:
            judge_all(
                judge,
                tasks,
                lambda review: store.append({"key": review_key(review["question_id"], review["order"]), **review}),
                judge_id=judge_id,
                max_attempts=args.judge_attempts,
                concurrency=args.judge_concurrency,
                progress=not args.no_progress,
            )
        except TeacherError as error:
            print(
                f"llava eval judge: the judge failed: {error}\n"
                f"(finished reviews are kept in {store.path}; rerun the same command to resume)",
                file=sys.stderr,
            )
            return 1
        wanted = {review_key(str(q["question_id"]), order) for q in questions for order in orders}
        reviews = [review for review in store if review["key"] in wanted]
    results = relative_scores(reviews)
    metrics = {
        "task": "judge",
        "model": _model_name(args),
        "judge": judge_id,
        "position_swap": args.swap,
        "questions": len(questions),
        "results": results,
    }
    write_metrics(args.output_dir, metrics)

    by_question: dict[str, list] = {}
    for review in reviews:
        by_question.setdefault(str(review["question_id"]), []).append(review)
    examples = []
    for question in questions[: args.report_examples]:
        question_id = str(question["question_id"])
        scores = [r["scores"] for r in by_question.get(question_id, [])]
        parsed = [s for s in scores if s is not None]
        score = (
            "unscored (judge reply unparseable)"
            if not parsed
            else " / ".join(f"model {s['model']:g}, reference {s['reference']:g}" for s in parsed)
            + f" — judge: {judge_id}"
        )
        examples.append(
            {
                "id": question_id,
                "image": question["image"],
                "question": question["text"].replace("<image>", "").strip(),
                "answer": answers[question_id]["text"],
                "reference": references[question_id],
                "score": score,
            }
        )
    write_report(
        args.output_dir,
        "Judge relative score (paper Table 3)",
        [
            (
                "Setup",
                f"- model: `{_model_name(args)}`\n- judge: {judge_id}\n- position swap: {'yes' if args.swap else 'no'}\n"
                f"- questions: {len(questions)}",
            ),
            ("Relative score", judge_table(results) + "\n\nRelative score = mean(model) / mean(reference) × 100."),
            ("Examples", render_examples(examples, args.output_dir, args.image_root)),
        ],
    )
    _print_done(args.output_dir, f"overall relative score {_pct(results.get('all', {}).get('relative_score'))}")
    return 0


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


def run_scienceqa(args: argparse.Namespace) -> int:
    from evaluation.report import render_examples, write_metrics, write_report
    from evaluation.scienceqa import (
        accuracy_by_category,
        ensemble_complement,
        ensemble_judge,
        extract_answer,
        format_table,
    )
    from processing.scienceqa import convert_split, load_scienceqa

    problems = load_scienceqa(args.data, args.split)
    all_records = convert_split(args.data, args.split, answer_first=args.answer_first)
    records = _limited(all_records, args.limit)
    problems = {r["id"]: problems[r["id"]] for r in records}
    questions = [
        {
            "question_id": r["id"],
            "text": r["conversations"][0]["value"],
            **({"image": r["image"]} if "image" in r else {}),
        }
        for r in records
    ]
    output_dir = Path(args.output_dir)
    write_records(output_dir / "questions.jsonl", questions)
    answers = _answers(args, questions, args.data, {str(r["id"]) for r in all_records})
    our_texts = {pid: answers[pid]["text"] for pid in problems}
    ours = {pid: extract_answer(our_texts[pid], len(problems[pid]["choices"])) for pid in problems}
    variant = "answer first" if args.answer_first else "reasoning first"
    rows = {f"{_model_name(args)} ({variant})": accuracy_by_category(problems, ours)}
    metrics: dict[str, Any] = {
        "task": "scienceqa",
        "split": args.split,
        "model": _model_name(args),
        "variant": variant,
        "unanswered": sum(v is None for v in ours.values()),
    }
    if args.teacher_predictions:
        teacher_texts = _load_teacher_predictions(args.teacher_predictions)
        teacher = {pid: extract_answer(teacher_texts.get(pid), len(problems[pid]["choices"])) for pid in problems}
        rows["teacher"] = accuracy_by_category(problems, teacher)
        rows["ours + teacher (complement)"] = accuracy_by_category(problems, ensemble_complement(ours, teacher))
        metrics["teacher_unanswered"] = sum(v is None for v in teacher.values())
        if args.judge:
            judge, judge_id = _build_judge(args)
            final, decisions = ensemble_judge(
                problems,
                ours,
                teacher,
                our_texts,
                teacher_texts,
                judge,
                judge_id=judge_id,
                max_attempts=args.judge_attempts,
            )
            rows["ours + teacher (judge)"] = accuracy_by_category(problems, final)
            write_records(output_dir / "ensemble_decisions.jsonl", decisions)
            metrics.update(
                judge=judge_id, arbitrated=len(decisions), arbiter_fallbacks=sum(d["fallback"] for d in decisions)
            )
    metrics["results"] = rows
    write_metrics(output_dir, metrics)

    examples = []
    for record in records[: args.report_examples]:
        pid = record["id"]
        verdict = "correct" if ours[pid] == record["scienceqa"]["answer"] else "wrong"
        examples.append(
            {
                "id": pid,
                "image": record.get("image"),
                "question": record["conversations"][0]["value"].replace("<image>", "").strip(),
                "answer": our_texts[pid],
                "reference": record["conversations"][1]["value"],
                "score": f"extracted {ours[pid] or 'nothing'}, expected {record['scienceqa']['answer']}: {verdict}",
            }
        )
    write_report(
        output_dir,
        f"ScienceQA {args.split} (paper Table 6)",
        [
            (
                "Setup",
                f"- model: `{_model_name(args)}` ({variant})\n- problems: {len(problems)}\n"
                f"- no answer extracted: {metrics['unanswered']}"
                + (f"\n- judge: {metrics['judge']}" if "judge" in metrics else ""),
            ),
            (
                "Accuracy (%)",
                format_table(rows) + "\n\nTXT: has a text context; IMG: has an image; NO: neither "
                "(a problem with both counts in TXT and IMG), as in ScienceQA's own evaluation.",
            ),
            ("Examples", render_examples(examples, output_dir, args.data)),
        ],
    )
    first = next(iter(rows.values()))
    _print_done(output_dir, f"average accuracy {_pct(first['average']['accuracy'])}")
    return 0


# ---------------------------------------------------------------- POPE
def run_pope(args: argparse.Namespace) -> int:
    from evaluation.pope import parse_yes_no, pope_metrics
    from evaluation.report import pope_table, render_examples, write_metrics, write_report

    all_questions = read_records(args.questions)
    questions = _limited(all_questions, args.limit)
    for index, question in enumerate(questions):
        require_keys(question, ["question_id", "text", "label"], f"{args.questions}, record {index + 1}")
        if question["label"] not in ("yes", "no"):
            raise ValueError(
                f"{args.questions}, record {index + 1}: label must be 'yes' or 'no', found {question['label']!r}"
            )
    answers = _answers(args, questions, args.image_root, _question_ids(all_questions, args.questions))
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
    write_metrics(args.output_dir, {"task": "pope", "model": _model_name(args), "results": results})
    examples = [
        {
            "id": str(q["question_id"]),
            "image": q.get("image"),
            "question": q["text"].replace("<image>", "").strip(),
            "answer": answers[str(q["question_id"])]["text"],
            "score": f"read as {predicted[str(q['question_id'])]}, label {q['label']}",
        }
        for q in questions[: args.report_examples]
    ]
    write_report(
        args.output_dir,
        "POPE object hallucination",
        [
            ("Setup", f"- model: `{_model_name(args)}`\n- questions: {len(questions)}"),
            (
                "Metrics (%)",
                pope_table(results) + '\n\n"yes" is the positive class; the yes-ratio is the share of '
                "answers read as yes (near 50% on balanced sets; higher means hallucinating objects).",
            ),
            ("Examples", render_examples(examples, args.output_dir, args.image_root)),
        ],
    )
    _print_done(args.output_dir, f"F1 {_pct(100 * results['all']['f1'])}, yes-ratio {results['all']['yes_ratio']:.3f}")
    return 0


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _print_done(output_dir: str | Path, summary: str) -> None:
    print(f"{summary}; wrote {Path(output_dir) / 'metrics.json'} and {Path(output_dir) / 'report.md'}")


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    judge = commands.add_parser(
        "judge",
        help="judge relative score (paper Table 3; LLaVA-Bench style)",
        description="A text-only judge scores the reference and the model's answer 1-10 "
        "from the image's captions and boxes; reports mean(model)/mean(reference)x100.",
    )
    judge.add_argument(
        "--questions", required=True, help="questions JSONL: {question_id, image, text, category: conv|detail|complex}"
    )
    judge.add_argument(
        "--contexts",
        required=True,
        help="contexts JSONL: {image, captions, boxes: [{name, bbox}]} (or LLaVA-Bench's instances)",
    )
    judge.add_argument(
        "--references", required=True, help="reference answers JSONL (teacher-written): {question_id, text}"
    )
    judge.add_argument("--image-root", default=None, help="folder the questions' image paths are relative to")
    judge.add_argument(
        "--swap", action="store_true", help="also judge with the answers swapped and average, cancelling position bias"
    )
    _add_model_arguments(judge, "--answers")
    _add_judge_arguments(judge, required=True)
    judge.set_defaults(func=run_judge)

    sqa = commands.add_parser(
        "scienceqa",
        help="ScienceQA accuracy by category (paper Table 6) and teacher ensembles",
        description="Answers a ScienceQA split (problems.json + pid_splits.json + images/) and reports "
        "NAT/SOC/LAN/TXT/IMG/NO/G1-6/G7-12/average accuracy.",
    )
    sqa.add_argument(
        "--data", required=True, help="ScienceQA folder with problems.json, pid_splits.json and images/<split>/<pid>/"
    )
    sqa.add_argument("--split", default="test", help="split of pid_splits.json to evaluate (default test)")
    sqa.add_argument(
        "--answer-first",
        action="store_true",
        help="the model was trained with answer-first targets (Table 7 ablation): labels the result and the "
        "stored references; the prompt is the same and extraction reads both formats",
    )
    sqa.add_argument(
        "--teacher-predictions",
        default=None,
        help="a teacher's predictions (JSONL {question_id, text} or JSON {pid: text}); adds the teacher's own "
        "row and the complement ensemble, and with --judge the judge ensemble",
    )
    _add_model_arguments(sqa, "--predictions")
    _add_judge_arguments(sqa, required=False)
    sqa.set_defaults(func=run_scienceqa)

    pope = commands.add_parser(
        "pope",
        help="POPE yes/no object-hallucination metrics",
        description="Accuracy, precision, recall, F1 and yes-ratio, overall and per `category`.",
    )
    pope.add_argument(
        "--questions", required=True, help="questions JSONL: {question_id, image, text, label: yes|no, category?}"
    )
    pope.add_argument("--image-root", default=None, help="folder the questions' image paths are relative to")
    _add_model_arguments(pope, "--answers")
    pope.set_defaults(func=run_pope)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"llava eval {args.command}: error: {error}", file=sys.stderr)
        return 2
