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
import array
import functools
import hashlib
import json
import multiprocessing
import os
import sys
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_output_file, write_json
from .images import DEFAULT_MAX_PIXELS, ImageLoadError, image_file_exists, load_image
from .length_bound import LengthBound, fixed_piece_template
from .llava_data import (
    DataProblem,
    check_records,
    llava_to_messages,
    record_images,
    special_tokens_in_text,
)
from .shape_render import ShapeRenderer

# Kinds of problems, in report order, with the words the report uses for them.
PROBLEM_KINDS = {
    "bad_encoding": "lines that are not UTF-8 text",
    "malformed_json": "malformed JSON",
    "bad_record": "malformed samples",
    "bad_image_path": "malformed image paths",
    "bad_turn": "malformed turns",
    "bad_text": "text that is not valid Unicode",
    "empty_conversation": "empty conversations",
    "turn_order": "wrongly ordered turns",
    "empty_turn": "empty turns",
    "image_outside_human_turn": "<image> outside a human turn",
    "image_token_mismatch": "<image> count != image count",
    "special_token_in_text": "chat markup (a special token) inside a turn's text",
    "unsafe_image_path": "image paths outside the image root",
    "missing_image": "missing images",
    "unreadable_image": "unreadable images",
    "too_long": "longer than max_length with images expanded",
}
# Problems of a line that could not be read at all (no JSON value): not counted as samples.
UNREADABLE_KINDS = ("bad_encoding", "malformed_json")


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
    def failing_lines(self) -> set[int]:
        """The lines (JSONL) or element start lines (JSON array) of every bad record and unreadable line: what
        training's `on_bad_data: skip` leaves out (by line, so that a bad record never takes a good one with
        the same id along)."""
        return {problem.line for problem in self.problems if problem.line is not None}

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


@dataclass(frozen=True)
class MeasuredSample:
    """Length of a sample in tokens with every image expanded, and how many of its tokens are supervised (inside
    the template's `{% generation %}` markers, image tokens excluded: they are never labels)."""

    length: int
    supervised: int


class SampleMeasure:
    """Measures samples exactly as training renders them, many at a time: the tokenizer's own batched
    `apply_chat_template` (one Jinja render per sample, one fast-tokenizer call per batch), with one `<image>` token
    per image and the processor's expansion to `image_seq_length` tokens added arithmetically (no pixels needed).

    `llava validate --max-length` and training's pre-training scan (`training.collators.scan_samples`) both use it.
    """

    def __init__(self, tokenizer, chat_template: str, image_token_id: int, image_seq_length: int, supervision: bool = True):
        if not isinstance(chat_template, str):
            raise ValueError("The processor has no chat template; the length check needs one to render samples.")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.image_token_id = image_token_id
        self.image_seq_length = image_seq_length
        # Counting supervised tokens needs the assistant mask, which transformers builds in a Python loop over every
        # token (a third of the time): only training's scan asks for it, and only a template with generation
        # markers can answer.
        self.masks = supervision and "generation" in chat_template
        # Without masks the rendered text is all that is tokenized, and a fixed-piece template's can be assembled
        # from one Jinja render per conversation shape (`ShapeRenderer`); the text, and so the length, is the same.
        self.renderer = None
        if not self.masks and fixed_piece_template(chat_template):
            self.renderer = ShapeRenderer(tokenizer, chat_template)

    @classmethod
    def from_processor(cls, processor, chat_template: str | None = None, supervision: bool = True) -> SampleMeasure:
        template = chat_template if chat_template is not None else getattr(processor, "chat_template", None)
        return cls(processor.tokenizer, template, processor.image_token_id, processor.image_seq_length, supervision)

    def identity(self) -> str:
        """A digest of everything a measured length depends on (cache key part): template, vocabulary and merges,
        image token and expansion, library versions."""
        import tokenizers
        import transformers

        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(self.tokenizer.get_vocab().items()))
        digest = hashlib.sha256()
        for part in (self.chat_template, vocabulary, json.dumps(self.tokenizer.special_tokens_map, sort_keys=True),
                     self.image_token_id, self.image_seq_length, self.masks, transformers.__version__, tokenizers.__version__):
            digest.update(str(part).encode("utf-8", "surrogatepass") + b"\0")
        return digest.hexdigest()

    def __call__(self, conversations: list[list[dict[str, Any]]]) -> list[MeasuredSample]:
        """Measure a batch of TRL-style message lists (typed content, `{"type": "image"}` blocks)."""
        if not conversations:
            return []
        if self.renderer is not None:
            return self._measure_rendered(conversations)
        encoded = self.tokenizer.apply_chat_template(
            conversations,
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=self.masks,
        )
        extra_per_image = self.image_seq_length - 1
        measured = []
        for position, input_ids in enumerate(encoded["input_ids"]):
            n_images = input_ids.count(self.image_token_id)
            masks = encoded["assistant_masks"][position] if self.masks else [0] * len(input_ids)
            supervised = sum(1 for token, keep in zip(input_ids, masks) if keep and token != self.image_token_id)
            measured.append(MeasuredSample(len(input_ids) + n_images * extra_per_image, supervised))
        return measured


    def _measure_rendered(self, conversations: list[list[dict[str, Any]]]) -> list[MeasuredSample]:
        texts = [self.renderer(messages) for messages in conversations]
        by_jinja = [position for position, text in enumerate(texts) if text is None]
        if by_jinja:
            rendered = self.tokenizer.apply_chat_template(
                [conversations[position] for position in by_jinja], chat_template=self.chat_template, tokenize=False
            )
            for position, text in zip(by_jinja, rendered):
                texts[position] = text
        # what apply_chat_template(tokenize=True) does with the text: the template writes the special tokens itself
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        extra_per_image = self.image_seq_length - 1
        return [MeasuredSample(len(ids) + ids.count(self.image_token_id) * extra_per_image, 0) for ids in encoded]


