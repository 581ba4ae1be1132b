"""Compiled decoding (`GenerationSettings(compile=True)`: static KV cache + `generate`'s torch.compile) gives the
same greedy tokens as the default dynamic cache, on a left-padded image batch and a text-only batch."""

from __future__ import annotations

import argparse

import pytest
import torch
from evaluation_fixtures import tiny_model_and_processor
from PIL import Image

from inference.messages import build_messages, render_prompt
from inference.settings import GenerationSettings, add_generation_arguments

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def tiny():
    model, processor = tiny_model_and_processor(seed=3)
    processor.tokenizer.padding_side = "left"
    return model.eval(), processor


def _batches(processor):
    """An image batch and a text-only batch, each with prompts of different lengths (so rows are left padded)."""
    questions = ["what is in the image ?", "which animal is shown in the image there ?"]
    images = [Image.new("RGB", (32, 32), (40 * i, 120, 200)) for i in range(len(questions))]
    with_images = [render_prompt(processor, build_messages(q, 1)) for q in questions]
    text_only = [render_prompt(processor, build_messages(q, 0)) for q in ["is there a cat ?", "what state ?" * 3]]
    return [
        processor(images=images, text=with_images, padding=True, return_tensors="pt"),
        processor(text=text_only, padding=True, return_tensors="pt"),
    ]


def _generate(model, processor, settings: GenerationSettings, **extra) -> list[torch.Tensor]:
    outputs = []
    settings.prepare_model(model)  # as the inference layer does (inference.batch, inference.streaming)
    with torch.inference_mode():
        for inputs in _batches(processor):
            output = model.generate(**inputs, **settings.generate_kwargs(), min_new_tokens=NEW_TOKENS,
                                    pad_token_id=processor.tokenizer.pad_token_id, **extra)
            outputs.append(output[:, inputs["input_ids"].shape[1] :])
    return outputs


def _assert_same_tokens(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> None:
    for want, got in zip(expected, actual, strict=True):
        assert want.shape[1] == NEW_TOKENS
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_static_cache_gives_the_default_greedy_tokens(tiny):
    """The static-cache path of the model (prepare_inputs_for_generation with a StaticCache), compilation off."""
    model, processor = tiny
    model.set_attn_implementation("sdpa")
    default = _generate(model, processor, GenerationSettings(max_new_tokens=NEW_TOKENS))
    static = _generate(model, processor, GenerationSettings(max_new_tokens=NEW_TOKENS, compile=True),
                       disable_compile=True)
    _assert_same_tokens(default, static)


def test_compiled_decoding_gives_the_default_greedy_tokens(tiny):
    """The full option: the decode step compiled by `generate` (~20 s on 2 cores with a cold inductor cache),
    attending eagerly on CPU, against the default path with sdpa."""
    model, processor = tiny
    torch._dynamo.reset()
    model.set_attn_implementation("sdpa")
    default = _generate(model, processor, GenerationSettings(max_new_tokens=NEW_TOKENS))
    assert model.config._attn_implementation == "sdpa"  # the default path leaves the model as it is
    compiled = _generate(model, processor, GenerationSettings(max_new_tokens=NEW_TOKENS, compile=True))
    assert hasattr(model, "_compiled_call")  # generate did compile the decode step
    assert model.config._attn_implementation == "eager"
    assert model.config.text_config._attn_implementation == "eager"
    _assert_same_tokens(default, compiled)


def test_compile_option_kwargs_and_flag():
    assert "cache_implementation" not in GenerationSettings().generate_kwargs()
    kwargs = GenerationSettings(compile=True).generate_kwargs()
    assert kwargs["cache_implementation"] == "static"
    assert kwargs["compile_config"]._compile_all_devices  # CPU too, not only accelerators
    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    assert GenerationSettings.from_args(parser.parse_args([])).compile is False
    assert GenerationSettings.from_args(parser.parse_args(["--compile"])).compile is True
    assert GenerationSettings.from_args(parser.parse_args(["--no-compile"])).compile is False
