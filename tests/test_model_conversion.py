"""Weight/config conversion: llava-hf (v5 and legacy 4.x keys) and original LLaVA layouts."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from conftest import TINY_IMAGE_TOKEN_ID, tiny_llava_model
from modeling_llava import LlavaForCausalLM
from modeling_llava.convert import (
    config_from_llava_hf,
    config_to_llava_hf,
    infer_original_projector_type,
    state_dict_from_llava_hf,
    state_dict_from_original,
    state_dict_to_llava_hf,
    state_dict_to_original,
    text_config_from_original,
)


def inputs():
    torch.manual_seed(5)
    ids = torch.tensor([[1, 4] + [TINY_IMAGE_TOKEN_ID] * 25 + [5, 6, 7]])
    return dict(input_ids=ids, pixel_values=torch.randn(1, 3, 30, 30))


def export_to_builtin(model: LlavaForCausalLM) -> LlavaForConditionalGeneration:
    builtin = LlavaForConditionalGeneration(config_to_llava_hf(model.config)).eval()
    builtin.load_state_dict(state_dict_to_llava_hf(model.state_dict(), model.config), strict=True)
    return builtin


@pytest.mark.parametrize("projector_type", ["mlp2x_gelu", "linear"])
def test_export_to_llava_hf_gives_identical_logits(projector_type):
    model = tiny_llava_model(seed=2, projector_type=projector_type)
    builtin = export_to_builtin(model)
    with torch.no_grad():
        expected = model(**inputs()).logits
        actual = builtin(**inputs()).logits
    # `linear` exports as linear_2 = identity with the identity activation: exact, not merely close.
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)


@pytest.mark.parametrize("projector_type", ["mlp2x_gelu", "linear"])
def test_builtin_to_ours_to_builtin_roundtrips_exactly(projector_type):
    model = tiny_llava_model(seed=4, projector_type=projector_type)
    builtin = export_to_builtin(model)
    builtin_state = builtin.state_dict()

    config = config_from_llava_hf(builtin.config, builtin_state)
    assert config.projector_type == projector_type
    ours = LlavaForCausalLM(config)
    ours.load_state_dict(state_dict_from_llava_hf(builtin_state, config), strict=True)
    back = export_to_builtin(ours)
    for key, value in builtin_state.items():
        assert torch.equal(back.state_dict()[key], value), key
    assert back.config.to_dict()["text_config"] == builtin.config.to_dict()["text_config"]


def test_legacy_4x_llava_hf_keys_are_renamed():
    model = tiny_llava_model(seed=1)
    v5 = state_dict_to_llava_hf(model.state_dict(), model.config)
    legacy = {}
    for key, value in v5.items():
        if key.startswith("model.language_model."):
            legacy["language_model.model." + key[len("model.language_model.") :]] = value
        elif key.startswith("model.vision_tower."):
            legacy["vision_tower.vision_model." + key[len("model.vision_tower.") :]] = value
        elif key.startswith("model.multi_modal_projector."):
            legacy[key[len("model.") :]] = value
        elif key == "lm_head.weight":
            legacy["language_model.lm_head.weight"] = value
    assert len(legacy) == len(v5)
    renamed = state_dict_from_llava_hf(legacy, model.config)
    assert renamed.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(renamed[key], value)


def test_mlp3x_cannot_be_exported_to_llava_hf():
    model = tiny_llava_model(projector_type="mlp3x_gelu")
    with pytest.raises(ValueError, match="has 3 layers; llava-hf's projector has exactly 2"):
        config_to_llava_hf(model.config)


def original_layout(model: LlavaForCausalLM) -> dict[str, torch.Tensor]:
    """The original repo's key names, written out by hand from its module tree (not via our converter):
    LlavaLlamaModel(LlamaModel) holds embed_tokens/layers/norm plus `mm_projector` (nn.Linear, or
    nn.Sequential(Linear, GELU, Linear)) and `vision_tower` (CLIPVisionTower whose `.vision_tower` is a
    CLIPVisionModel, itself holding `.vision_model`)."""
    state = model.state_dict()
    original = {}
    for key, value in state.items():
        if key.startswith("model.language_model."):
            original["model." + key[len("model.language_model.") :]] = value
        elif key.startswith("model.vision_tower."):
            original["model.vision_tower.vision_tower.vision_model." + key[len("model.vision_tower.") :]] = value
        elif key == "lm_head.weight":
            original[key] = value
    if model.config.projector_type == "linear":
        original["model.mm_projector.weight"] = state["model.multi_modal_projector.linear_1.weight"]
        original["model.mm_projector.bias"] = state["model.multi_modal_projector.linear_1.bias"]
    else:  # Sequential(Linear, GELU, Linear): indices 0 and 2
        for index, layer in ((0, 1), (2, 2)):
            for kind in ("weight", "bias"):
                original[f"model.mm_projector.{index}.{kind}"] = state[f"model.multi_modal_projector.linear_{layer}.{kind}"]
    return original


@pytest.mark.parametrize("projector_type", ["linear", "mlp2x_gelu"])
def test_original_to_ours_roundtrips_exactly(projector_type):
    model = tiny_llava_model(seed=6, projector_type=projector_type)
    original = original_layout(model)
    assert infer_original_projector_type(original) == projector_type
    ours = state_dict_from_original(original)
    assert ours.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(ours[key], value), key
    back = state_dict_to_original(ours, model.config)
    assert back.keys() == original.keys()
    assert all(torch.equal(back[key], original[key]) for key in original)


def test_stage1_projector_only_checkpoint_is_recognised():
    projector = {"model.mm_projector.0.weight": torch.zeros(4, 2), "model.mm_projector.0.bias": torch.zeros(4),
                 "model.mm_projector.2.weight": torch.zeros(4, 4), "model.mm_projector.2.bias": torch.zeros(4)}
    assert infer_original_projector_type(projector) == "mlp2x_gelu"
    assert set(state_dict_from_original(projector)) == {
        "model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_1.bias",
        "model.multi_modal_projector.linear_2.weight", "model.multi_modal_projector.linear_2.bias",
    }


def test_unknown_original_keys_are_reported_not_dropped():
    with pytest.raises(ValueError, match="no counterpart.*mystery.weight"):
        state_dict_from_original({"mystery.weight": torch.zeros(1)})


def test_original_config_fields_are_stripped_from_the_text_config():
    original = {"model_type": "llava", "hidden_size": 48, "mm_vision_tower": "openai/clip", "mm_hidden_size": 32,
                "mm_projector_type": "mlp2x_gelu", "architectures": ["LlavaLlamaForCausalLM"], "vocab_size": 128}
    text = text_config_from_original(original)
    assert text == {"model_type": "llama", "hidden_size": 48, "vocab_size": 128}
