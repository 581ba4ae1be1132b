"""Data collators for the two LLaVA training stages, used with TRL's `SFTTrainer(data_collator=...)`.

Both stages render a conversation with a chat template that marks the supervised text with
`{% generation %}` … `{% endgeneration %}`, expand every `<image>` into the model's image tokens through the
processor, and supervise only the marked tokens:

- stage 1 (feature alignment) uses the `plain` template: `<bos><image…>caption\\n`, loss on the caption and its
  `\\n` only;
- stage 2 (instruction tuning) uses any template (the paper's, Vicuna v1, ChatML, …): loss on every assistant
  answer and its stop string only.

`stage_collator(processor, plan)` builds the collator of a stage (`training.stages.StagePlan`); `stage1_collator`
and `stage2_collator` are its two stages spelled out. With `packing_max_tokens` a collator packs each batch's
samples end to end into rows of at most that many tokens instead of padding them (`training.packing`).

With a custom collator TRL applies neither padding nor `max_length`, so the collator owns both. It never
truncates: cutting a sample would cut image tokens (and the model would then refuse the batch) or the answer
being learned. A sample longer than `max_length`, or one with no supervised token at all, is either an error
naming the sample or, with `on_bad_sample="skip"`, dropped from the batch and recorded in `collator.skipped`.
The training entry point runs the same checks over the whole dataset *before* training (`scan_samples`, called
by `training.train.prepare_dataset`), so in practice nothing is left to skip mid-run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers.feature_extraction_utils import BatchFeature

from .packing import pack_samples
from .stages import StagePlan


IGNORE_INDEX = -100
BAD_SAMPLE_POLICIES = ("error", "skip")


class UnusableSampleError(ValueError):
    """A training sample cannot be used as is (too long, or nothing to learn); the message names it."""


@dataclass(frozen=True)
class SkippedSample:
    """A sample a collator (or the pre-training checks) left out, and why; `file` and `line` say where it is in the
    data file when known (a line whose id cannot be read has only those)."""

    sample_id: str | None
    reason: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line} " if self.line is not None else ""
        return f"{where}sample {self.sample_id!r}: {self.reason}" if self.sample_id is not None else f"{where}{self.reason}"


def skipped_lines(report) -> list[SkippedSample]:
    """One `SkippedSample` per bad line of a `processing.validate.DatasetReport` (its problems joined), in file order."""
    by_line: dict[int | None, list] = {}
    for problem in report.problems:
        by_line.setdefault(problem.line, []).append(problem)
    return [
        SkippedSample(found[0].sample_id, "; ".join(f"{p.kind}: {p.message}" for p in found), found[0].file, line)
        for line, found in by_line.items()
    ]


def _sample_id(example: dict[str, Any], position: int) -> str:
    sample_id = example.get("id")
    return str(sample_id) if sample_id is not None else f"#{position} of the batch (no 'id' column)"


def _fill_images(messages: list[dict[str, Any]], images: Sequence[Any], image_token: str) -> list[dict[str, Any]]:
    """Put the sample's images into its `{"type": "image"}` blocks, in reading order.

    TRL's `prepare_multimodal_messages` does the same but moves images of string contents to the front of the
    first user turn; LLaVA data places them explicitly, so here the count must match exactly. The image token
    written as text (`"<image>"` inside a text block, which `llava_to_messages` never produces) is refused here:
    the processor would count it as an image and fail with its own error.
    """
    remaining = list(images)
    filled = []
    for message in messages:
        content = message["content"]
        texts = [content] if isinstance(content, str) else [b.get("text") for b in content if b.get("type") == "text"]
        if any(isinstance(text, str) and image_token in text for text in texts):
            raise UnusableSampleError(f"a text block holds the image token {image_token!r}; images need image blocks")
        if isinstance(content, list):
            new_content = []
            for block in content:
                if block.get("type") == "image" and block.get("image") is None:
                    if not remaining:
                        raise UnusableSampleError("the messages have more image blocks than the sample has images")
                    block = {"type": "image", "image": remaining.pop(0)}
                new_content.append(block)
            content = new_content
        filled.append({**message, "content": content})
    if remaining:
        raise UnusableSampleError(f"{len(remaining)} image(s) have no image block in the messages")
    return filled


@dataclass
class LlavaDataCollator:
    """Collate TRL vision examples (`messages` with typed content, `images`) into a LLaVA training batch.

    Args:
        processor: the `LlavaProcessor` of the model being trained (its tokenizer pads; its `image_seq_length`
            must match the model's).
        max_length: longest allowed sequence in tokens, image tokens included; `None` for no limit. Longer
            samples are never truncated (see `on_bad_sample`).
        chat_template: Jinja template to render with (a template *string*, see `processing.templates`);
            `None` uses the processor's own. It must mark the supervised text with `{% generation %}`.
        on_bad_sample: `"error"` raises `UnusableSampleError` naming the sample; `"skip"` drops it from the
            batch and appends a `SkippedSample` to `skipped`.
        pad_to_multiple_of: pad the batch length up to a multiple of this (tensor-core friendly shapes).
        packing_max_tokens: pack the batch's samples end to end into rows of at most this many tokens (a sample
            longer than that gets a row of its own, never split) instead of one padded row per sample; `None`
            pads. See `training.packing`.

    Returns batches with `input_ids`, `attention_mask`, `labels` (-100 outside the supervised text and on
    padding) and, when the batch has images, `pixel_values` in the order their image tokens appear. A packed
    batch has `position_ids` (restarting at 0 at every sample) instead of `attention_mask`.
    """

    processor: Any
    max_length: int | None = None
    chat_template: str | None = None
    on_bad_sample: Literal["error", "skip"] = "error"
    pad_to_multiple_of: int | None = None
    packing_max_tokens: int | None = None
    skipped: list[SkippedSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {self.on_bad_sample!r}")
        template = self.chat_template if self.chat_template is not None else self.processor.chat_template
        if not isinstance(template, str) or "generation" not in template:
            raise ValueError(
                "The chat template must mark the supervised text with {% generation %} ... {% endgeneration %}; "
                "use a template from processing.templates (e.g. 'plain' for stage 1, 'paper' for stage 2)."
            )
        if self.processor.tokenizer.pad_token_id is None:
            raise ValueError("The processor's tokenizer has no pad token; set tokenizer.pad_token before training.")
        if self.packing_max_tokens is not None and self.packing_max_tokens < 1:
            raise ValueError(f"packing_max_tokens must be a positive number of tokens, got {self.packing_max_tokens}")

    # ------------------------------------------------------------------------------------------------------------
    # One sample
    # ------------------------------------------------------------------------------------------------------------
    def encode(self, example: dict[str, Any]) -> dict[str, Any]:
        """Render and tokenize one example (images expanded); returns `input_ids`, `labels` and `pixel_values`."""
        images = list(example.get("images") or [])
        messages = _fill_images(example["messages"], images, self.processor.image_token)
        encoded = self.processor.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            # The templates write the BOS themselves; adding special tokens again would double it.
            processor_kwargs={"add_special_tokens": False, "padding": False, "truncation": False},
        )
        input_ids = encoded["input_ids"][0].tolist()
        image_token_id = self.processor.image_token_id
        # The one labelling rule: a token is learnt only inside the template's generation markers and never when it
        # is an image token, whatever the data says (an <image> in an answer is reported by the data checks too).
        labels = [
            token if keep and token != image_token_id else IGNORE_INDEX
            for token, keep in zip(input_ids, encoded["assistant_masks"][0].tolist())
        ]
        pixel_values = encoded.get("pixel_values") if images else None
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values, "images": images}

    def problem(self, encoded: dict[str, Any]) -> str | None:
        """Why an encoded sample cannot be trained on as is, or `None` when it can."""
        length = len(encoded["input_ids"])
        if self.max_length is not None and length > self.max_length:
            num_images = len(encoded["images"])
            return (
                f"{length} tokens (with {num_images} image(s) expanded to {self.processor.image_seq_length} tokens "
                f"each) is more than max_length={self.max_length}; it is not truncated because that would cut "
                "image tokens or the answer. Raise max_length or remove the sample."
            )
        if all(label == IGNORE_INDEX for label in encoded["labels"]):
            return "no supervised token (no assistant answer inside the chat template's generation markers)"
        return None

    # ------------------------------------------------------------------------------------------------------------
    # A batch
    # ------------------------------------------------------------------------------------------------------------
    def __call__(self, examples: list[dict[str, Any]]) -> BatchFeature:
        kept = []
        for position, example in enumerate(examples):
            try:
                encoded = self.encode(example)
                reason = self.problem(encoded)
            except UnusableSampleError as error:
                reason = str(error)
            if reason is None:
                kept.append(encoded)
                continue
            sample_id = _sample_id(example, position)
            if self.on_bad_sample == "error":
                raise UnusableSampleError(f"Training sample {sample_id}: {reason}")
            self.skipped.append(SkippedSample(sample_id, reason))
        if not kept:
            raise UnusableSampleError(
                f"Every sample of a batch was unusable ({[str(s) for s in self.skipped[-len(examples):]]}); "
                "check the dataset before training (llava validate, or the trainer's pre-training scan)."
            )
        return self.pad(kept) if self.packing_max_tokens is None else self.pack(kept)

    def pad(self, encoded: list[dict[str, Any]]) -> BatchFeature:
        """Right-pad encoded samples into tensors and concatenate their images."""
        pad_id = self.processor.tokenizer.pad_token_id
        length = max(len(sample["input_ids"]) for sample in encoded)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, sample in enumerate(encoded):
            size = len(sample["input_ids"])
            input_ids[row, :size] = torch.tensor(sample["input_ids"], dtype=torch.long)
            labels[row, :size] = torch.tensor(sample["labels"], dtype=torch.long)
            attention_mask[row, :size] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        pixel_values = [sample["pixel_values"] for sample in encoded if sample["pixel_values"] is not None]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values, dim=0)
        check_labels(batch, self.processor.image_token_id)
        return BatchFeature(batch)

    def pack(self, encoded: list[dict[str, Any]]) -> BatchFeature:
        """Pack encoded samples into as few rows of `packing_max_tokens` as first-fit decreasing finds, images in
        the order of their tokens (`training.packing.pack_samples`)."""
        batch, real = pack_samples(
            encoded, self.packing_max_tokens, self.processor.tokenizer.pad_token_id, self.pad_to_multiple_of
        )
        check_labels(batch, self.processor.image_token_id, real)
        return BatchFeature(batch)


def check_labels(batch: dict[str, torch.Tensor], image_token_id: int, real: torch.Tensor | None = None) -> None:
    """Refuse a batch that supervises an image token or a padding position: the invariant of every collated batch.

    `real` marks the positions that hold sample tokens (default: the batch's `attention_mask`; a packed batch has
    none). Two elementwise comparisons over `(batch, length)` integers, cheap next to a forward pass. It raises
    rather than `assert`s so that `python -O` cannot turn it off.
    """
    labels = batch["labels"]
    real = batch["attention_mask"] == 1 if real is None else real
    bad = (labels != IGNORE_INDEX) & ((batch["input_ids"] == image_token_id) | ~real)
    if bool(bad.any()):
        row, column = (int(index) for index in bad.nonzero()[0])
        raise AssertionError(
            f"labelling bug: batch row {row}, position {column} supervises an image or padding token "
            f"(input id {int(batch['input_ids'][row, column])}); image tokens and padding must be -100."
        )


def stage_collator(
    processor, plan: StagePlan, max_length: int | None = 2048, on_bad_sample: str = "error", **kwargs
) -> LlavaDataCollator:
    """The collator of a training stage: the plan's chat template (a name from `processing.templates`, a Jinja
    string, or `None` for the processor's own), loss on what its generation markers enclose. `kwargs` go to
    `LlavaDataCollator` (`pad_to_multiple_of`, `packing_max_tokens`)."""
    return LlavaDataCollator(
        processor,
        max_length=max_length,
        chat_template=resolve_template(plan.chat_template, processor),
        on_bad_sample=on_bad_sample,
        **kwargs,
    )


def stage1_collator(processor, **kwargs) -> LlavaDataCollator:
    """The stage-1 collator: the `plain` template (image then caption), loss on the caption and its end only."""
    return stage_collator(processor, StagePlan.for_stage(1), **kwargs)


def stage2_collator(processor, chat_template: str | None = None, **kwargs) -> LlavaDataCollator:
    """The stage-2 collator: multi-turn chats in `chat_template` (a name from `processing.templates`, a Jinja
    string, or `None` for the processor's own), loss on the assistant answers and their stop strings only."""
    return stage_collator(processor, StagePlan.for_stage(2, chat_template=chat_template), **kwargs)


def resolve_template(chat_template: str | None, processor) -> str | None:
    """A template name (`paper`, `plain`, ..., `own`) or Jinja string as a Jinja string; `None` (the processor's own
    template) is kept."""
    if chat_template is None:
        return None
    from processing.templates import resolve_chat_template

    return resolve_chat_template(chat_template, processor.tokenizer)


@dataclass(frozen=True)
class SampleScan:
    """What the pre-training scan learnt about one sample: its id, length (image tokens included), number of
    images and the reason it cannot be trained on (`None` when it can)."""

    sample_id: str
    length: int
    num_images: int
    problem: str | None


def scan_samples(dataset, collator: LlavaDataCollator, num_proc: int = 1, cache=None) -> list[SampleScan]:
    """Run the collator's per-sample checks over a whole TRL dataset before training, without decoding images.

    Length and supervision do not depend on pixels: `processing.validate.SampleMeasure` (the same code as
    `llava validate --max-length`) renders and tokenizes the samples in batches with one `<image>` token per image
    (the tokenizer's `apply_chat_template`, the same template and generation markers) and adds the processor's
    expansion of each `<image>` to `image_seq_length` tokens arithmetically. `num_proc` processes measure;
    `cache` is a `processing.validate.LengthCache` (or `None`) whose lengths are reused and extended.
    """
    from processing.validate import MEASURE_BATCH, SampleMeasure, cached_batches, measure_batches

    raw = dataset.with_format(None)  # drops a lazy image-loading transform: only the paths are needed
    measure = SampleMeasure.from_processor(collator.processor, collator.chat_template)
    scans: list[SampleScan | None] = [None] * len(raw)

    def add(position: int, row: dict, result) -> None:
        num_images = len(row.get("images") or [])
        # `problem` reads only lengths and whether any label is set: stand-ins carry exactly that.
        stand_in = {"input_ids": [None] * result.length, "labels": [1] * result.supervised or [IGNORE_INDEX],
                    "images": [None] * num_images}
        scans[position] = SampleScan(_sample_id(row, position), result.length, num_images, collator.problem(stand_in))

    def rows():  # ((position, row), messages), read from the Arrow table a batch at a time
        for start in range(0, len(raw), MEASURE_BATCH):
            chunk = raw[start : start + MEASURE_BATCH]
            for offset, messages in enumerate(chunk["messages"]):
                yield (start + offset, {name: chunk[name][offset] for name in ("id", "images") if name in chunk}), messages

    batches = cached_batches(rows(), cache, lambda item, measured: add(*item, measured), lambda messages: messages)
    for batch, measured in measure_batches(measure, batches, num_proc):
        for (((position, row), key), _), result in zip(batch, measured):
            if cache is not None:
                cache.put(key, result)
            add(position, row, result)
    if cache is not None:
        cache.save()
    return scans


def length_cache(data_path, collator: LlavaDataCollator, cache_dir=None):
    """The pre-training scan's `processing.validate.LengthCache` for `data_path` with the collator's template, in
    `cache_dir` (default `$LLAVA_CACHE_DIR` or `~/.cache/llava`, see `default_cache_dir`)."""
    from processing.validate import LengthCache, SampleMeasure, default_cache_dir

    measure = SampleMeasure.from_processor(collator.processor, collator.chat_template)
    return LengthCache(cache_dir or default_cache_dir(), data_path, measure, "train")


__all__ = [
    "IGNORE_INDEX",
    "LlavaDataCollator",
    "SkippedSample",
    "UnusableSampleError",
    "skipped_lines",
    "SampleScan",
    "check_labels",
    "length_cache",
    "scan_samples",
    "resolve_template",
    "stage_collator",
    "stage1_collator",
    "stage2_collator",
]
