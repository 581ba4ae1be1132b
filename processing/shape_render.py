"""Rendering a conversation with a fixed-piece chat template without running Jinja for every sample.

A fixed-piece template (`processing.length_bound.fixed_piece_template`: the project's named templates and the `own`
templates) writes fixed text that depends only on the conversation's *shape* (roles, the order of image and
text blocks in each turn, and whether each text starts or ends with whitespace) and copies each text block
verbatim. So the rendering of one shape with a distinct marker
in place of each text block, split at the markers, holds every fixed piece; putting a sample's texts between them
gives exactly what Jinja writes for that sample. One Jinja render per shape (real data has a handful) replaces one
per sample, which is half of what measuring a sample costs (docs/benchmarks.md, "Validating at scale").

`tests/test_processing_length_bound.py` checks the result against Jinja's on fuzzed records for every template.
"""

from __future__ import annotations

from typing import Any

_SHAPE_MEMORY = 4096  # distinct conversation shapes remembered


def _marker(index: int, edges: str) -> str:
    """The stand-in of text block `index`: control characters no template writes, numbered so that each block's
    place is known, with a space at each end where the text has whitespace there (the templates join blocks with a
    newline only where neither side has whitespace, `_content_macros.jinja`)."""
    return f"{' ' if edges[0] == 'w' else ''}\x01{index}\x02{' ' if edges[1] == 'w' else ''}"


def _edges(text: str) -> str:
    return ("w" if text[:1].isspace() else "t") + ("w" if text[-1:].isspace() else "t")


class ShapeRenderer:
    """`render(messages)`: the chat template's rendering of TRL-style messages (typed content lists), or `None` when
    this sample must go through Jinja (content that is not a list of text/image blocks, an empty text, or a shape
    whose markers do not come back once each and in order)."""

    def __init__(self, tokenizer, chat_template: str):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.pieces: dict[tuple, tuple[str, ...] | None] = {}

    def __call__(self, messages: list[dict[str, Any]]) -> str | None:
        shape, texts = [], []
        for message in messages:
            content = message.get("content")
            if not isinstance(content, list):
                return None
            blocks = []
            for block in content:
                kind = block.get("type")
                if kind == "text":
                    text = block.get("text")
                    if not isinstance(text, str) or not text:
                        return None
                    texts.append(text)
                    kind = _edges(text)
                elif kind != "image":
                    return None
                blocks.append(kind)
            shape.append((message.get("role"), tuple(blocks)))
        pieces = self._pieces(tuple(shape))
        if pieces is None:
            return None
        return "".join(piece + text for piece, text in zip(pieces, texts)) + pieces[-1]

    def _pieces(self, shape: tuple) -> tuple[str, ...] | None:
        if shape not in self.pieces:
            if len(self.pieces) >= _SHAPE_MEMORY:
                self.pieces.clear()
            self.pieces[shape] = self._probe(shape)
        return self.pieces[shape]

    def _probe(self, shape: tuple) -> tuple[str, ...] | None:
        markers = []
        messages = []
        for role, blocks in shape:
            content = []
            for kind in blocks:
                if kind == "image":
                    content.append({"type": "image"})
                else:
                    markers.append(_marker(len(markers), kind))
                    content.append({"type": "text", "text": markers[-1]})
            messages.append({"role": role, "content": content})
        try:
            rendered = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False)
        except Exception:  # noqa: BLE001 - Jinja renders this sample itself and reports what it does
            return None
        pieces, rest = [], rendered
        for marker in markers:
            before, found, rest = rest.partition(marker)
            if not found or "\x01" in before:
                return None
            pieces.append(before)
        if "\x01" in rest:
            return None
        return (*pieces, rest)


__all__ = ["ShapeRenderer"]
