"""Batched generation: left-padded batches through the model's processor and chat template, and the
resumable answering of a question file built on it.

Question file (LLaVA's evaluation format, JSONL): one `{"question_id", "text", "image"?, ...}` per
line; `text` may contain the `<image>` placeholder (it is removed: the chat template places the
image), `image` is a path relative to `image_root`. Predictions (JSONL): one
`{"question_id", "prompt", "text", "model_id", "generation"}` per answered question, written as
soon as its batch is done, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from inference.messages import build_messages, render_prompt
from inference.settings import DEFAULT_BATCH_SIZE, GenerationSettings
from processing.images import load_image
from processing.jsonl_store import ResumableJsonl, require_keys


class BatchAnswerer:
    """Generates answers for batches of (messages, images) with left padding."""

    def __init__(self, model, processor, settings: GenerationSettings | None = None) -> None:
        self.model = model
        self.processor = processor
        self.settings = settings or GenerationSettings()
        tokenizer = processor.tokenizer
        # Left padding keeps every prompt's last token at the end of the row, where generation starts.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def prompts(self, conversations: Sequence[list[dict[str, Any]]]) -> list[str]:
        return [render_prompt(self.processor, messages) for messages in conversations]

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
        settings.prepare_model(self.model)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def answer_in_batches(
    answerer: Callable[..., list[str]],
    items: Sequence[dict[str, Any]],
    batch_size: int,
    question: Callable[[dict[str, Any]], str],
    image: Callable[[dict[str, Any]], Any] | None,
) -> Iterator[tuple[list[dict[str, Any]], list[str]]]:
    """The one batching loop: `(batch, answers)` for consecutive batches of `items`.

    `question(item)` is the question text; `image(item)` its image, or `image=None` for text-only items (a
    batch is all one or all the other: callers group them).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        batch = list(items[start : start + batch_size])
        conversations = [build_messages(question(item), 0 if image is None else 1) for item in batch]
        answers = answerer(conversations, [image(item) for item in batch] if image is not None else None)
        if len(answers) != len(batch):
            raise RuntimeError(f"the answerer returned {len(answers)} answers for a batch of {len(batch)}")
        yield batch, answers


def _check_questions(questions: Sequence[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for index, question in enumerate(questions):
        require_keys(question, ["question_id", "text"], f"question {index + 1}")
        question_id = str(question["question_id"])
        if question_id in seen:
            raise ValueError(f"question_id {question_id!r} appears more than once in the question file")
        seen.add(question_id)


def _check_model(store: ResumableJsonl, output_path: str | os.PathLike, model_id: str) -> None:
    others = sorted({str(record.get("model_id")) for record in store} - {model_id})
    if others:
        raise ValueError(
            f"{output_path} holds predictions of another model ({others[0]!r}, not {model_id!r}); "
            "use another output folder, or delete the file to start over"
        )


def answer_question_file(
    questions: Sequence[dict[str, Any]],
    answerer: Callable[..., list[str]],
    output_path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
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
    _check_questions(questions)
    with ResumableJsonl(output_path) as store:
        _check_model(store, output_path, model_id)
        todo = [q for q in questions if str(q["question_id"]) not in store]
        settings = getattr(answerer, "settings", None)
        generation = asdict(settings) if settings is not None else None
        progress = tqdm(total=len(questions), initial=len(questions) - len(todo), desc="answering", unit="q",
                        disable=not show_progress)
        groups = (
            ([q for q in todo if q.get("image")], lambda q: load_image(image_root or ".", q["image"])),
            ([q for q in todo if not q.get("image")], None),
        )
        for group, image in groups:
            for batch, answers in answer_in_batches(answerer, group, batch_size, lambda q: q["text"], image):
                for question, answer in zip(batch, answers):
                    store.append({"question_id": question["question_id"], "prompt": question["text"],
                                  "text": answer, "model_id": model_id, "generation": generation})
                progress.update(len(batch))
        progress.close()
        return {str(q["question_id"]): store.get(q["question_id"]) for q in questions}
