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
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava serve",
        description="Serve the visual chat web demo (Gradio) for a model: image upload, chat, streamed answers.",
    )
    parser.add_argument("--model", required=True, help="model folder or Hub repo id (loaded with trust_remote_code=True)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (with --temperature > 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights dtype (default: as saved)")
    return parser


def _to_model_messages(history: list[dict[str, Any]], has_image: bool) -> list[dict[str, Any]]:
    """Gradio's chat history (text messages) -> typed-content messages, the image in the first user turn."""
    from inference.chat import assistant_message, user_message

    messages = []
    for entry in history:
        text = entry["content"] if isinstance(entry["content"], str) else str(entry["content"])
        if entry["role"] == "user":
            messages.append(user_message(text, with_image=has_image and not messages))
        else:
            messages.append(assistant_message(text))
    return messages


def build_demo(model, processor, options, title: str = "LLaVA visual chat"):
    """The Gradio `Blocks` app for an already-loaded model."""
    import gradio as gr

    from inference.chat import stream_answer

    def respond(image, question: str, history: list[dict[str, Any]]) -> Iterator[tuple]:
        question = (question or "").strip()
        if not question:
            yield history, ""
            return
        history = list(history or []) + [{"role": "user", "content": question}]
        messages = _to_model_messages(history, has_image=image is not None)
        answer = ""
        yield history + [{"role": "assistant", "content": ""}], ""
        for piece in stream_answer(model, processor, messages, image, options):
            answer += piece
            yield history + [{"role": "assistant", "content": answer}], ""
        yield history + [{"role": "assistant", "content": answer.strip()}], ""

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nUpload an image, then ask about it. A new image starts a new conversation.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="Image", elem_id="llava-image", sources=["upload", "clipboard"])
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Conversation", elem_id="llava-chat", height=420)
                question = gr.Textbox(placeholder="Ask about the image and press Enter", show_label=False,
                                      elem_id="llava-question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="llava-send")
                    clear = gr.Button("Clear conversation", elem_id="llava-clear")
        send.click(respond, [image, question, chatbot], [chatbot, question])
        question.submit(respond, [image, question, chatbot], [chatbot, question])
        clear.click(lambda: [], None, chatbot)
        image.change(lambda: [], None, chatbot)  # new image, new conversation
    return demo


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # No calls home from the demo (Gradio's usage analytics), and none needed for a local server.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from inference.chat import ChatTemplateError, GenerationOptions, load_model

    try:
        model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
    except (ChatTemplateError, OSError, ValueError) as error:
        print(f"llava serve: {error}", file=sys.stderr)
        return 1
    demo = build_demo(model, processor, GenerationOptions(args.max_new_tokens, args.temperature, args.top_p),
                      title=f"LLaVA visual chat: {args.model}")
    print(f"serving {args.model} on http://{args.host}:{args.port}", flush=True)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False, quiet=True)
    return 0
