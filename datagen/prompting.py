"""Teacher prompts (paper §3, Table 10) and the parsing of teacher replies into LLaVA conversations.

The prompts are data, in `datagen/prompts/`: for each response type a `<type>_system.txt` and
few-shot pairs `<type>_NNN_context.txt` / `<type>_NNN_response.txt`. `build_messages` assembles
them exactly as Table 10: the system message, then a user/assistant pair per example, then the
query's context as the last user message.

The image reaches the text-only teacher as symbols: its captions, one per line, then (after a
blank line) its boxes, one `name: [x1, y1, x2, y2]` per line with coordinates in 0–1.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from datagen.instructions import detail_instructions, place_image_token
from processing.jsonio import read_records

RESPONSE_TYPES: tuple[str, ...] = ("conversation", "detail", "complex")


@dataclass(frozen=True)
class ImageContext:
    """One image as the teacher sees it: captions and normalised boxes."""

    id: str
    image: str
    captions: tuple[str, ...]
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...] = ()

    @classmethod
    def from_record(cls, record: dict[str, Any], where: str = "context") -> ImageContext:
        """Validate one line of a contexts file; errors name `where` and what is wrong."""
        for key in ("id", "image", "captions"):
            if key not in record:
                raise ValueError(f"{where}: missing key {key!r} (expected id, image, captions, boxes)")
        captions = record["captions"]
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise ValueError(f"{where} (id {record['id']!r}): 'captions' must be a non-empty list of non-empty strings")
        boxes = []
        for box in record.get("boxes", []):
            bbox = box.get("bbox") if isinstance(box, dict) else None
            if not isinstance(box, dict) or not box.get("name") or not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError(f"{where} (id {record['id']!r}): bad box {box!r}, expected {{'name', 'bbox': [x1, y1, x2, y2]}}")
            if not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in bbox):
                raise ValueError(f"{where} (id {record['id']!r}): box {box!r} is not normalised to 0-1")
            boxes.append((box["name"], tuple(float(v) for v in bbox)))
        return cls(id=str(record["id"]), image=str(record["image"]), captions=tuple(c.strip() for c in captions), boxes=tuple(boxes))


def load_contexts(path: str | Path) -> list[ImageContext]:
    """Read a contexts JSONL file (see `datagen.coco`); image ids must be unique."""
    contexts = [ImageContext.from_record(record, f"{path}, record {i + 1}") for i, record in enumerate(read_records(path))]
    seen: set[str] = set()
    for context in contexts:
        if context.id in seen:
            raise ValueError(f"{path}: image id {context.id!r} appears more than once; ids key the output")
        seen.add(context.id)
    return contexts


def format_context(context: ImageContext) -> str:
    """Captions one per line, then a blank line and the boxes one per line (paper Table 1)."""
    text = "\n".join(context.captions)
    if context.boxes:
        boxes = "\n".join(f"{name}: [{', '.join(str(round(v, 3)) for v in bbox)}]" for name, bbox in context.boxes)
        text += "\n\n" + boxes
    return text


@dataclass(frozen=True)
class PromptTemplate:
    """System message and few-shot examples `(context, response)` for one response type."""

    response_type: str
    system: str
    examples: tuple[tuple[str, str], ...] = field(default_factory=tuple)


@cache
def load_prompt(response_type: str) -> PromptTemplate:
    """Read `datagen/prompts/<type>_*.txt`."""
    if response_type not in RESPONSE_TYPES:
        raise ValueError(f"unknown response type {response_type!r}; expected one of {', '.join(RESPONSE_TYPES)}")
    folder = resources.files("datagen").joinpath("prompts")
    system = folder.joinpath(f"{response_type}_system.txt").read_text(encoding="utf-8").strip()
    examples = []
    for index in range(1000):
        context_file = folder.joinpath(f"{response_type}_{index:03d}_context.txt")
        if not context_file.is_file():
            break
        response_file = folder.joinpath(f"{response_type}_{index:03d}_response.txt")
        examples.append((context_file.read_text(encoding="utf-8").strip(), response_file.read_text(encoding="utf-8").strip()))
    return PromptTemplate(response_type, system, tuple(examples))


def build_messages(response_type: str, context_text: str) -> list[dict[str, str]]:
    """The chat messages of Table 10: system, (user: example context, assistant: example response)*, user: query."""
    template = load_prompt(response_type)
    messages = [{"role": "system", "content": template.system}]
    for example_context, example_response in template.examples:
        messages.append({"role": "user", "content": example_context})
        messages.append({"role": "assistant", "content": example_response})
    messages.append({"role": "user", "content": context_text})
    return messages


def render_messages(messages: list[dict[str, str]]) -> str:
    """A readable dump of a prompt (for `--dry-run`)."""
    return "\n\n".join(f"----- {m['role']} -----\n{m['content']}" for m in messages)


class ParseError(ValueError):
    """A teacher reply that cannot become a training sample; the message is the recorded reason."""


_MARKER = re.compile(r"^[ \t]*(?:\*\*)?(question|answer)(?:\*\*)?[ \t]*:(?:\*\*)?", re.IGNORECASE | re.MULTILINE)


def parse_qa_pairs(text: str) -> list[tuple[str, str]]:
    """Split `Question: ... === Answer: ... === Question: ...` into (question, answer) pairs.

    Markers start a line (optionally bold, any case); `===` lines and text before the first marker
    are ignored. Raises `ParseError` if there is no pair, the markers do not alternate starting
    with a question, or a question or answer is empty.
    """
    markers = list(_MARKER.finditer(text))
    if not markers:
        raise ParseError("no 'Question:'/'Answer:' markers")
    pairs: list[tuple[str, str]] = []
    for index, marker in enumerate(markers):
        end = markers[index + 1].start() if index + 1 < len(markers) else len(text)
        body = text[marker.end() : end]
        body = "\n".join(line for line in body.splitlines() if line.strip() != "===").strip()
        expected = "question" if index % 2 == 0 else "answer"
        if marker.group(1).lower() != expected:
            raise ParseError(f"marker #{index + 1} is {marker.group(1)!r}, expected {expected!r} (turns must alternate)")
        if not body:
            raise ParseError(f"empty {expected} in marker #{index + 1}")
        if expected == "question":
            pairs.append((body, ""))
        else:
            pairs[-1] = (pairs[-1][0], body)
    if len(markers) % 2:
        raise ParseError("the last question has no answer")
    return pairs


def parse_reply(response_type: str, text: str, rng: random.Random) -> list[tuple[str, str]]:
    """Turn a teacher reply into (question, answer) turns for `response_type`.

    - conversation: one or more Q/A pairs;
    - detail: the whole reply is the answer to a question drawn from Table 9 with `rng`;
    - complex: exactly one Q/A pair.
    """
    if not text or not text.strip():
        raise ParseError("empty reply")
    if response_type == "conversation":
        return parse_qa_pairs(text)
    if response_type == "detail":
        return [(rng.choice(detail_instructions()), text.strip())]
    if response_type == "complex":
        pairs = parse_qa_pairs(text)
        if len(pairs) != 1:
            raise ParseError(f"expected one question/answer pair, found {len(pairs)}")
        return pairs
    raise ValueError(f"unknown response type {response_type!r}")


def to_llava_sample(context: ImageContext, response_type: str, turns: list[tuple[str, str]], rng: random.Random) -> dict[str, Any]:
    """A LLaVA-format sample; the image goes before or after the first question at random (eq. 2)."""
    conversations = []
    for index, (question, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": place_image_token(question, rng) if index == 0 else question})
        conversations.append({"from": "gpt", "value": answer})
    return {
        "id": f"{context.id}_{response_type}",
        "image": context.image,
        "conversations": conversations,
        "image_id": context.id,
        "type": response_type,
    }


def sample_rng(seed: int, image_id: str, response_type: str) -> random.Random:
    """The random draws of one (image, type) depend only on these, not on the order requests finish in."""
    return random.Random(f"{seed}:{image_id}:{response_type}")
