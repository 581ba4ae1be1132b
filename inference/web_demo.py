"""`llava serve --model M [--port P]`: the paper's visual chat demo as a Gradio app on localhost.

Upload an image, ask about it, and watch the answer stream in; follow-up questions continue the
conversation about the same image, a new image starts a new conversation (the model sees one image,
in the first turn, as it was trained). The conversation format is the model's own chat template.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from inference.loading import MODEL_HELP, add_device_arguments
from inference.settings import CHAT_MAX_NEW_TOKENS, GenerationSettings, add_generation_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava serve",
        description="Serve the visual chat web demo (Gradio) for a model: image upload, chat, streamed answers.",
    )
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    add_generation_arguments(parser, max_new_tokens=CHAT_MAX_NEW_TOKENS, batched=False)
    add_device_arguments(parser)
    return parser


# The demo's own replies to refused requests start with these; such a turn never reaches the model.
REFUSED = "Question refused:"
NOT_AN_IMAGE = "not an image:"


def _text_of(content: Any) -> str:
    """A chat message's text: Gradio 6 hands a Chatbot's history back with each message's content as a list of
    typed blocks (`[{"type": "text", "text": ...}]`), the handler's own history holds plain strings."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    return "".join(block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text")


def _is_refusal(entry: dict[str, Any]) -> bool:
    return entry["role"] == "assistant" and _text_of(entry["content"]).startswith((REFUSED, NOT_AN_IMAGE))


def _to_model_messages(history: list[dict[str, Any]], has_image: bool) -> list[dict[str, Any]]:
    """Gradio's chat history (text messages) -> typed-content messages, the image in the first user turn. Turns the
    demo refused (the question and the refusal) are left out."""
    from inference.messages import assistant_message, user_message

    kept = []
    for entry in history:
        if _is_refusal(entry):
            kept = kept[:-1] if kept and kept[-1]["role"] == "user" else kept
        else:
            kept.append(entry)
    messages = []
    for entry in kept:
        text = _text_of(entry["content"])
        if entry["role"] == "user":
            messages.append(user_message(text, num_images=int(has_image and not messages)))
        else:
            messages.append(assistant_message(text))
    return messages


@dataclass(frozen=True)
class NotAnImage:
    """An upload that could not be read as an image: what the chat reports instead of Gradio's generic error."""

    name: str
    reason: str

    def message(self) -> str:
        return f"{NOT_AN_IMAGE} {self.name} ({self.reason})"


@dataclass(frozen=True)
class QuestionLimits:
    """How long a question and a conversation may be, from the model's context and the answer length setting.

    `max_question_chars` is a cheap first gate that needs no tokenizing: a text of L characters is at least
    L / (longest vocabulary entry) tokens, so a question longer than `context_tokens` times that length cannot fit
    whatever it says; it is refused before the tokenizer (or the model) ever sees it.
    """

    context_tokens: int
    max_question_chars: int

    @classmethod
    def for_model(cls, model, processor) -> QuestionLimits:
        context = int(model.config.get_text_config().max_position_embeddings)
        longest_token = max((len(token) for token in processor.tokenizer.get_vocab()), default=1)
        return cls(context_tokens=context, max_question_chars=context * max(longest_token, 1))


def prompt_length(processor, messages: list[dict[str, Any]]) -> int:
    """Tokens the model reads for `messages`, each image block counted as the processor's image tokens."""
    from inference.messages import render_prompt

    tokens = processor.tokenizer(render_prompt(processor, messages), add_special_tokens=False)["input_ids"]
    return len(tokens) + tokens.count(processor.image_token_id) * (processor.image_seq_length - 1)


def _shown(question: str, limit: int = 200) -> str:
    return question if len(question) <= limit else f"{question[:limit]}... ({len(question):,} characters)"


