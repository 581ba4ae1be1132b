"""`llava generate-data`: teacher-generated visual instruction data (paper §3).

For every (image, response type) pair not yet done, the teacher gets the Table 10 prompt, the reply
is parsed and validated, and the result is appended at once to one of two append-only files:

- `OUT.jsonl`: accepted samples in the LLaVA format (plus `image_id` and `type`), one per line;
- `OUT.rejected.jsonl`: rejected replies with the reason, never part of the dataset.

A re-run reads both and skips what is done, so a crash or `kill -9` loses at most the requests in
flight. Rejections of kind `"content"` (empty, unparseable, truncated replies) are skipped on
re-runs unless `--retry-rejected`; rejections of kind `"request"` (the teacher could not be reached
after its retries, or sent a malformed body) are retried by every re-run, since they cost nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from datagen.prompting import (
    RESPONSE_TYPES,
    ImageContext,
    ParseError,
    build_messages,
    format_context,
    load_contexts,
    parse_reply,
    render_messages,
    sample_rng,
    to_llava_sample,
)
from processing.jsonl_store import AppendOnlyJsonl
from datagen.concurrency import bounded_map
from datagen.teachers import (
    GENERATION_TEACHER,
    Teacher,
    TeacherError,
    TeacherReply,
    TokenUsage,
    add_teacher_arguments,
    teacher_from_args,
)
from processing.files import write_json


def rejected_path(output: str | Path) -> Path:
    """Where the rejections of `output` go: `OUT.rejected.jsonl` next to it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rejected.jsonl")


