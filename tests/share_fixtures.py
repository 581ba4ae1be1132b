"""Fixtures of the share-and-use tests: a tiny LLaVA *training output* (model + processor) on disk.

The model comes from the lead's `tests/conftest.py` (`tiny_llava_model`); the tokenizer is a
character-level one built here, small enough to match the tiny model's 128-token vocabulary.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

from conftest import TINY_IMAGE_TOKEN_ID, TINY_VOCAB, tiny_llava_model
from processing import LlavaProcessor
from processing.templates import get_chat_template

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: specials 0-3 (pad, bos, eos, unk), printable ASCII, ChatML tokens, `<image>`=127."""
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + chars + CHAT_TOKENS)}
    assert len(vocab) < TINY_IMAGE_TOKEN_ID
    vocab[IMAGE_TOKEN] = TINY_IMAGE_TOKEN_ID
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    # No decoder: decoding joins tokens with spaces ("h i"). Streamers flush at spaces, so even a random
    # model's answers then stream token by token, which the streaming tests rely on.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": CHAT_TOKENS + [IMAGE_TOKEN]})
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == TINY_IMAGE_TOKEN_ID and len(tokenizer) <= TINY_VOCAB
    return tokenizer


def tiny_processor(image_seq_length: int, chat_template: str = "chatml") -> LlavaProcessor:
    """The processor of the tiny model, with one of the project's named chat templates."""
    image_processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(),
                          chat_template=get_chat_template(chat_template),
                          image_token=IMAGE_TOKEN, image_seq_length=image_seq_length)


def train_a_few_steps(model, processor, steps: int) -> None:
    """A few real AdamW steps on one conversation about a real photo (the answer tokens supervised)."""
    import torch
    from PIL import Image
    from skimage import data

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this photo?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "An astronaut in an orange suit."}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    batch = processor(images=[Image.fromarray(data.astronaut())], text=text, return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[labels == processor.image_token_id] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def save_tiny_training_output(folder: Path, seed: int = 0, train_steps: int = 3) -> Path:
    """What a training run leaves: `save_pretrained` of a (briefly trained) model and of its processor."""
    model = tiny_llava_model(seed=seed)
    processor = tiny_processor(model.config.image_seq_length)
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    train_a_few_steps(model, processor, train_steps)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