def respond(model, processor, options, limits: QuestionLimits, image, question: str,
            history: list[dict[str, Any]]) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """One chat turn of the web demo: yields (chat history, question box text) as the answer streams in.

    Bad requests are answered in the chat, never raised (the server keeps serving): an upload that is not an
    image, a question longer than the model can read (refused before tokenizing), and a conversation that
    leaves no room for an answer. When the conversation leaves less room than `--max-new-tokens`, the answer is
    shortened to fit and the user is told.
    """
    from inference.streaming import stream_answer

    question = (question or "").strip()
    if not question:
        yield history, ""
        return
    history = list(history or [])
    if len(question) > limits.max_question_chars:
        yield history + [{"role": "user", "content": _shown(question)},
                         {"role": "assistant", "content": (
                             f"{REFUSED} it is {len(question):,} characters long, and this model reads at "
                             f"most {limits.context_tokens:,} tokens (questions are limited to "
                             f"{limits.max_question_chars:,} characters). Ask a shorter question.")}], ""
        return
    history = history + [{"role": "user", "content": question}]
    if isinstance(image, NotAnImage):
        yield history + [{"role": "assistant", "content": image.message()}], ""
        return
    messages = _to_model_messages(history, has_image=image is not None)
    room = limits.context_tokens - prompt_length(processor, messages)
    if room < 1:
        yield history[:-1] + [{"role": "user", "content": _shown(question)},
                              {"role": "assistant", "content": (
                                  f"{REFUSED} with it the conversation is {limits.context_tokens - room:,} "
                                  f"tokens, more than this model's context of {limits.context_tokens:,} tokens. Ask a "
                                  "shorter question or clear the conversation.")}], question
        return
    note = ""
    if room < options.max_new_tokens:
        options = replace(options, max_new_tokens=room)
        note = (f"\n\n(Answer limited to {room} tokens: the conversation fills the model's context of "
                f"{limits.context_tokens:,} tokens. Clear the conversation to continue.)")
    answer = ""
    yield history + [{"role": "assistant", "content": ""}], ""
    for piece in stream_answer(model, processor, messages, image, options):
        answer += piece
        yield history + [{"role": "assistant", "content": answer}], ""
    yield history + [{"role": "assistant", "content": answer.strip() + note}], ""


def _image_input(**kwargs):
    """A `gr.Image` whose unreadable uploads reach `respond` as `NotAnImage`: Gradio's own preprocessing opens the
    file with PIL before any handler runs, and its failure would show only Gradio's generic error. The instance's
    `preprocess` is wrapped rather than subclassed: Gradio writes a `.pyi` stub next to the source file of every
    component subclass."""
    import gradio as gr

    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def preprocess_or_report(payload):
        try:
            return preprocess(payload)
        except Exception as error:  # noqa: BLE001 - any unreadable upload is reported in the chat
            name = getattr(payload, "orig_name", None) or Path(getattr(payload, "path", None) or "upload").name
            return NotAnImage(name, str(error) or type(error).__name__)

    image.preprocess = preprocess_or_report
    return image


def build_demo(model, processor, options, title: str = "LLaVA visual chat"):
    """The Gradio `Blocks` app for an already-loaded model."""
    import gradio as gr

    turn = partial(respond, model, processor, options, QuestionLimits.for_model(model, processor))

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nUpload an image, then ask about it. A new image starts a new conversation.")
        with gr.Row():
            with gr.Column(scale=1):
                image = _image_input(type="pil", label="Image", elem_id="llava-image", sources=["upload", "clipboard"])
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", elem_id="llava-chat", height=420)
                question = gr.Textbox(placeholder="Ask about the image and press Enter", show_label=False,
                                      elem_id="llava-question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="llava-send")
                    clear = gr.Button("Clear conversation", elem_id="llava-clear")
        send.click(turn, [image, question, chatbot], [chatbot, question])
        question.submit(turn, [image, question, chatbot], [chatbot, question])
        clear.click(lambda: [], None, chatbot)
        image.change(lambda: [], None, chatbot)  # new image, new conversation
    return demo


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # No calls home from the demo (Gradio's usage analytics), and none needed for a local server.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from inference.loading import load_model_and_processor

    try:
        model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
    except (OSError, ValueError) as error:  # ChatTemplateError is a ValueError
        print(f"llava serve: {error}", file=sys.stderr)
        return 1
    demo = build_demo(model, processor, GenerationSettings.from_args(args),
                      title=f"LLaVA visual chat: {args.model}")
    print(f"serving {args.model} on http://{args.host}:{args.port}", flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False, quiet=True)
    return 0
