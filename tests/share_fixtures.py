"""Fixtures of the share-and-use tests: a tiny, briefly trained LLaVA *training output* on disk.

The model is the lead's `tiny_llava_model` (tests/conftest.py) and the processor the training tests'
`tiny_processor` (tests/training_fixtures.py), with one change: its character-level tokenizer decodes
without a decoder, i.e. with a space between tokens ("h i"). Streamers flush at spaces, so even a
random model's answers then stream token by token, which the streaming tests (chat, web demo) need.
"""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_llava_model
from training_fixtures import tiny_processor as training_tiny_processor


def tiny_processor(chat_template: str = "chatml"):
    """The tiny model's processor (a named chat template), decoding token by token with spaces."""
    processor = training_tiny_processor(chat_template)
    processor.tokenizer.backend_tokenizer.decoder = None
    return processor


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
    processor = tiny_processor()
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    train_a_few_steps(model, processor, train_steps)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
