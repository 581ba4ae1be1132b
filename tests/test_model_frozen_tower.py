"""A frozen vision tower runs without autograd inside training, and nothing that should train loses its gradient.

Without checkpointing a frozen tower records no graph anyway (no input of it requires grad); with activation
checkpointing, transformers' `enable_input_require_grads` hooks the tower's patch embedding too, and the frozen tower
used to be recorded, recomputed and back-propagated. The oracle for the gradients is transformers' built-in
LlavaForConditionalGeneration on the same weights: it runs the tower with autograd as its inputs and parameters
say, as this model did before it skipped the graph.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaConfig as HFLlavaConfig
from transformers import LlavaForConditionalGeneration

from conftest import TINY_IMAGE_TOKEN_ID, tiny_text_config, tiny_vision_config
from modeling_llava import LlavaForCausalLM
from modeling_llava.convert import config_from_llava_hf, state_dict_from_llava_hf


def builtin_and_ours(**hf_overrides):
    torch.manual_seed(0)
    kwargs = {
        "vision_config": tiny_vision_config().to_dict(),
        "text_config": tiny_text_config().to_dict(),
        "image_token_index": TINY_IMAGE_TOKEN_ID,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    }
    hf_config = HFLlavaConfig(**{**kwargs, **hf_overrides})
    builtin = LlavaForConditionalGeneration(hf_config)
    config = config_from_llava_hf(hf_config, builtin.state_dict())
    ours = LlavaForCausalLM(config)
    ours.load_state_dict(state_dict_from_llava_hf(builtin.state_dict(), config), strict=True)
    return builtin.train(), ours.train()


def training_batch(num_image_tokens: int, num_images: int = 2) -> dict[str, torch.Tensor]:
    rows = [[1, 5, 6] + [TINY_IMAGE_TOKEN_ID] * num_image_tokens + [7, 8, 9, 10] for _ in range(num_images)]
    input_ids = torch.tensor(rows)
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(num_images, 3, 30, 30, generator=generator)
    labels = input_ids.masked_fill(input_ids == TINY_IMAGE_TOKEN_ID, -100)  # ours never supervises image tokens
    attention_mask = torch.ones_like(input_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values, "labels": labels}


def freeze_tower(model) -> None:
    for parameter in model.model.vision_tower.parameters():
        parameter.requires_grad_(False)


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None}


def last_used_layer(model) -> torch.nn.Module:
    return model.model.vision_tower.encoder.layers[model.model.vision_layers_used() - 1]


def record_output_requires_grad(module: torch.nn.Module) -> tuple[list[bool], torch.utils.hooks.RemovableHandle]:
    seen = []

    def hook(module, inputs, output):
        seen.append((output[0] if isinstance(output, tuple) else output).requires_grad)

    return seen, module.register_forward_hook(hook)


@pytest.mark.parametrize(
    "feature_layer, checkpointing",
    [(-2, None), ([0, -2], None), (-2, {"use_reentrant": False}), (-2, {"use_reentrant": True})],
)
def test_frozen_tower_gives_the_builtins_gradients_without_a_tower_graph(feature_layer, checkpointing):
    builtin, ours = builtin_and_ours(vision_feature_layer=feature_layer)
    for model in (builtin, ours):
        freeze_tower(model)
        if checkpointing is not None:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
    batch = training_batch(ours.config.image_seq_length)

    builtin(**batch).loss.backward()
    seen, handle = record_output_requires_grad(last_used_layer(ours))
    ours(**batch).loss.backward()
    handle.remove()

    assert seen == [False], "the frozen tower's last used layer recorded an autograd graph"
    expected = state_dict_from_llava_hf(gradients(builtin), ours.config)
    actual = gradients(ours)
    assert sorted(actual) == sorted(expected)
    assert any(name.startswith("model.multi_modal_projector.") for name in actual)
    assert any(name.startswith("model.language_model.") for name in actual)
    for name, gradient in expected.items():
        torch.testing.assert_close(actual[name], gradient, atol=1e-6, rtol=0, msg=name)


def test_frozen_tower_with_frozen_llm_still_trains_the_projector():
    """Stage 1: only the projector trains; its gradient equals the built-in's."""
    builtin, ours = builtin_and_ours()
    for model in (builtin, ours):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_("multi_modal_projector" in name)
    batch = training_batch(ours.config.image_seq_length)
    builtin(**batch).loss.backward()
    ours(**batch).loss.backward()
    expected = state_dict_from_llava_hf(gradients(builtin), ours.config)
    actual = gradients(ours)
    assert sorted(actual) == sorted(expected) and all("multi_modal_projector" in name for name in actual)
    for name, gradient in expected.items():
        torch.testing.assert_close(actual[name], gradient, atol=1e-6, rtol=0, msg=name)


def test_trainable_tower_keeps_its_graph_and_gets_the_builtins_gradients():
    builtin, ours = builtin_and_ours()
    batch = training_batch(ours.config.image_seq_length)
    builtin(**batch).loss.backward()
    seen, handle = record_output_requires_grad(last_used_layer(ours))
    ours(**batch).loss.backward()
    handle.remove()
    assert seen == [True]
    expected = state_dict_from_llava_hf(gradients(builtin), ours.config)
    actual = gradients(ours)
    tower = [name for name in actual if name.startswith("model.vision_tower.")]
    assert tower and all(actual[name].abs().sum() > 0 for name in tower if ".layers.0." in name)
    for name in tower:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)


def test_lora_on_the_tower_gets_gradients():
    from peft import LoraConfig, get_peft_model

    _, ours = builtin_and_ours()
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*vision_tower.*\.(q_proj|v_proj)", init_lora_weights=False)
    model = get_peft_model(ours, config)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "vision_tower" in n and "lora_" not in n)
    model(**training_batch(ours.config.image_seq_length)).loss.backward()
    lora = {name: p.grad for name, p in model.named_parameters() if "vision_tower" in name and "lora_" in name}
    used = [name for name in lora if ".layers.0." in name]
    assert used and all(lora[name] is not None and lora[name].abs().sum() > 0 for name in used)


def test_gradient_with_respect_to_the_pixels_through_a_frozen_tower():
    builtin, ours = builtin_and_ours()
    batch = training_batch(ours.config.image_seq_length)
    pixels = {}
    for name, model in (("builtin", builtin), ("ours", ours)):
        freeze_tower(model)
        pixel_values = batch["pixel_values"].clone().requires_grad_()
        model(**{**batch, "pixel_values": pixel_values}).loss.backward()
        pixels[name] = pixel_values.grad
    assert pixels["ours"] is not None and pixels["ours"].abs().sum() > 0
    torch.testing.assert_close(pixels["ours"], pixels["builtin"], atol=1e-6, rtol=0)


def test_no_grad_and_eval_unchanged():
    """Outside autograd the check changes nothing: features equal the built-in's, under no_grad and inference_mode."""
    builtin, ours = builtin_and_ours()
    pixel_values = training_batch(ours.config.image_seq_length)["pixel_values"]
    with torch.no_grad():
        expected = torch.stack(builtin.model.get_image_features(pixel_values=pixel_values).pooler_output)
    with torch.inference_mode():
        actual = ours.model.get_image_features(pixel_values).pooler_output
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
