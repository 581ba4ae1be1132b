"""Training test fixtures: a tiny character-level tokenizer, a processor matching `tiny_llava_config`, and a
small LLaVA-format dataset with real (tiny) PNG images written to a temporary folder. Everything is offline."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import TINY_IMAGE_TOKEN_ID, TINY_VOCAB, tiny_llava_config


SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARACTERS = list(string.printable[:95]) + ["\n"]  # digits, letters, punctuation, space, newline
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]  # single tokens, so that ChatML samples stay short


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer whose ids fit `TINY_VOCAB`, with `<image>` at `TINY_IMAGE_TOKEN_ID`."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    for token in CHATML_TOKENS:
        vocab[token] = len(vocab)
    vocab["<image>"] = TINY_IMAGE_TOKEN_ID
    assert len(vocab) <= TINY_VOCAB and max(vocab.values()) == TINY_VOCAB - 1
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [*CHATML_TOKENS, "<image>"]})
    return tokenizer


def tiny_processor(template: str = "chatml"):
    """A `LlavaProcessor` for `tiny_llava_config()`: 30x30 images, 25 image tokens, the given chat template."""
    from transformers import CLIPImageProcessorPil

    from processing import LlavaProcessor
    from processing.templates import get_chat_template

    config = tiny_llava_config()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        chat_template=get_chat_template(template),
        image_seq_length=config.image_seq_length,
    )


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "white": (240, 240, 240)}


def write_images(root: Path) -> dict[str, str]:
    """One 40x32 PNG per colour, each with a little noise; returns colour -> relative path."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {}
    for name, rgb in COLOURS.items():
        pixels = np.clip(np.array(rgb)[None, None, :] + rng.integers(-20, 20, (32, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{name}.png")
        paths[name] = f"{name}.png"
    return paths


def caption_records(image_paths: dict[str, str], repeats: int = 4) -> list[dict]:
    """Stage-1 style records: one image and a short caption naming its colour."""
    records = []
    for repeat in range(repeats):
        for colour, path in image_paths.items():
            records.append(
                {
                    "id": f"cap-{colour}-{repeat}",
                    "image": path,
                    "conversations": [
                        {"from": "human", "value": "<image>\nDescribe the image briefly."},
                        {"from": "gpt", "value": f"a {colour} square"},
                    ],
                }
            )
    return records


def chat_records(image_paths: dict[str, str], repeats: int = 3) -> list[dict]:
    """Stage-2 style records: multi-turn image chats plus text-only chats."""
    records = []
    for repeat in range(repeats):
        for colour, path in image_paths.items():
            records.append(
                {
                    "id": f"chat-{colour}-{repeat}",
                    "image": path,
                    "conversations": [
                        {"from": "human", "value": "What colour is it?\n<image>"},
                        {"from": "gpt", "value": f"It is {colour}."},
                        {"from": "human", "value": "Sure?"},
                        {"from": "gpt", "value": "Yes."},
                    ],
                }
            )
        records.append(
            {
                "id": f"text-{repeat}",
                "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}],
            }
        )
    return records


def write_dataset(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def save_tiny_model(folder: Path, template: str = "chatml", seed: int = 0) -> Path:
    """Save `tiny_llava_model(seed)` and `tiny_processor(template)` as a loadable model folder."""
    from conftest import tiny_llava_model

    model = tiny_llava_model(seed)
    model.save_pretrained(folder)
    tiny_processor(template).save_pretrained(folder)
    return folder
