"""Behaviour of LlavaForCausalLM on its own: generation, errors, projectors, encoders, dtypes, training."""

from __future__ import annotations

import pytest
import torch
from transformers import SiglipVisionConfig

from conftest import TINY_IMAGE_TOKEN_ID, tiny_llava_config, tiny_llava_model, tiny_text_config
from modeling_llava import LlavaConfig, LlavaForCausalLM

N_IMG = 25  # tiny config: (30 // 6) ** 2 patches, CLS dropped


def prompt(text_ids: list[int], image_first: bool = True) -> list[int]:
    image = [TINY_IMAGE_TOKEN_ID] * N_IMG
    return [1] + (image + text_ids if image_first else text_ids + image)


def test_image_seq_length_is_derived_from_vision_config():
    assert tiny_llava_config().image_seq_length == 25
    assert tiny_llava_config(vision_feature_select_strategy="full").image_seq_length == 26
    with pytest.raises(ValueError, match="image_seq_length=576"):
        tiny_llava_config(image_seq_length=576)


def test_vision_tower_runs_once_per_generate():
    model = tiny_llava_model()
    calls = []
    model.model.vision_tower.embeddings.register_forward_hook(lambda *args: calls.append(1))
    input_ids = torch.tensor([prompt([5, 6, 7])])
    out = model.generate(
        input_ids=input_ids, pixel_values=torch.randn(1, 3, 30, 30), max_new_tokens=6, do_sample=False, eos_token_id=None
    )
    assert out.shape[1] == input_ids.shape[1] + 6
    assert len(calls) == 1


def test_left_padded_batched_generation_equals_one_by_one():
    model = tiny_llava_model(seed=3)
    prompts = [prompt([5, 6, 7, 8, 9, 10]), prompt([11, 12], image_first=False), prompt([13, 14, 15])]
    torch.manual_seed(0)
    images = torch.randn(len(prompts), 3, 30, 30)
    singles = []
    for ids, image in zip(prompts, images):
        out = model.generate(
            input_ids=torch.tensor([ids]), pixel_values=image[None], max_new_tokens=8, do_sample=False, eos_token_id=None
        )
        singles.append(out[0, len(ids) :].tolist())
    width = max(map(len, prompts))
    input_ids = torch.tensor([[0] * (width - len(ids)) + ids for ids in prompts])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
    batched = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=images,
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    assert batched[:, width:].tolist() == singles


def test_several_images_in_one_sample_and_text_only_samples():
    model = tiny_llava_model()
    ids = [1, 5] + [TINY_IMAGE_TOKEN_ID] * N_IMG + [6] + [TINY_IMAGE_TOKEN_ID] * N_IMG + [7]
    out = model(input_ids=torch.tensor([ids]), pixel_values=torch.randn(2, 3, 30, 30))
    assert out.image_outputs.pooler_output.shape == (2, N_IMG, 48)
    text_only = model(input_ids=torch.tensor([[1, 5, 6, 7]]))
    assert text_only.logits.shape == (1, 4, 128)


def test_token_feature_mismatch_names_both_numbers():
    model = tiny_llava_model()
    ids = torch.tensor([[1] + [TINY_IMAGE_TOKEN_ID] * 20 + [5]])
    with pytest.raises(ValueError, match=r"20 image tokens.*25 features"):
        model(input_ids=ids, pixel_values=torch.randn(1, 3, 30, 30))
    # Image tokens without images in a training forward: the images were lost on the way.
    model.train()
    with pytest.raises(ValueError, match=r"training batch has 25 image tokens but no pixel_values"):
        model(input_ids=torch.tensor([prompt([5])]))


