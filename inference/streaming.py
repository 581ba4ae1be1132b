"""Streaming one answer (terminal chat, web demo): generation in a background thread, text pieces as they
are decoded, the template's stop marker never shown."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList

from inference.messages import render_prompt, template_stop_string
from inference.settings import CHAT_MAX_NEW_TOKENS, GenerationSettings


def _held_back(text: str, stop: str) -> int:
    """Length of the longest end of `text` that could be the start of `stop` (not shown yet)."""
    for length in range(min(len(stop) - 1, len(text)), 0, -1):
        if stop.startswith(text[-length:]):
            return length
    return 0


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _visible_pieces(pieces: Iterator[str], stop: str | None, finished: threading.Event) -> Iterator[str]:
    """The decoded pieces up to (not including) the stop marker; text that may be the marker's start is held
    back until it is known not to be. Seeing the marker sets `finished`."""
    text, shown = "", 0
    for piece in pieces:
        text += piece
        if stop and stop in text:
            finished.set()
            visible = text[: text.index(stop)]
        else:
            visible = text[: len(text) - _held_back(text, stop)] if stop else text
        if len(visible) > shown:
            yield visible[shown:]
            shown = len(visible)
    if not (stop and stop in text) and len(text) > shown:
        yield text[shown:]


def stream_answer(model, processor, messages: list[dict[str, Any]], image=None,
                  options: GenerationSettings | None = None) -> Iterator[str]:
    """Generate the assistant's next answer to `messages`, yielding text pieces as they are decoded.

    `image` (a PIL image) is the conversation's image: it must be given whenever a message holds an
    image block. Generation runs in a background thread feeding a `TextIteratorStreamer`; the stop
    marker of the template ends generation and is never shown. Closing the iterator early stops
    the generation too.
    """
    import torch
    from transformers import TextIteratorStreamer

    options = options or GenerationSettings(max_new_tokens=CHAT_MAX_NEW_TOKENS)
    tokenizer = processor.tokenizer
    inputs = processor(images=[image] if image is not None else None, text=render_prompt(processor, messages),
                       return_tensors="pt").to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    # Set when the answer is complete (stop marker seen) or nobody listens any more (the caller stopped
    # iterating, e.g. a web client left): generation then ends at the next token instead of running on.
    # Multi-token markers such as "###" are no EOS token, so they are detected here, on the text.
    finished = threading.Event()
    options.prepare_model(model)
    kwargs = dict(**inputs, **options.generate_kwargs(), streamer=streamer,
                  stopping_criteria=StoppingCriteriaList([_StopWhenSet(finished)]))
    if tokenizer.pad_token_id is not None:
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    stop = template_stop_string(processor)
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as error:  # re-raised in the caller's thread below
            failure.append(error)
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    try:
        yield from _visible_pieces(streamer, stop, finished)
    finally:
        finished.set()
        thread.join()
    if failure:
        raise failure[0]
