"""Dataset checks shared by `llava validate` and training: find every sample that would train wrongly.

`check_dataset` scans a LLaVA JSON/JSONL file and reports, with counts and sample ids: unreadable lines
(malformed JSON, non-UTF-8 text), malformed samples, empty or wrongly ordered turns, `<image>` placeholders
that do not match the images, image paths leaving the image root, missing or unreadable images, and (given a
processor and `max_length`) samples longer than `max_length` once each image is expanded to its image tokens.
Training calls it and either refuses to start or skips `report.failing_ids` with the report printed; it never
truncates image tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, resolve_image_path
from .llava_data import DataProblem, conversation_problems, iter_raw_records, llava_to_messages, record_images


# Kinds of problems, in report order, with the words the report uses for them.
PROBLEM_KINDS = {
    "bad_encoding": "lines that are not UTF-8 text",
    "malformed_json": "malformed JSON",
    "bad_record": "malformed samples",
    "bad_turn": "malformed turns",
    "empty_conversation": "empty conversations",
    "turn_order": "wrongly ordered turns",
    "empty_turn": "empty turns",
    "image_token_mismatch": "<image> count != image count",
    "unsafe_image_path": "image paths outside the image root",
    "missing_image": "missing images",
    "unreadable_image": "unreadable images",
    "too_long": "longer than max_length with images expanded",
}


@dataclass
class DatasetReport:
    """What `check_dataset` found. `problems` lists each one; `failing_ids` are the samples to refuse or skip."""

    path: str
    num_samples: int = 0
    num_images: int = 0
    problems: list[DataProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def failing_ids(self) -> set[str]:
        return {problem.sample_id for problem in self.problems if problem.sample_id is not None}

    @property
    def unlocated_problems(self) -> list[DataProblem]:
        """Problems that no sample id can be given for (unreadable lines): skipping by id cannot remove them."""
        return [problem for problem in self.problems if problem.sample_id is None]

    def counts(self) -> dict[str, int]:
        return dict(Counter(problem.kind for problem in self.problems))

    def format(self, max_ids: int = 10) -> str:
        """A human-readable report: totals, then each kind of problem with its count and example locations."""
        lines = [f"{self.path}: {self.num_samples} samples, {self.num_images} image references"]
        if self.ok:
            lines.append("no problems found")
            return "\n".join(lines)
        lines.append(f"{len(self.problems)} problem(s) in {len(self.failing_ids)} sample(s)" + (
            f" and {len(self.unlocated_problems)} unreadable line(s)" if self.unlocated_problems else ""
        ))
        by_kind: dict[str, list[DataProblem]] = defaultdict(list)
        for problem in self.problems:
            by_kind[problem.kind].append(problem)
        for kind in sorted(by_kind, key=list(PROBLEM_KINDS).index):
            found = by_kind[kind]
            lines.append(f"  {PROBLEM_KINDS[kind]} ({kind}): {len(found)}")
            for problem in found[:max_ids]:
                lines.append(f"    {problem}")
            if len(found) > max_ids:
                lines.append(f"    ... and {len(found) - max_ids} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "num_samples": self.num_samples,
            "num_images": self.num_images,
            "counts": self.counts(),
            "failing_ids": sorted(self.failing_ids),
            "problems": [vars(problem) for problem in self.problems],
        }


class SampleLength:
    """Token length of a sample once rendered with a chat template and with each image expanded."""

    def __init__(self, processor):
        if not isinstance(getattr(processor, "chat_template", None), str):
            raise ValueError("The processor has no chat template; the length check needs one to render samples.")
        self.processor = processor

    def __call__(self, conversations: list[dict[str, str]]) -> int:
        text = self.processor.apply_chat_template(llava_to_messages(conversations), tokenize=False)
        tokens = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        # Each <image> is one token in `tokens` and becomes image_seq_length tokens in the model's input.
        n_images = tokens.count(self.processor.image_token_id)
        return len(tokens) + n_images * (self.processor.image_seq_length - 1)


def check_dataset(
    data_path: str | os.PathLike,
    image_root: str | os.PathLike | None,
    processor=None,
    max_length: int | None = None,
    decode_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DatasetReport:
    """Check every sample of a LLaVA JSON/JSONL file and return a `DatasetReport`.

    Args:
        data_path: the dataset file.
        image_root: folder the image paths are relative to. `None` skips the image checks (reported as such
            only through `num_images`), for text-only data.
        processor: a `LlavaProcessor` with a chat template; needed for the `max_length` check.
        max_length: longest allowed sample in tokens, images expanded.
        decode_images: decode each image completely (finds truncated data); `False` only checks that the files
            exist, which is much faster on large sets.
    """
    if max_length is not None and processor is None:
        raise ValueError("The max_length check needs a processor (its tokenizer, template and image_seq_length).")
    measure = SampleLength(processor) if max_length is not None else None
    report = DatasetReport(path=str(data_path))
    checked_images: dict[str, tuple[str, str] | None] = {}  # path -> (kind, reason) or None when fine
    for item in iter_raw_records(data_path):
        if isinstance(item, DataProblem):
            report.problems.append(item)
            continue
        report.num_samples += 1
        record = item.value
        sample_id = str(record["id"]) if isinstance(record, dict) and "id" in record else f"line {item.line}"

        def add(kind: str, message: str) -> None:
            report.problems.append(DataProblem(kind, message, str(data_path), item.line, sample_id))

        structure = conversation_problems(record)
        for kind, message in structure:
            add(kind, message)
        if not isinstance(record, dict):
            continue
        images = record_images(record) if not any(kind == "bad_record" for kind, _ in structure) else []
        report.num_images += len(images)
        if image_root is not None:
            for image in images:
                if image not in checked_images:
                    checked_images[image] = _image_problem(image_root, image, decode_images, max_pixels)
                if checked_images[image] is not None:
                    add(*checked_images[image])
        if measure is not None and not structure:
            length = measure(record["conversations"])
            if length > max_length:
                add("too_long", f"{length} tokens with images expanded, more than max_length={max_length}")
    return report


def _image_problem(image_root, image: str, decode: bool, max_pixels: int) -> tuple[str, str] | None:
    try:
        if decode:
            load_image(image_root, image, max_pixels)
        elif not resolve_image_path(image_root, image).is_file():
            raise ImageLoadError(image, "no such image file", "missing_image")
    except ImageLoadError as error:
        return error.kind, str(error)
    return None


def main(argv: list[str] | None = None) -> int:
    """`llava validate DATA --image-root DIR [--processor DIR] [--max-length N]`."""
    parser = argparse.ArgumentParser(
        prog="llava validate",
        description=(
            "Check a LLaVA JSON/JSONL dataset before training: unreadable lines, malformed or wrongly ordered "
            "conversations, <image> placeholders that do not match the images, missing/unreadable/unsafe images, "
            "and samples longer than --max-length once images are expanded. Exits with status 1 if anything "
            "is found, 0 otherwise."
        ),
    )
    parser.add_argument("data", help="the dataset file (JSON array or JSONL, LLaVA format)")
    parser.add_argument("--image-root", help="folder the samples' image paths are relative to (omit for text-only data)")
    parser.add_argument(
        "--processor",
        help="a saved processor folder (e.g. the model folder), loaded with trust_remote_code=True; needed for --max-length",
    )
    parser.add_argument("--max-length", type=int, help="longest allowed sample in tokens, each image expanded to its image tokens")
    parser.add_argument(
        "--no-decode", action="store_true", help="only check that image files exist instead of decoding each one (faster)"
    )
    parser.add_argument("--max-ids", type=int, default=10, help="problems listed per kind in the printed report (default 10)")
    parser.add_argument("--json", metavar="PATH", help="also write the full report (every problem and failing id) as JSON")
    args = parser.parse_args(argv)
    if args.max_length is not None and args.processor is None:
        parser.error("--max-length needs --processor")
    if not Path(args.data).is_file():
        parser.error(f"no such dataset file: {args.data}")

    processor = None
    if args.processor is not None:
        from transformers import AutoProcessor

        from processing.templates import require_image_template

        processor = AutoProcessor.from_pretrained(args.processor, trust_remote_code=True)
        require_image_template(processor, args.processor)
    report = check_dataset(
        args.data, args.image_root, processor=processor, max_length=args.max_length, decode_images=not args.no_decode
    )
    print(report.format(max_ids=args.max_ids))
    if args.json:
        target = Path(args.json)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        temporary.replace(target)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
