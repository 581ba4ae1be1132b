"""Derive an image-aware training template from a language model's own chat template.

A language model's template usually renders `message['content']` as a string (a list of typed blocks would be
printed as a Python list) and has no `{% generation %}` markers, so it can neither show images nor tell TRL
which tokens to supervise. Editing arbitrary Jinja is not possible in general, so we *probe* the template
instead: render a few conversations made of unique marker words, cut the output at the markers to learn the
text around each turn (system, user, assistant, generation prompt), and write a new template from those pieces.
The result is then checked to render exactly like the original on text-only probe conversations; a template
whose output cannot be described by fixed pieces (e.g. one that numbers turns) is refused with a clear error
rather than approximated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jinja2 import TemplateError

from . import CONTENT_MACROS_MARKER, content_macros


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SYSTEM, _USER_1, _ASSISTANT_1, _USER_2, _ASSISTANT_2 = (
    "SYSTEMPROBE",
    "USERPROBEONE",
    "ASSISTANTPROBEONE",
    "USERPROBETWO",
    "ASSISTANTPROBETWO",
)


class TemplateDerivationError(ValueError):
    """The tokenizer's chat template cannot be turned into an image-aware template with generation markers."""


@dataclass(frozen=True)
class TemplateParts:
    """The fixed text a chat template puts around each turn."""

    lead_without_system: str  # before the first user message's content when there is no system message
    system_prefix: str | None  # before the system message's content; None: the template refuses system messages
    lead_after_system: str | None  # between the system message's content and the first user message's content
    user_prefix: str  # before every later user message
    user_suffix: str
    assistant_prefix: str
    assistant_stop: str  # the end of an answer that the model must learn to emit (supervised)
    assistant_after: str  # what follows the stop (e.g. a newline), not supervised
    generation_prompt: str