@dataclass
class GenerationSummary:
    """What one run did. `cost` is `None` when no prices were given."""

    planned: int = 0
    skipped_done: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    dropped_torn_lines: int = 0

    def add_rejection(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def format(self) -> str:
        lines = [
            f"requests planned: {self.planned} (skipped as already done: {self.skipped_done})",
            f"accepted: {self.accepted}",
            f"rejected: {sum(self.rejected.values())}" + "".join(f"\n  {n} x {r}" for r, n in sorted(self.rejected.items())),
            f"tokens: {self.prompt_tokens} prompt + {self.completion_tokens} completion",
            "estimated cost: " + (f"{self.cost:.4f}" if self.cost is not None else "not estimated (give --price-input/--price-output)"),
        ]
        if self.dropped_torn_lines:
            lines.append(f"dropped {self.dropped_torn_lines} torn last line(s) left by an interrupted run")
        return "\n".join(lines)


def judge_reply(reply: TeacherReply, response_type: str, context: ImageContext, seed: int) -> tuple[str, str, dict[str, Any] | None]:
    """Validate a reply: `("", "", sample)` when accepted, else `(category, reason, None)`.

    Categories: `truncated` (finish_reason "length"), `empty`, `unparseable`.
    """
    if reply.truncated:
        return "truncated", "truncated (finish_reason=length)", None
    if not reply.text.strip():
        return "empty", "empty reply", None
    try:
        turns = parse_reply(response_type, reply.text, sample_rng(seed, context.id, response_type))
    except ParseError as err:
        return "unparseable", f"unparseable: {err}", None
    # Draw the image position from a second stream so it does not depend on how many draws parsing made.
    return "", "", to_llava_sample(context, response_type, turns, sample_rng(seed + 1, context.id, response_type))


def plan_requests(
    contexts: Iterable[ImageContext], types: Iterable[str], done: set[tuple[str, str]]
) -> tuple[list[tuple[ImageContext, str]], int]:
    """The (context, type) pairs still to request, in file order, and how many were skipped as done."""
    todo, skipped = [], 0
    for context in contexts:
        for response_type in types:
            if (context.id, response_type) in done:
                skipped += 1
            else:
                todo.append((context, response_type))
    return todo, skipped


def done_keys(
    accepted: list[dict[str, Any]], rejected: list[dict[str, Any]], retry_rejected: bool
) -> set[tuple[str, str]]:
    """(image id, type) pairs a run must skip: accepted ones, and content rejections unless retried."""
    keys = {(r["image_id"], r["type"]) for r in accepted}
    if not retry_rejected:
        keys |= {(r["image_id"], r["type"]) for r in rejected if r.get("kind") == "content"}
    return keys


def _peek_records(path: Path) -> list[dict[str, Any]]:
    """The complete lines of an output file, without repairing it (for `--dry-run`)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1] if line.strip()]


def _record_outcome(
    future: Future,
    context: ImageContext,
    response_type: str,
    seed: int,
    accepted_file: AppendOnlyJsonl,
    rejected_file: AppendOnlyJsonl,
    summary: GenerationSummary,
) -> TokenUsage:
    """Append the result of one finished request to the right file; return the tokens it used."""
    key = {"image_id": context.id, "type": response_type}
    try:
        reply = future.result()
    except TeacherError as err:
        rejected_file.append({**key, "kind": "request", "reason": f"request failed: {err}"})
        summary.add_rejection("request failed")
        return TokenUsage()
    category, reason, sample = judge_reply(reply, response_type, context, seed)
    if sample is not None:
        accepted_file.append(sample)
        summary.accepted += 1
    else:
        rejected_file.append({**key, "kind": "content", "reason": reason, "finish_reason": reply.finish_reason, "text": reply.text})
        summary.add_rejection(category)
    return reply.usage


def run_generation(
    contexts: list[ImageContext],
    types: list[str],
    teacher: Teacher,
    output: str | Path,
    concurrency: int = 4,
    seed: int = 0,
    retry_rejected: bool = False,
    price_input: float | None = None,
    price_output: float | None = None,
    progress: bool = True,
) -> GenerationSummary:
    """Request, validate and append every missing (image, type) sample; return the run's summary.

    At most `concurrency` requests are in flight. Results are written by this thread as they
    arrive, so the files never see interleaved lines.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    summary = GenerationSummary()
    usage = TokenUsage()
    with AppendOnlyJsonl(output) as accepted_file, AppendOnlyJsonl(rejected_path(output)) as rejected_file:
        summary.dropped_torn_lines = sum(f.dropped_torn_line is not None for f in (accepted_file, rejected_file))
        todo, summary.skipped_done = plan_requests(contexts, types, done_keys(accepted_file.records, rejected_file.records, retry_rejected))
        summary.planned = len(todo)

        def request(context: ImageContext, response_type: str) -> TeacherReply:
            return teacher.complete(build_messages(response_type, format_context(context)))

        outcomes = bounded_map(request, todo, concurrency, total=len(todo), desc="generate-data", progress=progress)
        for (context, response_type), future in outcomes:
            usage += _record_outcome(future, context, response_type, seed, accepted_file, rejected_file, summary)

    summary.prompt_tokens, summary.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    if price_input is not None or price_output is not None:
        summary.cost = usage.cost(price_input or 0.0, price_output or 0.0)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava generate-data",
        description="Generate visual instruction data with a text-only teacher LLM (paper §3): for each "
        "image of the contexts file and each response type, prompt the teacher with the captions and "
        "boxes, validate the reply and append it to OUT (LLaVA format). Re-running resumes.",
    )
    parser.add_argument("--contexts", required=True, help="contexts JSONL (`llava coco-contexts` writes one)")
    parser.add_argument(
        "--types",
        default=",".join(RESPONSE_TYPES),
        help="comma-separated response types among conversation, detail, complex (default: all three)",
    )
    parser.add_argument("--output", required=True, help="accepted samples, JSON lines; rejections go to OUT.rejected.jsonl and the summary to OUT.summary.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Table 9 question and <image> placement draws")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of the contexts file")
    parser.add_argument("--retry-rejected", action="store_true", help="also re-request samples whose reply was rejected as empty/unparseable/truncated")
    parser.add_argument("--price-input", type=float, default=None, help="price per million prompt tokens, for the cost estimate")
    parser.add_argument("--price-output", type=float, default=None, help="price per million completion tokens, for the cost estimate")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true", help="print the first full prompt and the planned request count; send nothing")
    # Spelled --teacher-model, --teacher-temperature, ... like the judge's --judge-*; the short names stay.
    add_teacher_arguments(parser, "teacher", GENERATION_TEACHER, model_required=True, unprefixed_aliases=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in types if t not in RESPONSE_TYPES]
    if unknown or not types:
        print(f"llava generate-data: unknown --types {unknown or args.types!r}; expected some of {', '.join(RESPONSE_TYPES)}", file=sys.stderr)
        return 2
    contexts = load_contexts(args.contexts)[: args.limit]

    if args.dry_run:
        # Read without repairing: a dry run must not modify the output files.
        done = done_keys(_peek_records(Path(args.output)), _peek_records(rejected_path(args.output)), args.retry_rejected)
        todo, skipped = plan_requests(contexts, types, done)
        if todo:
            context, response_type = todo[0]
            print(f"first prompt ({response_type}, image {context.id}):\n")
            print(render_messages(build_messages(response_type, format_context(context))))
            print()
        print(f"planned requests: {len(todo)} ({len(contexts)} images x {len(types)} types, {skipped} already done)")
        return 0

    teacher = teacher_from_args(args, "teacher")
    print(f"teacher: {teacher.describe()}", file=sys.stderr)
    summary = run_generation(
        contexts,
        types,
        teacher,
        args.output,
        concurrency=args.teacher_concurrency,
        seed=args.seed,
        retry_rejected=args.retry_rejected,
        price_input=args.price_input,
        price_output=args.price_output,
        progress=not args.no_progress,
    )
    write_json(Path(args.output).with_name(f"{Path(args.output).stem}.summary.json"), asdict(summary), indent=1)
    print(summary.format())
    return 0
