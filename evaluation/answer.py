"""Batched answering: run a model over a question file and keep resumable JSONL predictions.

Question file (LLaVA's evaluation format, JSONL): one `{"question_id", "text", "image"?, ...}` per
line; `text` may contain the `<image>` placeholder (it is removed: the chat template places the
image), `image` is a path relative to `--image-root`. Predictions (JSONL): one
`{"question_id", "prompt", "text", "model_id", "generation"}` per answered question, written as
soon as its batch is done, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from evaluation.io import ResumableJsonl, require_keys
from processing.images import load_image

IMAGE_PLACEHOLDER = "<image>"


@dataclass
class GenerationSettings:
    """Generation settings taken from the command line (greedy decoding by default, as in the paper's
    evaluation scripts: temperature 0)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            kwargs["do_sample"] = False
        return kwargs

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("generation")
        group.add_argument(
            "--max-new-tokens", type=int, default=256, help="Most tokens generated per answer (default 256)."
        )
        group.add_argument(
            "--temperature", type=float, default=0.0, help="Sampling temperature; 0 = greedy (default)."
        )
        group.add_argument(
            "--top-p", type=float, default=None, help="Nucleus sampling threshold (only with --temperature > 0)."
        )
        group.add_argument("--num-beams", type=int, default=1, help="Beam search width (default 1 = no beam search).")
        group.add_argument(
            "--batch-size", type=int, default=8, help="Questions per generate call, left-padded (default 8)."
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerationSettings:
        return cls(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            num_beams=args.num_beams,
        )


def load_model_and_processor(model_id: str, device: str | None = None, dtype: str = "auto"):
    """Load a model folder or Hub id through the Auto classes (remote code allowed), for inference."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(model_id, trust_remote_code=True, dtype=torch_dtype)
    processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def build_messages(text: str, num_images: int) -> list[dict[str, Any]]:
    """One user turn with typed content: one image block per image first, then the text (any
    `<image>` placeholder in `text` is removed: the chat template renders the image blocks)."""
    question = text.replace(IMAGE_PLACEHOLDER, "").strip()
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """Cut `text` at the earliest of the stop strings (generation may run past them in a batch)."""
    cut = min((index for index in (text.find(stop) for stop in stops if stop) if index >= 0), default=len(text))
    return text[:cut]


class BatchAnswerer:
    """Generates answers for batches of (messages, image) with left padding."""

    def __init__(self, model, processor, settings: GenerationSettings) -> None:
        self.model = model
        self.processor = processor
        self.settings = settings
        tokenizer = processor.tokenizer
        # Left padding keeps every prompt's last token at the end of the row, where generation starts.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def prompts(self, conversations: Sequence[list[dict[str, Any]]]) -> list[str]:
        return [
            self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            for messages in conversations
        ]

    def __call__(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        images: Sequence[Any] | None,
        settings: GenerationSettings | None = None,
    ) -> list[str]:
        """Answer one batch. `images` holds the batch's images in the order of their image blocks
        (one per conversation for question files), or is `None`/empty for a text-only batch."""
        import torch

        settings = settings or self.settings
        texts = self.prompts(conversations)
        inputs = self.processor(images=list(images) if images else None, text=texts, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tokenizer = self.processor.tokenizer
        with torch.inference_mode():
            output = self.model.generate(**inputs, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def answer_questions(
    questions: Sequence[dict[str, Any]],
    answerer: Callable[..., list[str]],
    output_path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    batch_size: int = 8,
    model_id: str = "",
    show_progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Answer every question not yet in `output_path`; return all predictions by question id.

    Questions with and without an image are batched separately (a batch is either all image
    questions or all text-only ones). Each finished batch is appended to the JSONL file at once.
    The answerer's `settings` (a `GenerationSettings`), when it has them, are stored with each answer.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seen: set[str] = set()
    for index, question in enumerate(questions):
        require_keys(question, ["question_id", "text"], f"question {index + 1}")
        question_id = str(question["question_id"])
        if question_id in seen:
            raise ValueError(f"question_id {question_id!r} appears more than once in the question file")
        seen.add(question_id)

    with ResumableJsonl(output_path) as store:
        others = sorted({str(r.get("model_id")) for r in store} - {model_id})
        if others:
            raise ValueError(
                f"{output_path} holds predictions of another model ({others[0]!r}, not {model_id!r}); "
                "use another output folder, or delete the file to start over"
            )
        todo = [q for q in questions if str(q["question_id"]) not in store]
        with_image = [q for q in todo if q.get("image")]
        text_only = [q for q in todo if not q.get("image")]
        settings = getattr(answerer, "settings", None)
        generation = asdict(settings) if settings is not None else None
        progress = tqdm(
            total=len(questions),
            initial=len(questions) - len(todo),
            desc="answering",
            unit="q",
            disable=not show_progress,
        )
        for group in (with_image, text_only):
            for start in range(0, len(group), batch_size):
                batch = group[start : start + batch_size]
                conversations = [build_messages(q["text"], 1 if q.get("image") else 0) for q in batch]
                images = [load_image(image_root or ".", q["image"]) for q in batch] if batch[0].get("image") else None
                answers = answerer(conversations, images)
                if len(answers) != len(batch):
                    raise RuntimeError(f"the answerer returned {len(answers)} answers for a batch of {len(batch)}")
                for question, answer in zip(batch, answers):
                    store.append(
                        {
                            "question_id": question["question_id"],
                            "prompt": question["text"],
                            "text": answer,
                            "model_id": model_id,
                            "generation": generation,
                        }
                    )
                progress.update(len(batch))
        progress.close()
        return {str(q["question_id"]): store.get(q["question_id"]) for q in questions}
