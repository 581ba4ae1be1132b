"""`pipeline("image-to-text")` as captioning users call it, and `image-text-to-text`, on every folder we write.

Each model folder ships `pipeline_llava.py` and names it in `config.custom_pipelines`: transformers builds it
instead of redirecting `image-to-text` to `image-text-to-text` (which refuses an image without a prompt). The
oracle is the model's own `generate` on the chat the pipeline documents: the paper's brief-description
instruction (or the given prompt) after the image, through the folder's chat template.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from modeling_llava.pipeline_llava import BRIEF_DESCRIPTION_INSTRUCTION
from training_fixtures import save_tiny_model

IMAGES = [Image.new("RGB", (40, 32), (200, 30, 30)), Image.new("RGB", (30, 30), (20, 40, 220))]
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("pipelines") / "model")


def expected_answer(folder, image, instruction: str) -> str:
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    return processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_image_to_text_captions_an_image_without_a_prompt(folder):
    captioner = pipeline("image-to-text", model=str(folder), trust_remote_code=True)
    result = captioner(IMAGES[0], max_new_tokens=NEW_TOKENS)
    assert result == [{"generated_text": expected_answer(folder, IMAGES[0], BRIEF_DESCRIPTION_INSTRUCTION)}]


def test_image_to_text_answers_a_prompt_and_takes_batches(folder):
    captioner = pipeline("image-to-text", model=str(folder), trust_remote_code=True)
    question = "What colour is it?"
    assert captioner(IMAGES[1], prompt=question, max_new_tokens=NEW_TOKENS) == [
        {"generated_text": expected_answer(folder, IMAGES[1], question)}
    ]
    batch = captioner(IMAGES, max_new_tokens=NEW_TOKENS, batch_size=2)
    assert batch == [[{"generated_text": expected_answer(folder, image, BRIEF_DESCRIPTION_INSTRUCTION)}]
                     for image in IMAGES]


def test_image_text_to_text_works_without_the_unsupported_model_list(folder, capfd):
    chat = [{"role": "user", "content": [{"type": "image", "image": IMAGES[0]}, {"type": "text", "text": "Hi"}]}]
    answer = pipeline("image-text-to-text", model=str(folder), trust_remote_code=True)(
        text=chat, max_new_tokens=NEW_TOKENS, return_full_text=False
    )
    assert isinstance(answer[0]["generated_text"], str)
    assert "is not supported for" not in capfd.readouterr().err


def test_converted_folders_ship_the_pipeline(folder, tmp_path):
    from modeling_llava.convert_checkpoints import from_llava_hf, to_llava_hf

    assert (folder / "pipeline_llava.py").is_file()
    to_llava_hf(folder, tmp_path / "llava-hf")
    converted = tmp_path / "back"
    from_llava_hf(tmp_path / "llava-hf", converted)
    assert (converted / "pipeline_llava.py").is_file()
    captioner = pipeline("image-to-text", model=str(converted), trust_remote_code=True)
    assert isinstance(captioner(IMAGES[0], max_new_tokens=2)[0]["generated_text"], str)
