"""`llava chat --model M [--image IMG]`: multi-turn chat about an image in the terminal, streamed.

Reads one message per line from standard input, so it works interactively and driven through a
pipe. Commands: `/image PATH` switches to another image (and starts a new conversation), `/clear`
forgets the conversation, `/help` lists them, `/quit` (or end of input) leaves.
"""

from __future__ import annotations

import argparse
import sys

from inference.loading import MODEL_HELP, add_device_arguments
from inference.settings import CHAT_MAX_NEW_TOKENS, GenerationSettings, add_generation_arguments

HELP = """commands:
  /image PATH   switch to another image (starts a new conversation: the model sees one image, in the first turn)
  /clear        forget the conversation (keep the image)
  /help         show this help
  /quit         leave (end of input does the same)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava chat",
        description=(
            "Chat with a LLaVA model about an image, answers streamed as they are generated. The conversation "
            "format is the chat template shipped with the model. " + HELP.replace("\n", " ")
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=HELP,
    )
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--image", default=None, help="image to talk about (optional; /image PATH switches later)")
    add_generation_arguments(parser, max_new_tokens=CHAT_MAX_NEW_TOKENS, batched=False)
    add_device_arguments(parser)
    parser.add_argument("--show-prompt", action="store_true",
                        help="print each full prompt (the rendered chat template) to stderr before answering")
    return parser


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot open image {path}: {error}") from error


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from inference.chat import ChatSession
    from inference.loading import load_model_and_processor

    try:
        image = _open_image(args.image) if args.image else None
        model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
    except (ValueError, OSError) as error:  # ChatTemplateError is a ValueError
        print(f"llava chat: {error}", file=sys.stderr)
        return 1
    session = ChatSession(model, processor, GenerationSettings.from_args(args))
    session.set_image(image)
    interactive = sys.stdin.isatty()
    print(f"chatting with {args.model}" + (f" about {args.image}" if args.image else " (no image)")
          + "; /help for commands", file=sys.stderr)
    while True:
        try:
            line = input("USER: ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive:
            if not line:
                break
            print(f"USER: {line.rstrip()}")
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/help":
            print(HELP)
            continue
        if text == "/clear":
            session.clear()
            print("(conversation cleared)")
            continue
        if text.startswith("/image"):
            path = text[len("/image"):].strip()
            try:
                session.set_image(_open_image(path))
            except ValueError as error:
                print(f"llava chat: {error}", file=sys.stderr)
                continue
            print(f"(now talking about {path}; new conversation)")
            continue
        if args.show_prompt:
            print(f"--- prompt ---\n{session.prompt_for(text)}\n--- end of prompt ---", file=sys.stderr, flush=True)
        print("ASSISTANT: ", end="", flush=True)
        for piece in session.ask(text):
            print(piece, end="", flush=True)
        print(flush=True)
    return 0
