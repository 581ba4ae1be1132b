"""Chatting with a LLaVA model: loading, prompt building from the model's own chat template, streaming.

Shared by `llava chat` (terminal) and `llava serve` (the Gradio web demo). The conversation format is
always the chat template shipped with the model (`chat_template.jinja`, read by its processor): the
format the model was trained with, never one guessed from the model's name. Its stop marker (what
the template writes after an answer: `###` for the paper's format, `<|im_end|>` for ChatML) is read
off the template too, by rendering a one-turn conversation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList

_ANSWER_PROBE = "ANSWER-PROBE-7f3a"


class ChatTemplateError(ValueError):
    """The model ships no usable chat template."""


@dataclass
class GenerationOptions:
    """Sampling settings of a chat (greedy by default: temperature 0)."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            kwargs["do_sample"] = False
        return kwargs


def load_model(model_id: str, device: str | None = None, dtype: str = "auto"):
    """Load a model folder or Hub repo id through the Auto classes (remote code), ready to generate.

    Raises:
        ChatTemplateError: the model has no chat template, naming the file it should have.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(model_id, trust_remote_code=True, dtype=torch_dtype)
    processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
    if not getattr(processor, "chat_template", None):
        raise ChatTemplateError(
            f"{model_id} ships no chat template (chat_template.jinja), so the conversation format it was trained "
            "with is unknown; re-export it with `llava export SRC OUT --chat-template NAME_OR_FILE`."
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def user_message(text: str, with_image: bool) -> dict[str, Any]:
    """A user turn in typed content; the image block comes first, as in the paper's stage-2 data."""
    content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def assistant_message(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def template_stop_string(processor) -> str | None:
    """What the model's template writes right after an answer (its `<STOP>`), or None if nothing."""
    rendered = processor.apply_chat_template(
        [user_message("question", with_image=False), assistant_message(_ANSWER_PROBE)], tokenize=False
    )
    if _ANSWER_PROBE not in rendered:
        return None
    stop = rendered.split(_ANSWER_PROBE, 1)[1].strip()
    return stop or None


def render_prompt(processor, messages: list[dict[str, Any]]) -> str:
    """The text the model is given: the conversation in the model's template, ready for its answer."""
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _held_back(text: str, stop: str) -> int:
    """Length of the longest end of `text` that could be the start of `stop` (not shown yet)."""
    for length in range(min(len(stop) - 1, len(text)), 0, -1):
        if stop.startswith(text[-length:]):
            return length
    return 0


def stream_answer(model, processor, messages: list[dict[str, Any]], image=None,
                  options: GenerationOptions | None = None) -> Iterator[str]:
    """Generate the assistant's next answer to `messages`, yielding text pieces as they are decoded.

    `image` (a PIL image) is the conversation's image: it must be given whenever a message holds an
    image block. Generation runs in a background thread feeding a `TextIteratorStreamer`; the stop
    marker of the template ends generation and is never shown. Closing the iterator early stops
    the generation too.
    """
    import torch
    from transformers import TextIteratorStreamer

    options = options or GenerationOptions()
    tokenizer = processor.tokenizer
    prompt = render_prompt(processor, messages)
    inputs = processor(images=[image] if image is not None else None, text=prompt, return_tensors="pt")
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    stop = template_stop_string(processor)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    # Set when the answer is complete (stop marker seen) or nobody listens any more (the caller stopped
    # iterating, e.g. a web client left): generation then ends at the next token instead of running on.
    # Multi-token markers such as "###" are no EOS token, so they are detected here, on the text.
    finished = threading.Event()
    kwargs = dict(**inputs, **options.generate_kwargs(), streamer=streamer,
                  stopping_criteria=StoppingCriteriaList([_StopWhenSet(finished)]))
    if tokenizer.pad_token_id is not None:
        kwargs["pad_token_id"] = tokenizer.pad_token_id
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
    text, shown = "", 0
    try:
        for piece in streamer:
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
    finally:
        finished.set()
        thread.join()
    if failure:
        raise failure[0]


class _StopWhenSet(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class ChatSession:
    """A multi-turn conversation about (at most) one image, as the paper's model was trained for."""

    model: Any
    processor: Any
    options: GenerationOptions = field(default_factory=GenerationOptions)
    image: Any = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    def set_image(self, image) -> None:
        """Switch to a new image; the conversation restarts (the model sees one image, in the first turn)."""
        self.image = image
        self.messages = []

    def clear(self) -> None:
        """Forget the conversation (the image stays)."""
        self.messages = []

    def prompt_for(self, text: str) -> str:
        """The prompt the next `ask(text)` would give the model."""
        return render_prompt(self.processor, self.messages + [user_message(text, self._image_in_turn())])

    def _image_in_turn(self) -> bool:
        return self.image is not None and not self.messages

    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to `text`; once complete, question and answer join the history."""
        messages = self.messages + [user_message(text, self._image_in_turn())]
        image = self.image if any(b["type"] == "image" for m in messages for b in m["content"]) else None
        answer = ""
        for piece in stream_answer(self.model, self.processor, messages, image, self.options):
            answer += piece
            yield piece
        self.messages = messages + [assistant_message(answer.strip())]