# Samples per batch given to the tokenizer: large enough for the Rust batch call to pay off, small enough that
# memory stays a few MB whatever the file size.
MEASURE_BATCH = 1024
_WORKER_MEASURE: SampleMeasure | None = None  # the measure a forked worker process inherits


def _measure_in_worker(conversations):
    return _WORKER_MEASURE(conversations)


def measure_batches(measure: SampleMeasure, batches, num_proc: int = 1):
    """Yield `(batch, measured)` for each batch of `(key, messages)` pairs, in order, on `num_proc` processes.

    Rendering is Python (one core per process) and tokenizing a batch is one Rust call, so processes are what
    scales on a CPU; at most `2 * num_proc` batches are in flight, so memory does not grow with the input.
    """
    batches = iter(batches)
    first = next(batches, None)
    second = next(batches, None) if first is not None else None
    if num_proc <= 1 or second is None:  # one batch is not worth starting processes for
        for batch in _chain(first, second, batches):
            yield batch, measure([messages for _, messages in batch])
        return
    global _WORKER_MEASURE
    _WORKER_MEASURE = measure
    # fork: the workers inherit the tokenizer instead of unpickling it; nothing has been measured in this process
    # yet, so the tokenizer's own thread pool is not left in a forked, locked state.
    with multiprocessing.get_context("fork").Pool(num_proc) as pool:
        in_flight = deque()
        for batch in _chain(first, second, batches):
            in_flight.append((batch, pool.apply_async(_measure_in_worker, ([messages for _, messages in batch],))))
            if len(in_flight) >= 2 * num_proc:
                done, result = in_flight.popleft()
                yield done, result.get()
        while in_flight:
            done, result = in_flight.popleft()
            yield done, result.get()
    _WORKER_MEASURE = None


def _chain(first, second, rest):
    for batch in (first, second):
        if batch is not None:
            yield batch
    yield from rest


