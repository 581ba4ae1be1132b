"""User-level proofs of transformers' model contract, beside the common suite (tests/test_transformers_common.py):
speculative decoding, static cache, tuple outputs and meta-device loading of a partial checkpoint."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_IMAGE_TOKEN_ID, tiny_llava_model, tiny_text_config
from modeling_llava import LlavaForCausalLM
from modeling_llava.build import _init_projector

N_IMG = 25


def image_prompt(batch: int = 2):
    """Left-padded prompts with one image each, and their images."""
    torch.manual_seed(3)
    rows = [[1, 9] + [TINY_IMAGE_TOKEN_ID] * N_IMG + [11, 12, 13], [0, 0, 1] + [TINY_IMAGE_TOKEN_ID] * N_IMG + [14, 15]]
    input_ids = torch.tensor(rows[:batch])
    return dict(
        input_ids=input_ids,
        attention_mask=(input_ids != 0).long(),
        pixel_values=torch.randn(batch, 3, 30, 30),
    )


def greedy(model, inputs, **kwargs):
    return model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None, **kwargs)


def test_speculative_decoding_with_a_smaller_llava_gives_the_plain_greedy_tokens():
    # The assistant must take the images too: transformers' assisted decoding hands it every model input
    # (`pixel_values` included), which a text-only language model refuses.
    model = tiny_llava_model(seed=0)
    assistant = tiny_llava_model(seed=1, text_config=tiny_text_config(num_hidden_layers=1).to_dict())
    inputs = image_prompt(batch=1)  # transformers' assisted decoding takes one sequence at a time
    plain = greedy(model, inputs)
    text_only = {key: value for key, value in inputs.items() if key != "pixel_values"}
    assert not torch.equal(plain, greedy(model, text_only)), "the image must change the answer, or this proves nothing"
    assisted = greedy(model, inputs, assistant_model=assistant)
    assert torch.equal(assisted, plain)


def test_static_cache_generation_equals_dynamic_cache_generation():
    model = tiny_llava_model()
    inputs = image_prompt()
    assert torch.equal(greedy(model, inputs, cache_implementation="static"), greedy(model, inputs))


def test_tuple_outputs_equal_dict_outputs():
    model = tiny_llava_model()
    inputs = image_prompt()
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == TINY_IMAGE_TOKEN_ID, -100)
    with torch.no_grad():
        as_dict = model(**inputs, labels=labels, output_hidden_states=True)
        as_tuple = model(**inputs, labels=labels, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected)
    for actual, wanted in zip(as_tuple, expected):
        if isinstance(wanted, torch.Tensor):
            assert torch.equal(actual, wanted)
    loss, logits = as_tuple[:2]
    assert torch.equal(loss, as_dict.loss) and torch.equal(logits, as_dict.logits)
    # The base model, and get_image_features, follow the same switch.
    base = model.model(**inputs, return_dict=False)
    assert torch.equal(base[0], model.model(**inputs).last_hidden_state)
    features = model.get_image_features(inputs["pixel_values"], return_dict=False)
    assert isinstance(features, tuple)
    assert torch.equal(features[1], model.get_image_features(inputs["pixel_values"]).pooler_output)


def test_checkpoint_without_projector_loads_on_meta_and_initialises_it_as_llava_build(tmp_path):
    model = tiny_llava_model()
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    projector_keys = [key for key in state if ".multi_modal_projector." in key]
    assert projector_keys
    save_file({key: value for key, value in state.items() if key not in projector_keys}, weights, metadata={"format": "pt"})

    torch.manual_seed(123)
    loaded = LlavaForCausalLM.from_pretrained(tmp_path)  # transformers 5 builds the model on meta, then loads
    reference = tiny_llava_model().model.multi_modal_projector
    torch.manual_seed(123)
    _init_projector(reference, loaded.config)  # what `llava build` does for a fresh projector

    assert all(parameter.device.type == "cpu" for parameter in loaded.parameters())
    projector = loaded.model.multi_modal_projector.state_dict()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(projector[key], value, atol=0, rtol=0, msg=f"projector {key} differs from build's init")
    loaded_state = loaded.state_dict()
    for key, value in model.state_dict().items():  # everything else is the checkpoint's
        if ".multi_modal_projector." not in key:
            assert torch.equal(loaded_state[key], value), key
    with torch.no_grad():
        assert torch.isfinite(loaded(**image_prompt()).logits).all()


def test_config_takes_transformers_field_names_and_reads_the_old_ones(tmp_path):
    import json

    from conftest import tiny_llava_config
    from modeling_llava import LlavaConfig

    config = tiny_llava_config(multimodal_projector_bias=False, vision_feature_select_strategy="full")
    assert (config.multimodal_projector_bias, config.vision_feature_select_strategy) == (False, "full")
    assert config.image_token_index == config.image_token_id  # the built-in's name for the same field
    # A config.json written before the rename.
    old = tiny_llava_config().to_dict()
    old.pop("multimodal_projector_bias")
    old.update(projector_bias=False, vision_feature_select_strategy="cls_patch")
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = LlavaConfig.from_pretrained(tmp_path)
    assert (loaded.multimodal_projector_bias, loaded.vision_feature_select_strategy) == (False, "full")
    assert loaded.image_seq_length == 26 and "projector_bias" not in loaded.to_dict()
    model = LlavaForCausalLM(loaded)
    assert model.model.multi_modal_projector.linear_1.bias is None
    assert LlavaConfig(**{**old, "vision_feature_select_strategy": "patch"}).vision_feature_select_strategy == "default"
