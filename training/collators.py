"""Data collators for the two LLaVA training stages, used with TRL's `SFTTrainer(data_collator=...)`.

Both stages render a conversation with a chat template that marks the supervised text with
`{% generation %}` … `{% endgeneration %}`, expand every `<image>` into the model's image tokens through the
processor, and supervise only the marked tokens:

- stage 1 (feature alignment) uses the `plain` template: `<bos><image…>caption\\n`, loss on the caption and its
  `\\n` only;
- stage 2 (instruction tuning) uses any template (the paper's, Vicuna v1, ChatML, …): loss on every assistant
  answer and its stop string only.

With a custom collator TRL applies neither padding nor `max_length` (DESIGN §3), so the collators own both.
They never truncate: cutting a sample would cut image tokens (and the model would then refuse the batch) or the
answer being learned. A sample longer than `max_length`, or one with no supervised token at all, is either an
error naming the sample or, with `on_bad_sample="skip"`, dropped from the batch and recorded in
`collator.skipped`. The training entry point runs the same checks over the whole dataset *before* training
(`find_unusable_samples`), so in practice nothing is left to skip mid-run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers.feature_extraction_utils import BatchFeature


IGNORE_INDEX = -100
BAD_SAMPLE_POLICIES = ("error", "skip")


class UnusableSampleError(ValueError):
    """A training sample cannot be used as is (too long, or nothing to learn); the message names it."""


@dataclass(frozen=True)
class SkippedSample:
    """A sample a collator (or the pre-training scan) left out, and why."""

    sample_id: str
    reason: str

    def __str__(self) -> str:
        return f"sample {self.sample_id!r}: {self.reason}"


def _sample_id(example: dict[str, Any], position: int) -> str:
    sample_id = example.get("id")
    return str(sample_id) if sample_id is not None else f"#{position} of the batch (no 'id' column)"


def _fill_images(messages: list[dict[str, Any]], images: Sequence[Any]) -> list[dict[str, Any]]:
    """Put the sample's images into its `{"type": "image"}` blocks, in reading order.

    TRL's `prepare_multimodal_messages` does the same but moves images of string contents to the front of the
    first user turn; LLaVA data places them explicitly, so here the count must match exactly.
    """
    remaining = list(images)
    filled = []
    for message in messages:
        content = message["content"]
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

    Returns batches with `input_ids`, `attention_mask`, `labels` (-100 outside the supervised text and on
    padding) and, when the batch has images, `pixel_values` in the order their image tokens appear.
    """

    processor: Any
    max_length: int | None = None
    chat_template: str | None = None
    on_bad_sample: Literal["error", "skip"] = "error"
    pad_to_multiple_of: int | None = None
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

    # ------------------------------------------------------------------------------------------------------------
    # One sample
    # ------------------------------------------------------------------------------------------------------------
    def encode(self, example: dict[str, Any]) -> dict[str, Any]:
        """Render and tokenize one example (images expanded); returns `input_ids`, `labels` and `pixel_values`."""
        images = list(example.get("images") or [])
        messages = _fill_images(example["messages"], images)
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
        labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, encoded["assistant_masks"][0].tolist())]
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
        return self.pad(kept)

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
        return BatchFeature(batch)


def stage1_collator(processor, max_length: int | None = 2048, on_bad_sample: str = "error", **kwargs) -> LlavaDataCollator:
    """The stage-1 collator: the `plain` template (image then caption), loss on the caption and its end only."""
    from processing.templates import get_chat_template

    return LlavaDataCollator(
        processor, max_length=max_length, chat_template=get_chat_template("plain"), on_bad_sample=on_bad_sample, **kwargs
    )


def stage2_collator(
    processor, max_length: int | None = 2048, chat_template: str | None = None, on_bad_sample: str = "error", **kwargs
) -> LlavaDataCollator:
    """The stage-2 collator: multi-turn chats in `chat_template` (a name from `processing.templates`, a Jinja
    string, or `None` for the processor's own), loss on the assistant answers and their stop strings only."""
    return LlavaDataCollator(
        processor,
        max_length=max_length,
        chat_template=resolve_template(chat_template, processor),
        on_bad_sample=on_bad_sample,
        **kwargs,
    )


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


def scan_samples(dataset, collator: LlavaDataCollator) -> list[SampleScan]:
    """Run the collator's per-sample checks over a whole TRL dataset before training, without decoding images.

    Length and supervision do not depend on pixels: each sample is rendered and tokenized with one `<image>`
    token per image (the tokenizer's `apply_chat_template`, the same template and generation markers), and the
    processor's expansion of each `<image>` to `image_seq_length` tokens is added arithmetically.
    """
    raw = dataset.with_format(None)  # drops a lazy image-loading transform: only the paths are needed
    tokenizer = collator.processor.tokenizer
    template = collator.chat_template if collator.chat_template is not None else collator.processor.chat_template
    extra_per_image = collator.processor.image_seq_length - 1
    scans = []
    for position, row in enumerate(raw):
        rendered = tokenizer.apply_chat_template(
            row["messages"], chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        num_images = len(row.get("images") or [])
        input_ids = list(rendered["input_ids"]) + [None] * (num_images * extra_per_image)
        labels = [1 if keep else IGNORE_INDEX for keep in rendered["assistant_masks"]]
        problem = collator.problem({"input_ids": input_ids, "labels": labels, "images": [None] * num_images})
        scans.append(SampleScan(_sample_id(row, position), len(input_ids), num_images, problem))
    return scans


def find_unusable_samples(dataset, collator: LlavaDataCollator) -> list[SkippedSample]:
    """The samples of `dataset` the collator would refuse (see `scan_samples`)."""
    return [SkippedSample(scan.sample_id, scan.problem) for scan in scan_samples(dataset, collator) if scan.problem]


__all__ = [
    "IGNORE_INDEX",
    "LlavaDataCollator",
    "SkippedSample",
    "UnusableSampleError",
    "SampleScan",
    "find_unusable_samples",
    "scan_samples",
    "resolve_template",
    "stage1_collator",
    "stage2_collator",
]
