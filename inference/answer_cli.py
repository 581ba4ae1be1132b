"""`llava answer --model M --questions Q.jsonl --output A.jsonl`: batch inference over a question file.

The batching is `inference.batch` (left-padded batches, image and text-only questions batched apart, a
progress bar, predictions appended per batch so an interrupted run resumes). This command adds only what
a plain "answer these questions" run needs on top: the model's own stop marker cut from each answer (for
templates whose stop is not an EOS token, e.g. the paper's `###`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from inference.loading import MODEL_HELP, add_device_arguments
from inference.settings import add_generation_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava answer",
        description=(
            "Answer every question of a JSONL file with a model, in left-padded batches, with a progress bar. "
            'Each line: {"question_id": ..., "text": "question", "image": "relative/path.jpg" (optional)}. '
            'Writes one {"question_id", "prompt", "text", "model_id", "generation"} line per answer to --output; '
            "re-running the same command after an interruption answers only what is missing."
        ),
    )
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--questions", required=True, help="question file (JSONL or JSON list)")
    parser.add_argument("--output", required=True, help="predictions JSONL (appended to and resumed)")
    parser.add_argument("--image-root", default=None, help="folder the questions' image paths are relative to")
    add_device_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_generation_arguments(parser)
    return parser


class StopTrimmingAnswerer:
    """A `BatchAnswerer` whose answers end before the model template's stop marker."""

    def __init__(self, answerer, stop: str | None) -> None:
        self.answerer = answerer
        self.settings = answerer.settings
        self.stops = [stop] if stop else []

    def __call__(self, conversations, images, settings=None) -> list[str]:
        from inference.messages import truncate_at_stops

        return [truncate_at_stops(answer, self.stops).strip() for answer in self.answerer(conversations, images, settings)]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from inference.batch import BatchAnswerer, answer_question_file
    from inference.loading import load_model_and_processor
    from inference.messages import template_stop_string
    from inference.settings import GenerationSettings
    from processing.jsonio import read_records

    try:
        questions: list[dict[str, Any]] = list(read_records(args.questions))
        model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
        answerer = StopTrimmingAnswerer(BatchAnswerer(model, processor, GenerationSettings.from_args(args)),
                                        template_stop_string(processor))
        answers = answer_question_file(questions, answerer, args.output, image_root=args.image_root,
                                       batch_size=args.batch_size, model_id=args.model,
                                       show_progress=not args.no_progress)
    except (ValueError, OSError, KeyError) as error:
        print(f"llava answer: {error}", file=sys.stderr)
        return 1
    print(f"{len(answers)} answers in {args.output}")
    return 0
