"""One recipe for every `llava eval` task: load and check the inputs, answer (or read a predictions file),
score, write `metrics.json` and `report.md` with a few examples, print a one-line summary.

A task is an `EvalTask`: its own command-line options and two hooks, `load` (inputs -> `Inputs`: the
questions to answer plus whatever scoring needs) and `score` (inputs + answers -> `Outcome`: metrics, report
tables, examples, summary). Answering is the inference layer's (`inference.batch`), resumable in
`OUTPUT_DIR/predictions.jsonl`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.loading import MODEL_HELP, add_device_arguments
from inference.settings import GenerationSettings, add_generation_arguments
from processing.jsonio import read_records
from processing.jsonl_store import ResumableJsonl, require_keys

REPORT_EXAMPLES = 6


@dataclass
class Inputs:
    """What a task's `load` found: the questions to answer (`question_id`, `text`, `image`?), the folder their
    images are under, every question id of the file (a predictions file is checked against all of them, even
    under `--limit`), and anything else `score` needs."""

    questions: list[dict[str, Any]]
    image_root: str | None
    known_ids: set[str]
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a task's `score` made of the answers: `metrics.json`, the report's setup lines and tables, its
    examples (the runner shows the first `--report-examples`) and the summary printed at the end."""

    metrics: dict[str, Any]
    title: str
    setup: list[str]
    tables: list[tuple[str, str]]
    examples: Iterable[dict[str, Any]]
    summary: str


class TaskFailed(Exception):
    """A failure the task explains itself (e.g. the judge gave up): reported as is, exit status 1."""


@dataclass(frozen=True)
class EvalTask:
    """One `llava eval` subcommand."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    load: Callable[[argparse.Namespace], Inputs]
    score: Callable[[argparse.Namespace, Inputs, dict[str, dict[str, Any]]], Outcome]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every task shares: the model or a predictions file, generation, output."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", help=MODEL_HELP)
    group.add_argument("--predictions", "--answers", dest="predictions", default=None,
                       help="score this predictions JSONL ({question_id, text}) instead of running --model")
    add_device_arguments(group)
    group.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions (quick checks)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generation_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="folder for predictions, metrics.json and report.md")
    parser.add_argument("--report-examples", type=int, default=REPORT_EXAMPLES,
                        help=f"examples shown in report.md (default {REPORT_EXAMPLES})")


def model_name(args: argparse.Namespace) -> str:
    return args.model or f"predictions from {args.predictions}"


def limited(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def question_ids(questions: list[dict[str, Any]], path: str) -> set[str]:
    for index, question in enumerate(questions):
        require_keys(question, ["question_id"], f"{path}, record {index + 1}")
    return {str(question["question_id"]) for question in questions}


def read_predictions(path: str, questions: list[dict[str, Any]], known: set[str]) -> dict[str, dict[str, Any]]:
    """A predictions file must answer every question and nothing else: a `question_id` that is not in the question
    file (`known`) means the file belongs to another question set, and scoring the rest would hide it. A
    question_id answered twice is refused too."""
    records = {}
    for index, record in enumerate(read_records(path)):
        where = f"{path}, record {index + 1}"
        require_keys(record, ["question_id", "text"], where)
        question_id = str(record["question_id"])
        if question_id not in known:
            raise ValueError(f"{where}: question_id {question_id!r} is not in the questions")
        if question_id in records:
            raise ValueError(f"{where}: question_id {question_id!r} is answered more than once")
        records[question_id] = record
    missing = [str(q["question_id"]) for q in questions if str(q["question_id"]) not in records]
    if missing:
        raise ValueError(f"{path}: no prediction for {len(missing)} question(s), e.g. {missing[:5]}")
    return records


def answers_for(args: argparse.Namespace, inputs: Inputs) -> dict[str, dict[str, Any]]:
    """Predictions for the questions: read from `--predictions`, or produced by `--model` into
    OUTPUT_DIR/predictions.jsonl (resuming whatever an earlier run of it finished)."""
    if args.predictions:
        return read_predictions(args.predictions, inputs.questions, inputs.known_ids)
    if not args.model:
        raise ValueError("give --model (to answer the questions) or a predictions file")
    from inference.batch import BatchAnswerer, answer_question_file
    from inference.loading import load_model_and_processor

    output = Path(args.output_dir) / "predictions.jsonl"
    with ResumableJsonl(output) as done:
        if all(str(q["question_id"]) in done for q in inputs.questions):  # finished: no need to load the model
            return {str(q["question_id"]): done.get(q["question_id"]) for q in inputs.questions}
    model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
    answerer = BatchAnswerer(model, processor, GenerationSettings.from_args(args))
    return answer_question_file(inputs.questions, answerer, output, image_root=inputs.image_root,
                                batch_size=args.batch_size, model_id=args.model, show_progress=not args.no_progress)


def run_task(task: EvalTask, args: argparse.Namespace) -> int:
    """The recipe: load, answer, score, write metrics and report, print the summary."""
    from evaluation.report import render_examples, write_metrics, write_report

    inputs = task.load(args)
    answers = answers_for(args, inputs)
    try:
        outcome = task.score(args, inputs, answers)
    except TaskFailed as failure:
        print(f"llava eval {task.name}: {failure}", file=sys.stderr)
        return 1
    write_metrics(args.output_dir, outcome.metrics)
    examples = list(itertools.islice(outcome.examples, args.report_examples))
    write_report(args.output_dir, outcome.title, [
        ("Setup", "\n".join(outcome.setup)),
        *outcome.tables,
        ("Examples", render_examples(examples, args.output_dir, inputs.image_root)),
    ])
    output_dir = Path(args.output_dir)
    print(f"{outcome.summary}; wrote {output_dir / 'metrics.json'} and {output_dir / 'report.md'}")
    return 0


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def build_parser(tasks: Iterable[EvalTask], description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava eval", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for task in tasks:
        command = commands.add_parser(task.name, help=task.help, description=task.description)
        task.add_arguments(command)
        command.set_defaults(task=task)
    return parser


def main(tasks: Iterable[EvalTask], argv: list[str] | None, description: str | None = None) -> int:
    args = build_parser(tasks, description).parse_args(argv)
    try:
        return run_task(args.task, args)
    except (ValueError, FileNotFoundError) as error:
        print(f"llava eval {args.command}: error: {error}", file=sys.stderr)
        return 2
