"""A sound upper bound on a sample's length in tokens that needs neither rendering nor tokenizing it.

`llava validate --max-length N` only has to find the samples longer than N. Rendering every sample with Jinja
and tokenizing it is what makes a first scan slow (docs/benchmarks.md), and most samples are far below N; for
those, a bound computed from the turns' byte counts proves "not too long" without measuring. Only a sample whose
bound exceeds N (or that has no bound) is rendered and tokenized exactly (`processing.validate.SampleMeasure`),
so the report is the exact path's, sample for sample.

Why the bound holds, for `SampleMeasure`'s length `len(ids) + n_image_ids * (image_seq_length - 1)`:
1. *Tokens <= UTF-8 bytes of the rendered text.* True of a byte-level BPE tokenizer without a normalizer and
   without an added prefix space (every token covers at least one byte; added tokens at least one character),
   and of a character-level BPE without a normalizer (byte fallback emits at most one token per byte).
   `tokenizer_bound_problem` accepts only those; any other tokenizer (SentencePiece-style `Prepend`/`Replace`
   normalizers, NFC, ...) is measured exactly.
2. *Rendered bytes <= probe bytes + the turns' bytes.* Accepted templates (`fixed_piece_template`: the project's
   named templates and the `own` templates `processing.templates.own.build_template` writes) put fixed text
   around each turn that depends only on the conversation's *shape* (roles, and the order of image and text
   blocks in each turn), write each text block verbatim at most once, and join blocks with at most one newline.
   The probe renders the same shape with one-byte texts (`_PIECE`), so it has every fixed piece and at least as
   many joining newlines.
3. *Image tokens <= the probe's `<image>` count.* The image token is an added token, so its id only comes from a
   `<image>` substring of the rendered text. A turn whose text holds a `<` outside its placeholders is measured
   exactly; otherwise a `<image>` substring can only be an image block's (counted in the probe), lie inside
   fixed text (also in the probe), or start in fixed text that ends with a prefix of `<image>` right before a
   text block, which the probe is checked for (`_shape_bound` then gives no bound for that shape).
`tests/test_processing_length_bound.py` compares the bound against the exact path on fuzzed records.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .llava_data import IMAGE_PLACEHOLDER, LLAVA_TO_ROLE, text_to_content


_PIECE = "\x01"  # the probe's text block: one byte, not whitespace, not a character of `<image>`
_SHAPE_MEMORY = 4096  # distinct conversation shapes remembered (real data has a handful)
_SPLITTING_PRE_TOKENIZERS = ("Split", "Digits", "Punctuation", "WhitespaceSplit", "Whitespace")


def tokenizer_bound_problem(tokenizer) -> str | None:
    """Why `tokenizer` may emit more tokens than the UTF-8 bytes of its input, or `None` when it cannot."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "not a fast (tokenizers) tokenizer"
    spec = json.loads(backend.to_str())
    if spec.get("normalizer") is not None:
        return f"its normalizer ({spec['normalizer'].get('type')}) can lengthen the text"
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"its model is {model.get('type')}, not BPE"
    pre = spec.get("pre_tokenizer")
    steps = [] if pre is None else pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = False
    for step in steps:
        if step.get("type") == "ByteLevel":
            if step.get("add_prefix_space"):
                return "its ByteLevel pre-tokenizer adds a prefix space"
            byte_level = True
        elif step.get("type") not in _SPLITTING_PRE_TOKENIZERS:
            return f"its pre-tokenizer {step.get('type')} may add characters"
    if byte_level and model.get("byte_fallback"):
        return "byte fallback over a byte-level alphabet can emit two tokens per byte"
    return None


