"""Chat templates: token by token, exactly the assistant answers and their stop are supervised.

The supervised tokens are taken from the processor's `assistant_masks` (image tokens expanded, so the masks must
follow the `text_replacement_offsets`) and from TRL's vision collator with `assistant_only_loss=True` (the
training path); each contiguous supervised run must decode to exactly one answer plus its stop text.
"""

from __future__ import annotations

import pytest
import torch
from processing_fixtures import gradient_image, make_processor, smollm2_tokenizer

from processing.templates import get_chat_template, list_chat_templates
from processing.templates.own import TemplateDerivationError


EOS = "<|im_end|>"  # SmolLM2's end-of-sequence token
# What each template must supervise for the two answers "A red square." and "Yes.".
EXPECTED_RUNS = {
    "paper": [" A red square.###", " Yes.###"],
    "vicuna_v1": [f" A red square.{EOS}", f" Yes.{EOS}"],
    "llama2": [f" A red square. {EOS}", f" Yes. {EOS}"],
    "plain": ["A red square.\n", "Yes.\n"],
    "chatml": [f"A red square.{EOS}", f"Yes.{EOS}"],
    "own": [f"A red square.{EOS}", f"Yes.{EOS}"],  # SmolLM2's own template is ChatML
}
IMAGE_SEQ_LENGTH = 4


def _conversation(with_images: bool = True):
    def image(seed):
        return {"type": "image", "image": gradient_image(30, 30, seed)} if with_images else {"type": "image"}

    return [
        {"role": "user", "content": [image(1), {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}, image(2)]},
        {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
    ]


def _runs(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    runs, current = [], []
    for token, supervised in zip(ids, mask):
        if supervised:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def test_names():
    assert list_chat_templates() == ["paper", "vicuna_v1", "llama2", "plain", "chatml", "own"]
    with pytest.raises(ValueError, match="Unknown chat template"):
        get_chat_template("alpaca")
    with pytest.raises(ValueError, match="tokenizer"):
        get_chat_template("own")


@pytest.mark.parametrize("name", list(EXPECTED_RUNS))
def test_only_answers_and_their_stop_are_supervised(name):
    processor = make_processor(template=name, image_seq_length=IMAGE_SEQ_LENGTH)
    tokenizer = processor.tokenizer
    text = processor.apply_chat_template(_conversation())
    bos = tokenizer.bos_token
    assert text.startswith(bos) if name != "chatml" and name != "own" else text.startswith("<|im_start|>")
    assert text.count("<image>") == 2

    out = processor.apply_chat_template(
        _conversation(), tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids, mask = out["input_ids"][0].tolist(), out["assistant_masks"][0].tolist()
    assert ids.count(processor.image_token_id) == 2 * IMAGE_SEQ_LENGTH
    assert _runs(tokenizer, ids, mask) == EXPECTED_RUNS[name]
    assert not any(m and t == processor.image_token_id for t, m in zip(ids, mask))
    unsupervised = tokenizer.decode([t for t, m in zip(ids, mask) if not m], skip_special_tokens=False)
    if name != "plain":  # plain drops the user's text by design
        assert "What is this?" in unsupervised and "Sure?" in unsupervised

    # The training path: TRL's collator, assistant_only_loss=True, right padding, a batch of two samples.
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    short = _conversation(with_images=False)[:2]
    batch = collator(
        [
            {"messages": _conversation(with_images=False), "images": [gradient_image(30, 30, 1), gradient_image(30, 30, 2)]},
            {"messages": short, "images": [gradient_image(30, 30, 1)]},
        ]
    )
    labels = batch["labels"]
    assert batch["attention_mask"][1, -1] == 0  # right padding for training
    assert torch.equal(batch["input_ids"][0], out["input_ids"][0])
    assert _runs(tokenizer, batch["input_ids"][0].tolist(), (labels[0] != -100).tolist()) == EXPECTED_RUNS[name]
    assert _runs(tokenizer, batch["input_ids"][1].tolist(), (labels[1] != -100).tolist()) == EXPECTED_RUNS[name][:1]


@pytest.mark.parametrize("name", [n for n in EXPECTED_RUNS if n != "plain"])
def test_generation_prompt_is_what_precedes_a_supervised_answer(name):
    """At inference the prompt must end exactly where the supervised answer starts in training."""
    processor = make_processor(template=name)
    conversation = _conversation(with_images=False)
    prompt = processor.apply_chat_template(conversation[:1], add_generation_prompt=True)
    full = processor.apply_chat_template(conversation[:2])
    assert full.startswith(prompt)
    assert full[len(prompt) :].startswith(EXPECTED_RUNS[name][0])


def test_own_template_renders_like_the_original_on_text():
    tokenizer = smollm2_tokenizer()
    derived = get_chat_template("own", tokenizer)
    assert "{% generation" in derived or "{%- generation" in derived
    chat = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there."},
        {"role": "user", "content": "Bye"},
    ]
    for prompt in (True, False):
        assert tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt) == tokenizer.apply_chat_template(
            chat, chat_template=derived, tokenize=False, add_generation_prompt=prompt
        )


def test_own_template_refuses_what_it_cannot_reproduce():
    tokenizer = smollm2_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ loop.index }}. {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TemplateDerivationError):
        get_chat_template("own", tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(TemplateDerivationError, match="no \\(single\\) chat template"):
        get_chat_template("own", tokenizer)


def test_resolve_chat_template_choices():
    from processing.templates import resolve_chat_template

    tokenizer = smollm2_tokenizer()
    assert resolve_chat_template("vicuna_v1") == get_chat_template("vicuna_v1")
    assert resolve_chat_template(None, tokenizer) == get_chat_template("own", tokenizer)
    custom = "{{ messages[0]['content'] }}"
    assert resolve_chat_template(custom) == custom
    tokenizer.chat_template = "{% for m in messages %}{{ loop.index }}. {{ m['content'] }}\n{% endfor %}"
    assert resolve_chat_template(None, tokenizer) == get_chat_template("paper")
    assert resolve_chat_template(None, None) == get_chat_template("paper")
    with pytest.raises(ValueError, match="neither a template name"):
        resolve_chat_template("vicuna")


def test_own_template_on_many_real_templates_is_exact_or_refused():
    """TRL ships the chat templates of ~40 model families: each one is reproduced exactly or clearly refused."""
    from pathlib import Path

    import trl

    files = sorted(p for p in (Path(trl.__file__).parent / "chat_templates").glob("*.jinja") if "training" not in p.name)
    assert len(files) > 20
    tokenizer = smollm2_tokenizer()
    derived = []
    for path in files:
        tokenizer.chat_template = path.read_text()
        try:
            get_chat_template("own", tokenizer)  # raises unless it renders text chats exactly like the original
        except TemplateDerivationError:
            continue
        derived.append(path.stem)
    assert {"llama3_1", "qwen2_5", "gemma3", "cohere"} <= set(derived)
