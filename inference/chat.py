"""A multi-turn chat about one image, over the inference layer (messages, streaming).

Shared by `llava chat` (terminal) and `llava serve` (the Gradio web demo). The conversation format is
always the chat template shipped with the model (`inference.loading`), its stop marker read off the
template (`inference.messages.template_stop_string`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from inference.messages import assistant_message, has_image, render_prompt, user_message
from inference.settings import CHAT_MAX_NEW_TOKENS, GenerationSettings
from inference.streaming import stream_answer


@dataclass
class ChatSession:
    """A multi-turn conversation about (at most) one image, as the paper's model was trained for."""

    model: Any
    processor: Any
    options: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=CHAT_MAX_NEW_TOKENS))
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
        return render_prompt(self.processor, self._with_question(text))

    def _with_question(self, text: str) -> list[dict[str, Any]]:
        image_in_turn = self.image is not None and not self.messages
        return self.messages + [user_message(text, num_images=int(image_in_turn))]

    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to `text`; once complete, question and answer join the history."""
        messages = self._with_question(text)
        image = self.image if has_image(messages) else None
        answer = ""
        for piece in stream_answer(self.model, self.processor, messages, image, self.options):
            answer += piece
            yield piece
        self.messages = messages + [assistant_message(answer.strip())]