def test_image_tokens_without_images_are_ordinary_tokens_at_inference():
    # transformers' contract (assisted decoding, text-only passes over an image prompt): no images, no merge.
    model = tiny_llava_model()
    ids = torch.tensor([prompt([5])])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        expected = model.lm_head(model.model.language_model(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(logits, expected)


def test_wrong_pixel_size_is_a_clear_error():
    model = tiny_llava_model()
    with pytest.raises(ValueError, match=r"pixel_values have shape \(1, 3, 32, 32\).*\(num_images, 3, 30, 30\)"):
        model(input_ids=torch.tensor([prompt([5])]), pixel_values=torch.randn(1, 3, 32, 32))


def test_unknown_projector_type_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown projector_type 'mlp2x_relu'"):
        tiny_llava_config(projector_type="mlp2x_relu")


@pytest.mark.parametrize(
    "projector_type, expected_linears", [("linear", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3), ("identity", 0)]
)
def test_projector_types(projector_type, expected_linears):
    text = tiny_text_config(hidden_size=32, num_attention_heads=4) if projector_type == "identity" else tiny_text_config()
    model = LlavaForCausalLM(tiny_llava_config(projector_type=projector_type, text_config=text.to_dict()))
    linears = [m for m in model.model.multi_modal_projector.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == expected_linears
    out = model(input_ids=torch.tensor([prompt([5])]), pixel_values=torch.randn(1, 3, 30, 30))
    assert out.image_outputs.pooler_output.shape == (1, N_IMG, text.hidden_size)


def test_identity_projector_needs_equal_widths():
    with pytest.raises(ValueError, match="identity"):
        tiny_llava_config(projector_type="identity")


def test_siglip_vision_encoder_uses_all_patches():
    siglip = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=30, patch_size=6
    )
    config = tiny_llava_config(vision_config=siglip.to_dict(), vision_feature_select_strategy="full")
    assert config.image_seq_length == 25  # SigLIP has no CLS token to keep
    model = LlavaForCausalLM(config)
    out = model(input_ids=torch.tensor([prompt([5])]), pixel_values=torch.randn(1, 3, 30, 30))
    assert out.image_outputs.pooler_output.shape == (1, 25, 48)


@pytest.mark.parametrize("encoder", ["clip", "siglip"])
def test_the_model_names_exactly_the_vision_parameters_that_get_no_gradient(encoder):
    # vision_feature_layer -2: the last encoder layer, the final norm (and SigLIP's pooling head) never reach the
    # features; the trainer keeps exactly these frozen in an unfrozen tower (DDP would wait for their gradients).
    overrides = {}
    if encoder == "siglip":
        siglip = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                    image_size=30, patch_size=6)
        overrides = {"vision_config": siglip.to_dict(), "vision_feature_select_strategy": "full"}
    model = LlavaForCausalLM(tiny_llava_config(**overrides)).train()
    unused = model.model.vision_parameters_without_gradient()
    last = model.config.vision_config.num_hidden_layers - 1
    assert unused and all(f"layers.{last}." in name or "post_layernorm" in name or name.startswith("head.")
                          for name in unused)
    ids = torch.tensor([prompt([5, 6, 7])])
    model(input_ids=ids, pixel_values=torch.randn(1, 3, 30, 30), labels=ids).loss.backward()
    without = sorted(name for name, p in model.model.vision_tower.named_parameters() if p.grad is None or not p.grad.any())
    assert without == sorted(unused)


def test_the_image_feature_api_computes_the_features_and_names_what_they_depend_on():
    model = tiny_llava_model()
    settings, weights = model.vision_feature_dependencies()
    assert settings["vision_feature_layer"] == model.config.vision_feature_layer and "dtype" in settings
    assert set(weights) == set(model.model.vision_tower.state_dict())
    pixel_values = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        torch.testing.assert_close(model.get_vision_features(pixel_values), model.model.get_vision_features(pixel_values))


def test_gradient_checkpointing_gives_same_loss_and_gradients():
    model = tiny_llava_model().train()
    ids = torch.tensor([prompt([5, 6, 7, 8])])
    pixel_values = torch.randn(1, 3, 30, 30)

    def loss_and_grad():
        model.zero_grad()
        loss = model(input_ids=ids, pixel_values=pixel_values, labels=ids).loss
        loss.backward()
        return loss.detach(), model.model.multi_modal_projector.linear_1.weight.grad.clone()

    reference = loss_and_grad()
    model.activation_checkpointing_enable()
    checkpointed = loss_and_grad()
    torch.testing.assert_close(checkpointed[0], reference[0])
    torch.testing.assert_close(checkpointed[1], reference[1])
    assert reference[1].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward(dtype):
    model = tiny_llava_model().to(dtype)
    out = model(input_ids=torch.tensor([prompt([5, 6])]), pixel_values=torch.randn(1, 3, 30, 30))
    assert out.logits.dtype == dtype
    assert torch.isfinite(out.logits.float()).all()


def test_precomputed_vision_features_give_the_same_logits():
    model = tiny_llava_model()
    ids = torch.tensor([prompt([5, 6])])
    pixel_values = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        features = model.model.get_vision_features(pixel_values)
        expected = model(input_ids=ids, pixel_values=pixel_values).logits
        actual = model(input_ids=ids, vision_features=features).logits
    torch.testing.assert_close(actual, expected)


def test_generate_from_precomputed_vision_features_equals_generate_from_pixels():
    # generate drops pixel_values after the prefill; vision_features must be dropped too, or the first decode
    # step fails with "0 image tokens but 1 image(s)".
    model = tiny_llava_model().eval()
    ids = torch.tensor([prompt([5, 6])])
    pixel_values = torch.randn(1, 3, 30, 30)
    with torch.no_grad():
        features = model.model.get_vision_features(pixel_values)
        expected = model.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=4, do_sample=False)
        actual = model.generate(input_ids=ids, vision_features=features, max_new_tokens=4, do_sample=False)
    assert actual.shape[1] == ids.shape[1] + 4
    assert torch.equal(actual, expected)


def test_save_and_reload_safetensors_roundtrip(tmp_path):
    model = tiny_llava_model(projector_type="linear")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert {"configuration_llava.py", "modeling_llava.py"} <= {p.name for p in tmp_path.iterdir()}
    reloaded = LlavaForCausalLM.from_pretrained(tmp_path)
    assert isinstance(reloaded.config, LlavaConfig) and reloaded.config.model_type == "llava_remote"
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_tied_embeddings_follow_text_config(tmp_path):
    config = tiny_llava_config(text_config=tiny_text_config(tie_word_embeddings=True).to_dict())
    model = LlavaForCausalLM(config)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.save_pretrained(tmp_path)
    reloaded = LlavaForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()


def test_text_only_batch_in_a_distributed_job_runs_tower_and_projector_without_changing_the_loss(monkeypatch):
    # Under ZeRO-3/FSDP (collective parameter gathering) and DDP (gradient reduction) every rank must run the same
    # modules; a text-only batch therefore runs one blank image through the tower and projector, weighted by zero.
    import modeling_llava.modeling_llava as modeling

    model = tiny_llava_model().train()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    tower_calls = []
    model.model.vision_tower.embeddings.register_forward_hook(lambda *args: tower_calls.append(1))
    single_process = model(input_ids=ids, labels=ids).loss
    assert tower_calls == []
    monkeypatch.setattr(modeling, "_every_rank_must_run_every_module", lambda: True)
    distributed = model(input_ids=ids, labels=ids).loss
    assert tower_calls == [1]
    assert torch.equal(distributed, single_process)
    distributed.backward()
    projector_grads = [p.grad for p in model.model.multi_modal_projector.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in projector_grads)
    # not while generating or evaluating
    model.eval()
    model(input_ids=ids)
    assert tower_calls == [1]
