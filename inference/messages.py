"""Messages in typed content, the prompt the model's chat template makes of them, and its stop marker.

The stop marker (what the template writes after an answer: `###` for the paper's format, `<|im_end|>` for
ChatML) is read off the template itself, by rendering a one-turn conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
_ANSWER_PROBE = "ANSWER-PROBE-7f3a"


def user_message(text: str, num_images: int = 0) -> dict[str, Any]:
    """A user turn in typed content: one image block per image first (as in the paper's stage-2 data), then
    the text."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(int(num_images))]
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def assistant_message(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def question_text(text: str) -> str:
    """A question-file question without its `<image>` placeholder (the chat template renders the image blocks)."""
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def build_messages(text: str, num_images: int) -> list[dict[str, Any]]:
    """A one-turn conversation for a question-file question (`question_text` of `text`)."""
    return [user_message(question_text(text), num_images)]


def has_image(messages: Sequence[dict[str, Any]]) -> bool:
    return any(block["type"] == "image" for message in messages for block in message["content"])


def render_prompt(processor, messages: Sequence[dict[str, Any]]) -> str:
    """The text the model is given: the conversation in the model's template, ready for its answer."""
    return processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def template_stop_string(processor) -> str | None:
    """What the model's template writes right after an answer (its `<STOP>`), or None if nothing."""
    rendered = processor.apply_chat_template(
        [user_message("question"), assistant_message(_ANSWER_PROBE)], tokenize=False
    )
    if _ANSWER_PROBE not in rendered:
        return None
    stop = rendered.split(_ANSWER_PROBE, 1)[1].strip()
    return stop or None


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """Cut `text` at the earliest of the stop strings (generation may run past them in a batch)."""
    cut = min((index for index in (text.find(stop) for stop in stops if stop) if index >= 0), default=len(text))
    return text[:cut]