def batched(items, size: int):
    """Lists of `size` consecutive items (the last one shorter); `itertools.batched` needs Python 3.12."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class LengthCache:
    """Measured lengths for one data file and one `SampleMeasure`, kept on disk between runs.

    The cache file is named after the data file's resolved path, the measure's identity (template, tokenizer,
    image expansion, library versions) and `kind` (what is measured: `validate` measures the data's own image
    placement, training its eq. (2) placement). Entries are keyed by a digest of the sample's content, so that an
    edited file, skipped lines or a new order never return a wrong length: a changed sample is a new key.
    Only the entries used by the last run are saved (atomically), so the file does not grow with edits.

    Entries live in flat arrays (16-byte digests, sorted, looked up a batch at a time with `np.searchsorted`), not
    in a dict of Python objects: 32 bytes per sample, ~21 MB for 665K samples instead of ~150 MB.
    """

    def __init__(self, cache_dir: str | os.PathLike, data_path: str | os.PathLike, measure: SampleMeasure, kind: str):
        path = Path(data_path).resolve()
        key = hashlib.sha256(f"{path}\0{kind}\0{measure.identity()}".encode("utf-8", "surrogateescape")).hexdigest()
        self.path = Path(cache_dir) / f"{path.stem[:40]}-{kind}-{key[:24]}.npz"
        self.digests = np.zeros(0, dtype="S16")
        self.values = np.zeros((0, 2), dtype=np.int64)
        if self.path.is_file():
            try:
                with np.load(self.path) as saved:
                    order = np.argsort(saved["digest"])
                    self.digests = saved["digest"][order]
                    self.values = np.stack([saved["length"][order], saved["supervised"][order]], axis=1)
            except (OSError, ValueError, KeyError):
                pass  # an unreadable cache is measured again, not an error
        self.hits = np.zeros(len(self.digests), dtype=bool)
        self.new_digests = bytearray()
        self.new_values = array.array("q")

    @staticmethod
    def key(content: Any) -> bytes:
        """The digest of a sample's content (its conversations or messages, any JSON value)."""
        text = json.dumps(content, ensure_ascii=False, sort_keys=True)
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def lookup(self, keys: list[bytes]) -> list[MeasuredSample | None]:
        """The cached measurement of each key, `None` where there is none."""
        if not len(self.digests) or not keys:
            return [None] * len(keys)
        wanted = np.array(keys, dtype="S16")
        positions = np.minimum(np.searchsorted(self.digests, wanted), len(self.digests) - 1)
        found = self.digests[positions] == wanted
        self.hits[positions[found]] = True
        return [MeasuredSample(*map(int, self.values[at])) if ok else None for at, ok in zip(positions, found)]

    def put(self, key: bytes, measured: MeasuredSample) -> None:
        self.new_digests += key
        self.new_values.extend((measured.length, measured.supervised))

    def save(self) -> None:
        if not self.new_values and self.hits.all():
            return
        digests = np.concatenate([self.digests[self.hits], np.frombuffer(bytes(self.new_digests), dtype="S16")])
        values = np.concatenate([self.values[self.hits], np.asarray(self.new_values, dtype=np.int64).reshape(-1, 2)])
        with atomic_output_file(self.path) as temporary, temporary.open("wb") as handle:
            np.savez(handle, digest=digests, length=values[:, 0], supervised=values[:, 1])


def cached_batches(candidates, cache: LengthCache | None, on_cached, to_messages):
    """Batches of `(item, messages)` left to measure, from `(item, content)` candidates: those `cache` already
    knows go to `on_cached(item, measured)` instead. Items become `(item, key)` so that results can be stored."""
    for batch in batched(candidates, MEASURE_BATCH):
        keys = [LengthCache.key(content) for _, content in batch] if cache is not None else [None] * len(batch)
        known = cache.lookup(keys) if cache is not None else [None] * len(batch)
        missing = []
        for (item, content), key, measured in zip(batch, keys, known):
            if measured is not None:
                on_cached(item, measured)
            else:
                missing.append(((item, key), to_messages(content)))
        if missing:
            yield missing