def _own_template_patterns() -> list[re.Pattern]:
    """Regular expressions matching every template `build_template` can write, whatever its fixed pieces."""
    from .templates.own import TemplateParts, build_template

    fields = list(TemplateParts.__dataclass_fields__)
    json_string = r'"(?:[^"\\]|\\.)*"'
    patterns = []
    for with_system in (True, False):
        parts = {name: f"@@{name}@@" for name in fields}
        if not with_system:
            parts["system_prefix"] = parts["lead_after_system"] = None
        pattern = re.escape(build_template(TemplateParts(**parts)))
        for name in fields:
            pattern = pattern.replace(re.escape(json.dumps(f"@@{name}@@")), json_string)
        patterns.append(re.compile(pattern, re.S))
    return patterns


def fixed_piece_template(template: str) -> bool:
    """Whether `template` is one the bound's argument covers (see the module's docstring, point 2)."""
    from .templates import FILE_TEMPLATES, get_chat_template

    if any(template == get_chat_template(name) for name in FILE_TEMPLATES):
        return True
    return any(pattern.fullmatch(template) for pattern in _own_template_patterns())


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class LengthBound:
    """`bound(turns)`: an upper bound on `SampleMeasure`'s length of a LLaVA conversation (rendered as
    `llava_to_messages(turns)`), or `None` when this sample has none and must be measured."""

    def __init__(self, tokenizer, chat_template: str, image_seq_length: int):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.extra_per_image = image_seq_length - 1
        self.shapes: dict[tuple, tuple[int, int] | None] = {}

    @classmethod
    def for_measure(cls, measure) -> LengthBound | None:
        """The bound for a `processing.validate.SampleMeasure`, or `None` when no sound one exists (the tokenizer
        or template is not covered, the image token is not `<image>`, or supervised tokens are counted too)."""
        image_token = measure.tokenizer.convert_ids_to_tokens(measure.image_token_id)
        if measure.masks or image_token != IMAGE_PLACEHOLDER or measure.image_seq_length < 1:
            return None
        if tokenizer_bound_problem(measure.tokenizer) is not None or not fixed_piece_template(measure.chat_template):
            return None
        return cls(measure.tokenizer, measure.chat_template, measure.image_seq_length)

    def __call__(self, turns: list[dict[str, str]]) -> int | None:
        size = 0
        shape = []
        for turn in turns:
            value = turn["value"]
            if "<" in value:
                if value.count("<") != value.count(IMAGE_PLACEHOLDER):
                    return None  # a "<" of the text could complete an <image> with the text around it
                blocks = tuple(block["type"] for block in text_to_content(value))
            else:
                blocks = ("text",) if value else ()
            try:
                size += _utf8_size(value)
            except UnicodeEncodeError:
                return None
            shape.append((turn["from"], blocks))
        probe = self._shape_bound(tuple(shape))
        if probe is None:
            return None
        probe_bytes, probe_images = probe
        return probe_bytes + size + probe_images * self.extra_per_image

    def _shape_bound(self, shape: tuple) -> tuple[int, int] | None:
        """(UTF-8 bytes, `<image>` count) of the probe rendering of `shape`; `None` when it gives no bound."""
        if shape in self.shapes:
            return self.shapes[shape]
        if len(self.shapes) >= _SHAPE_MEMORY:
            self.shapes.clear()
        self.shapes[shape] = found = self._probe(shape)
        return found

    def _probe(self, shape: tuple) -> tuple[int, int] | None:
        messages: list[dict[str, Any]] = [
            {"role": LLAVA_TO_ROLE[speaker],
             "content": [{"type": "image", "text": None} if kind == "image" else {"type": "text", "text": _PIECE} for kind in blocks]}
            for speaker, blocks in shape
        ]
        try:
            rendered = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False)
        except Exception:  # noqa: BLE001 - the exact path renders this shape again and reports what it does
            return None
        prefixes = tuple(IMAGE_PLACEHOLDER[:k] for k in range(1, len(IMAGE_PLACEHOLDER)))
        for match in re.finditer(re.escape(_PIECE), rendered):
            if rendered.endswith(prefixes, 0, match.start()):
                return None
        return _utf8_size(rendered), rendered.count(IMAGE_PLACEHOLDER)


__all__ = ["LengthBound", "fixed_piece_template", "tokenizer_bound_problem"]