def _cut(text: str, marker: str, what: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise TemplateDerivationError(f"the template does not render the {what} verbatim exactly once")
    before, after = text.split(marker)
    return before, after


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise TemplateDerivationError(f"the {what} is not rendered the same way in every conversation")
    return text[len(prefix) :]


def _split_stop(suffix: str, special_tokens: list[str]) -> tuple[str, str]:
    """Split an assistant suffix into the supervised stop (through its first special token) and the rest."""
    ends = [suffix.index(token) + len(token) for token in special_tokens if token and token in suffix]
    end = min(ends) if ends else len(suffix.rstrip())
    if end == 0:
        raise TemplateDerivationError("the template puts no end-of-turn text after an answer, nothing to supervise")
    return suffix[:end], suffix[end:]


def probe_template_parts(tokenizer: PreTrainedTokenizerBase, template: str) -> TemplateParts:
    """Learn the text around each turn of `template` by rendering probe conversations."""

    def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except TemplateError as error:
            raise TemplateDerivationError(f"the template fails on {[m['role'] for m in messages]}: {error}") from None

    user_1 = {"role": "user", "content": _USER_1}
    assistant_1 = {"role": "assistant", "content": _ASSISTANT_1}
    one = render([user_1])
    lead_and_user_prefix, user_suffix = _cut(one, _USER_1, "user message")
    generation_prompt = _strip_prefix(render([user_1], add_generation_prompt=True), one, "conversation")

    after_user = _strip_prefix(render([user_1, assistant_1]), one, "first user turn")
    assistant_prefix, assistant_suffix = _cut(after_user, _ASSISTANT_1, "assistant message")

    four = render([user_1, assistant_1, {"role": "user", "content": _USER_2}, {"role": "assistant", "content": _ASSISTANT_2}])
    between = four.split(_ASSISTANT_1)[1].split(_USER_2)[0]
    user_prefix = _strip_prefix(between, assistant_suffix, "assistant turn")
    lead_without_system = lead_and_user_prefix

    try:
        with_system = render([{"role": "system", "content": _SYSTEM}, user_1])
    except TemplateDerivationError:  # e.g. Gemma's "System role not supported": the derived template refuses too
        system_prefix = lead_after_system = None
    else:
        system_prefix, rest = _cut(with_system, _SYSTEM, "system message")
        lead_after_system, _ = _cut(rest, _USER_1, "user message")

    assistant_stop, assistant_after = _split_stop(assistant_suffix, list(tokenizer.all_special_tokens))
    return TemplateParts(
        lead_without_system=lead_without_system,
        system_prefix=system_prefix,
        lead_after_system=lead_after_system,
        user_prefix=user_prefix,
        user_suffix=user_suffix,
        assistant_prefix=assistant_prefix,
        assistant_stop=assistant_stop,
        assistant_after=assistant_after,
        generation_prompt=generation_prompt,
    )


def build_template(parts: TemplateParts) -> str:
    """Write a self-contained, image-aware template with generation markers from `parts`."""
    q = {name: json.dumps(value, ensure_ascii=False) for name, value in vars(parts).items()}
    if parts.system_prefix is None:
        system_line = "{{- raise_exception('This model\\'s chat template does not support system messages') -}}"
    else:
        system_line = f"{{{{- {q['system_prefix']} + render_content(messages[0]['content']) + {q['lead_after_system']} -}}}}"
    body = f"""{{#- Derived by processing.templates.own from the language model's own chat template. -#}}
{CONTENT_MACROS_MARKER}
{{%- if messages and messages[0]['role'] == 'system' -%}}
    {system_line}
    {{%- set turns = messages[1:] -%}}
{{%- else -%}}
    {{{{- {q['lead_without_system']} -}}}}
    {{%- set turns = messages -%}}
{{%- endif -%}}
{{%- for message in turns -%}}
    {{%- if loop.first and message['role'] != 'user' -%}}
        {{{{- raise_exception('The conversation must start with a user message, not ' ~ message['role']) -}}}}
    {{%- elif message['role'] == 'user' -%}}
        {{%- if not loop.first -%}}{{{{- {q['user_prefix']} -}}}}{{%- endif -%}}
        {{{{- render_content(message['content']) + {q['user_suffix']} -}}}}
    {{%- elif message['role'] == 'assistant' -%}}
        {{{{- {q['assistant_prefix']} -}}}}
        {{%- generation -%}}{{{{- render_content(message['content']) + {q['assistant_stop']} -}}}}{{%- endgeneration -%}}
        {{{{- {q['assistant_after']} -}}}}
    {{%- else -%}}
        {{{{- raise_exception('This template has no role ' ~ message['role']) -}}}}
    {{%- endif -%}}
{{%- endfor -%}}
{{%- if add_generation_prompt -%}}{{{{- {q['generation_prompt']} -}}}}{{%- endif -%}}
"""
    return body.replace(CONTENT_MACROS_MARKER, content_macros())


def _check_same_rendering(tokenizer: PreTrainedTokenizerBase, original: str, derived: str, with_system: bool) -> None:
    system = {"role": "system", "content": "Be brief."}
    turns = [
        {"role": "user", "content": "What is in the picture?"},
        {"role": "assistant", "content": "A red bus."},
        {"role": "user", "content": "Where is it going?"},
        {"role": "assistant", "content": "To the station, it seems."},
    ]
    cases = [(turns[:1], True), (turns[:2], False), (turns, False), (turns[:3], True)]
    if with_system:
        cases += [([system, *messages], prompt) for messages, prompt in cases]
    for messages, prompt in cases:
        expected, got = (
            tokenizer.apply_chat_template(messages, chat_template=t, tokenize=False, add_generation_prompt=prompt)
            for t in (original, derived)
        )
        if expected != got:
            raise TemplateDerivationError(
                f"Cannot derive the 'own' template: the derived template renders {messages} as {got!r} but the "
                f"original renders {expected!r}"
            )


def derive_own_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's own chat template, made image-aware and given `{% generation %}` markers.

    The answer and the end-of-turn text through its first special token (e.g. `<|im_end|>`) are supervised.
    If the tokenizer adds a BOS token by itself and the template does not write it, the derived template writes
    it (all project templates emit BOS themselves, since collators tokenize with `add_special_tokens=False`).

    Raises:
        TemplateDerivationError: the tokenizer has no template, or its output cannot be reproduced from fixed
            pieces around each turn.
    """
    original = tokenizer.chat_template
    if not isinstance(original, str):
        raise TemplateDerivationError(
            "The tokenizer has no (single) chat template to derive the 'own' template from; pick a named one."
        )
    try:
        parts = probe_template_parts(tokenizer, original)
    except TemplateDerivationError as error:
        raise TemplateDerivationError(f"Cannot derive the 'own' template from the tokenizer's: {error}.") from None
    derived = build_template(parts)
    _check_same_rendering(tokenizer, original, derived, with_system=parts.system_prefix is not None)

    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    if adds_bos and not parts.lead_without_system.startswith(bos):
        parts = TemplateParts(
            **{
                **vars(parts),
                "lead_without_system": bos + parts.lead_without_system,
                "system_prefix": None if parts.system_prefix is None else bos + parts.system_prefix,
            }
        )
        derived = build_template(parts)
    return derived