def default_cache_dir() -> Path:
    """`$LLAVA_CACHE_DIR`, else `$XDG_CACHE_HOME/llava` (`~/.cache/llava`), `lengths` below it."""
    root = os.environ.get("LLAVA_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llava"
    return Path(root) / "lengths"


# Image checks are remembered for this many distinct paths (images shared by several samples are decoded once);
# bounded so that memory does not grow with the dataset.
IMAGE_CHECK_MEMORY = 65_536


def check_dataset(
    data_path: str | os.PathLike,
    image_root: str | os.PathLike | None,
    processor=None,
    max_length: int | None = None,
    decode_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_proc: int = 1,
    cache_dir: str | os.PathLike | None = None,
    length_bound: bool = True,
) -> DatasetReport:
    """Check every sample of a LLaVA JSON/JSONL file and return a `DatasetReport`.

    Args:
        data_path: the dataset file.
        image_root: folder the image paths are relative to. `None` skips the image checks (reported as such
            only through `num_images`), for text-only data.
        processor: a `LlavaProcessor` with a chat template; needed for the `max_length` check. With it, text
            holding one of its tokenizer's special tokens (chat markup such as `<|im_end|>`) is reported too.
        max_length: longest allowed sample in tokens, images expanded.
        decode_images: decode each image completely (finds truncated data); `False` only checks that the files
            exist, which is much faster on large sets.
        num_proc: processes that measure lengths (see `measure_batches`).
        cache_dir: keep measured lengths there between runs (`LengthCache`); `None` measures every time.
        length_bound: leave out of the measurement the samples that `processing.length_bound.LengthBound` proves
            short enough (the report is the same); `False` measures every sample.
    """
    if max_length is not None and processor is None:
        raise ValueError("The max_length check needs a processor (its tokenizer, template and image_seq_length).")
    report = DatasetReport(path=str(data_path))
    image_problem = functools.lru_cache(maxsize=IMAGE_CHECK_MEMORY)(
        lambda image: _image_problem(image_root, image, decode_images, max_pixels)
    )
    special_tokens = special_tokens_in_text(processor.tokenizer) if processor is not None else ()
    usable = _usable_samples(report, data_path, image_root, image_problem, special_tokens)
    if max_length is None:
        for _ in usable:
            pass
    else:
        measure = SampleMeasure.from_processor(processor, supervision=False)
        cache = LengthCache(cache_dir, data_path, measure, "validate") if cache_dir is not None else None
        bound = LengthBound.for_measure(measure) if length_bound else None
        if bound is not None:
            usable = (sample for sample in usable if not _within(bound(sample[1]), max_length))
        _check_lengths(report, usable, measure, max_length, num_proc, cache)
    report.problems.sort(key=lambda problem: problem.line if problem.line is not None else 0)
    return report


def _within(bound: int | None, max_length: int) -> bool:
    return bound is not None and bound <= max_length


def _usable_samples(report: DatasetReport, data_path, image_root, image_problem, special_tokens=()):
    """Run the structural and image checks of every line into `report`; yield `(checked, conversations)` for
    each sample without a problem (the ones whose length is worth measuring)."""
    for checked in check_records(data_path, image_root, special_tokens):
        report.problems.extend(checked.problems)
        if checked.problems and checked.problems[0].kind in UNREADABLE_KINDS:
            continue
        report.num_samples += 1
        if checked.record is None:
            continue
        structural = {problem.kind for problem in checked.problems}
        images = record_images(checked.record) if not structural & {"bad_record", "bad_image_path"} else []
        report.num_images += len(images)
        if image_root is not None and not structural & {"unsafe_image_path"}:
            for image in images:
                found = image_problem(image)
                if found is not None:
                    report.problems.append(DataProblem(*found, str(data_path), checked.line, checked.sample_id))
        if not checked.problems:
            yield checked, checked.record["conversations"]


def _check_lengths(report: DatasetReport, samples, measure: SampleMeasure, max_length: int, num_proc: int, cache) -> None:
    """Measure `(checked, conversations)` samples (from `cache` where it knows them) into `report`."""
    on_cached = functools.partial(_check_length, report, max_length=max_length)
    batches = cached_batches(samples, cache, on_cached, llava_to_messages)
    for batch, measured in measure_batches(measure, batches, num_proc):
        for ((checked, key), _), result in zip(batch, measured):
            if cache is not None:
                cache.put(key, result)
            _check_length(report, checked, result, max_length)
    if cache is not None:
        cache.save()


def _check_length(report: DatasetReport, checked, measured: MeasuredSample, max_length: int) -> None:
    """Add a `too_long` problem for `checked` when `measured` is over `max_length`."""
    if measured.length > max_length:
        report.problems.append(
            DataProblem(
                "too_long",
                f"{measured.length} tokens with images expanded, more than max_length={max_length}",
                report.path,
                checked.line,
                checked.sample_id,
            )
        )


def _image_problem(image_root, image: str, decode: bool, max_pixels: int) -> tuple[str, str] | None:
    try:
        if decode:
            load_image(image_root, image, max_pixels)
        elif not image_file_exists(image_root, image):
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
    parser.add_argument(
        "--num-proc", type=int, default=os.cpu_count() or 1,
        help="processes that measure lengths for --max-length (default: every CPU core)",
    )
    parser.add_argument(
        "--cache-dir", default=None,
        help="where measured lengths are kept between runs (default $LLAVA_CACHE_DIR or ~/.cache/llava; the key is "
        "the data file and the processor, and a changed sample is measured again)",
    )
    parser.add_argument("--no-cache", action="store_true", help="measure every length again and keep nothing")
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
        args.data, args.image_root, processor=processor, max_length=args.max_length, decode_images=not args.no_decode,
        num_proc=max(1, args.num_proc), cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
    )
    print(report.format(max_ids=args.max_ids))
    if args.json:
        write_json(args.json, report.to_dict())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
