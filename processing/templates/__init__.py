"""Conversation formats as Jinja chat templates with `{% generation %}` markers.

Each named template lives in `<name>.jinja` next to this file. The templates share one macro that turns typed
content (`[{"type": "image"}, {"type": "text", "text": ...}]`) into text with `<image>` placeholders; a
chat template must be a single self-contained string (it is saved as `chat_template.jinja` next to the weights),
so `get_chat_template` inlines that macro where a template says `{#- @content_macros -#}`.

`"own"` is the language model's own template made image-aware and given generation markers
(see `processing.templates.own`).
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

CONTENT_MACROS_MARKER = "{#- @content_macros -#}"
FILE_TEMPLATES = ("paper", "vicuna_v1", "llama2", "plain", "chatml")
OWN_TEMPLATE = "own"


def list_chat_templates() -> list[str]:
    """Names accepted by `get_chat_template`."""
    return [*FILE_TEMPLATES, OWN_TEMPLATE]


def _read(filename: str) -> str:
    return resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")


def content_macros() -> str:
    """The Jinja macros `render_content` / `render_images` every template uses for message content."""
    return _read("_content_macros.jinja")


def get_chat_template(name: str, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """Return the chat template called `name` as one self-contained Jinja string.

    Args:
        name: one of `list_chat_templates()`: `paper` (Table 2 of the paper, `###` stop), `vicuna_v1`,
            `llama2`, `plain` (stage 1: image then caption), `chatml`, or `own` (the tokenizer's own template,
            made image-aware, with generation markers).
        tokenizer: required for `own`; ignored otherwise.
    """
    if name == OWN_TEMPLATE:
        if tokenizer is None:
            raise ValueError("The 'own' chat template is derived from a tokenizer's template: pass `tokenizer=`.")
        from .own import derive_own_template

        return derive_own_template(tokenizer)
    if name not in FILE_TEMPLATES:
        raise ValueError(f"Unknown chat template {name!r}; choose one of {list_chat_templates()}.")
    template = _read(f"{name}.jinja")
    if CONTENT_MACROS_MARKER not in template:
        raise RuntimeError(f"{name}.jinja lacks the {CONTENT_MACROS_MARKER} line it needs.")
    return template.replace(CONTENT_MACROS_MARKER, content_macros())


def resolve_chat_template(chat_template: str | None, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """Turn a user's `chat_template` choice into a Jinja template.

    Args:
        chat_template: a name from `list_chat_templates()`, a Jinja template string (returned unchanged), or
            `None`: the language model's own template made image-aware (`own`) when the tokenizer has one that
            can be reproduced, else the paper's format (a warning says why).
        tokenizer: the language model's tokenizer (needed for `own` and for the default).
    """
    if chat_template is None:
        if tokenizer is not None and isinstance(getattr(tokenizer, "chat_template", None), str):
            from .own import TemplateDerivationError, derive_own_template

            try:
                return derive_own_template(tokenizer)
            except TemplateDerivationError as error:
                logger.warning("Using the paper's chat template: %s", error)
        return get_chat_template("paper")
    if chat_template in list_chat_templates():
        return get_chat_template(chat_template, tokenizer)
    if "{{" in chat_template or "{%" in chat_template:
        return chat_template
    raise ValueError(
        f"chat_template {chat_template!r} is neither a template name ({list_chat_templates()}) nor a Jinja template."
    )


class ImageTemplateError(ValueError):
    """A chat template cannot render a message with image content (typically the language model's own,
    text-only template, which concatenates `message['content']` as a string)."""


_IMAGE_PROBE = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "QUESTIONPROBE"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "ANSWERPROBE"}]},
]


def image_content_problem(chat_template: str, tokenizer, image_token: str = "<image>") -> str | None:
    """Why `chat_template` cannot render a user turn holding an image and a text block, or `None` if it can
    (it must write `image_token` once for the image block and keep both texts)."""
    try:
        rendered = tokenizer.apply_chat_template(_IMAGE_PROBE, chat_template=chat_template, tokenize=False)
    except Exception as error:  # noqa: BLE001 - any failure of the user's Jinja is the answer we report
        return f"rendering a message with an image block fails ({type(error).__name__}: {error})"
    if rendered.count(image_token) != 1 or "QUESTIONPROBE" not in rendered or "ANSWERPROBE" not in rendered:
        return f"it does not write {image_token} for an image block (nor the text beside it) verbatim"
    return None


def require_image_template(processor, source: str) -> None:
    """Raise `ImageTemplateError` with the fix when `processor`'s chat template cannot render image content."""
    template = getattr(processor, "chat_template", None)
    if not isinstance(template, str):
        return
    problem = image_content_problem(template, processor.tokenizer, getattr(processor, "image_token", "<image>"))
    if problem is not None:
        raise ImageTemplateError(
            f"{source}: the chat template cannot render image content: {problem}. It is probably the language "
            "model's own text-only template. Give the processor an image-aware one, e.g. "
            f"`llava export {source} OUT --chat-template own` (the language model's format made image-aware) "
            f"or another of {list_chat_templates()}; `llava convert` and `llava build` do this by default."
        )


__all__ = [
    "ImageTemplateError",
    "content_macros",
    "get_chat_template",
    "image_content_problem",
    "list_chat_templates",
    "require_image_template",
    "resolve_chat_template",
]
