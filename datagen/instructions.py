"""The paper's instruction lists (Tables 8 and 9) and the naive stage-1 expansion of caption pairs.

Stage 1 (paper §3, §4.2) turns an image–caption pair into a one-turn conversation
`Human: X_q X_v <STOP> Assistant: X_c <STOP>`, with X_q drawn from the brief-description
instructions and the image placed before or after the question at random (eq. 2).

`llava expand-captions pairs.jsonl --output stage1.json` reads records `{"id", "image", "caption"}`
(a JSON list or JSON lines) and writes the LLaVA JSON format.
"""

from __future__ import annotations

import argparse
import json
import random
from functools import cache
from importlib import resources
from typing import Any

from processing.jsonio import read_records, write_records

IMAGE_TOKEN = "<image>"


@cache
def _load_instruction_list(name: str) -> tuple[str, ...]:
    text = resources.files("datagen").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(json.loads(text))


def brief_instructions() -> tuple[str, ...]:
    """The 11 instructions for a brief image description (paper Table 8)."""
    return _load_instruction_list("brief_instructions.json")


def detail_instructions() -> tuple[str, ...]:
    """The 16 instructions for a detailed image description (paper Table 9)."""
    return _load_instruction_list("detail_instructions.json")


def place_image_token(question: str, rng: random.Random, image_first: bool = False) -> str:
    """First-turn text with the image before or after the question, chosen by `rng` (paper eq. 2), or always before
    it with `image_first` (then `rng` is not drawn from)."""
    if image_first or rng.random() < 0.5:
        return f"{IMAGE_TOKEN}\n{question}"
    return f"{question}\n{IMAGE_TOKEN}"


def expand_caption_pairs(pairs: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Turn `{"id"?, "image", "caption"}` records into one-turn LLaVA conversations.

    The instruction and the image position are drawn from one `random.Random(seed)`, so the same
    input and seed always give the same output.
    """
    rng = random.Random(seed)
    instructions = brief_instructions()
    samples = []
    for index, pair in enumerate(pairs):
        missing = [key for key in ("image", "caption") if not pair.get(key)]
        if missing:
            raise ValueError(f"caption pair #{index} (id {pair.get('id')!r}): missing or empty {', '.join(missing)}")
        question = rng.choice(instructions)
        samples.append(
            {
                "id": str(pair.get("id", index)),
                "image": pair["image"],
                "conversations": [
                    {"from": "human", "value": place_image_token(question, rng)},
                    {"from": "gpt", "value": pair["caption"].strip()},
                ],
            }
        )
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llava expand-captions",
        description="Naive stage-1 expansion (paper §3): each image-caption pair becomes a one-turn "
        "LLaVA conversation whose question is a random brief-description instruction (Table 8), "
        "with <image> before or after it at random.",
    )
    parser.add_argument("pairs", help='caption pairs: JSON list or JSON lines of {"id", "image", "caption"}')
    parser.add_argument("--output", required=True, help="LLaVA JSON file to write (.json: a list; else JSON lines)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the instruction and image-position draws")
    args = parser.parse_args(argv)

    samples = expand_caption_pairs(read_records(args.pairs), seed=args.seed)
    write_records(args.output, samples)
    print(f"wrote {len(samples)} conversations to {args.output}")
    return 0
