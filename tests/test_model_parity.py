"""Our LlavaForCausalLM against transformers' built-in LlavaForConditionalGeneration on identical weights."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaConfig as HFLlavaConfig
from transformers import LlavaForConditionalGeneration

from conftest import TINY_IMAGE_TOKEN_ID, tiny_text_config, tiny_vision_config
from modeling_llava import LlavaForCausalLM
from modeling_llava.convert import config_from_llava_hf, state_dict_from_llava_hf

PAD = 0


def builtin_and_ours(**hf_overrides):
    torch.manual_seed(0)
    kwargs = dict(
        vision_config=tiny_vision_config().to_dict(),
        text_config=tiny_text_config().to_dict(),
        image_token_index=TINY_IMAGE_TOKEN_ID,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    hf_config = HFLlavaConfig(**{**kwargs, **hf_overrides})
    builtin = LlavaForConditionalGeneration(hf_config).eval()
    state_dict = builtin.state_dict()
    config = config_from_llava_hf(hf_config, state_dict)
    ours = LlavaForCausalLM(config).eval()
    ours.load_state_dict(state_dict_from_llava_hf(state_dict, config), strict=True)
    return builtin, ours


def left_padded_batch(num_image_tokens: int):
    """Two samples of different lengths, each with one image, left padded."""
    first = [1, 5, 6] + [TINY_IMAGE_TOKEN_ID] * num_image_tokens + [7, 8, 9, 10, 11]
    second = [1] + [TINY_IMAGE_TOKEN_ID] * num_image_tokens + [12, 13]
    width = max(len(first), len(second))
    rows = [[PAD] * (width - len(ids)) + ids for ids in (first, second)]
    input_ids = torch.tensor(rows)
    attention_mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(first), width - len(second)])[:, None]).long()
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 30, 30)
    return input_ids, attention_mask, pixel_values


def test_mlp2x_gelu_logits_match_builtin_with_left_padding():
    builtin, ours = builtin_and_ours()
    input_ids, attention_mask, pixel_values = left_padded_batch(ours.config.image_seq_length)
    with torch.no_grad():
        expected = builtin(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
        actual = ours(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
    keep = attention_mask.bool()
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual[keep], expected[keep], atol=1e-4, rtol=0)


def test_greedy_generation_is_token_identical_to_builtin():
    builtin, ours = builtin_and_ours()
    input_ids, attention_mask, pixel_values = left_padded_batch(ours.config.image_seq_length)
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=PAD,
        eos_token_id=None,
    )
    expected = builtin.generate(**kwargs)
    actual = ours.generate(**kwargs)
    assert torch.equal(actual, expected)


def test_vision_features_equal_builtin_selected_layer_and_skip_last_layer():
    builtin, ours = builtin_and_ours()
    pixel_values = torch.randn(3, 3, 30, 30)
    calls = []
    last_layer = ours.model.vision_tower.encoder.layers[-1]
    handle = last_layer.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        ours_features = ours.model.get_image_features(pixel_values).pooler_output
        builtin_features = torch.stack(
            builtin.model.get_image_features(pixel_values=pixel_values).pooler_output
        )
    handle.remove()
    torch.testing.assert_close(ours_features, builtin_features, atol=1e-5, rtol=0)
    assert calls == [], "the last vision layer must not run for vision_feature_layer=-2"
    assert ours.model.vision_layers_used() == 2


@pytest.mark.parametrize("feature_layer", [[-2, -1], [0, 2]])
def test_multi_layer_features_match_builtin(feature_layer):
    builtin, ours = builtin_and_ours(vision_feature_layer=feature_layer)
    assert ours.config.vision_feature_layers == feature_layer
    input_ids, attention_mask, pixel_values = left_padded_batch(ours.config.image_seq_length)
    with torch.no_grad():
        expected = builtin(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
        actual = ours(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
    keep = attention_mask.bool()
    torch.testing.assert_close(actual[keep], expected[keep], atol=1e-4, rtol=0)


def test_full_strategy_matches_builtin_full():
    builtin, ours = builtin_and_ours(vision_feature_select_strategy="full")
    assert ours.config.vision_feature_select_strategy == "full"
    assert ours.config.image_seq_length == 26
    input_ids, attention_mask, pixel_values = left_padded_batch(26)
    with torch.no_grad():
        expected = builtin(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
        actual = ours(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
    torch.testing.assert_close(actual[attention_mask.bool()], expected[attention_mask.bool()], atol=1e-4, rtol=0)
