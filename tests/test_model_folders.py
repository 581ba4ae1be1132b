"""Folder-level building and conversion: `llava build`, `llava convert` (llava-hf both ways, original, stage-1 projector)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionModel,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
)
from transformers import LlavaConfig as HFLlavaConfig
from transformers import LlavaProcessor as HFLlavaProcessor

from conftest import REPO_ROOT, tiny_text_config, tiny_vision_config
from modeling_llava import convert_checkpoints
from modeling_llava.convert import state_dict_to_original
from processing.templates import get_chat_template
from processing_fixtures import gradient_image, smollm2_tokenizer, tiny_clip_image_processor

VOCAB = 49152  # SmolLM2's tokenizer, without <image>


def run_cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "llava_cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny CLIP vision checkpoint and a tiny Llama checkpoint with SmolLM2's tokenizer (no <image>)."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    CLIPVisionModel(tiny_vision_config()).save_pretrained(root / "clip")
    tiny_clip_image_processor().save_pretrained(root / "clip")
    llm = LlamaForCausalLM(tiny_text_config(vocab_size=VOCAB))
    llm.save_pretrained(root / "llm")
    tokenizer = smollm2_tokenizer()
    # the shared fixture adds <image>; a raw LLM checkpoint has none, so start from the base vocabulary
    base_tokenizer = type(tokenizer).from_pretrained(_strip_image_token(tokenizer, root / "tok"))
    base_tokenizer.save_pretrained(root / "llm")
    return root


def _strip_image_token(tokenizer, folder):
    tokenizer.save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("extra_special_tokens", None)
    config["added_tokens_decoder"] = {k: v for k, v in config.get("added_tokens_decoder", {}).items() if v["content"] != "<image>"}
    config_file.write_text(json.dumps(config))
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    tokenizer_json["added_tokens"] = [t for t in tokenizer_json["added_tokens"] if t["content"] != "<image>"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    return folder


def chat_inputs(processor, question: str = "What is in the image?"):
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    return processor(images=[gradient_image(40, 30)], text=[text], return_tensors="pt")


def test_llava_build_assembles_parts_and_loads_as_remote_code(parts, tmp_path):
    out = tmp_path / "built"
    result = run_cli("build", str(out), "--vision", str(parts / "clip"), "--language", str(parts / "llm"),
                     "--projector-type", "mlp2x_gelu", "--chat-template", "chatml")
    assert "25 image tokens" in result.stdout
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert model.config.image_token_id == VOCAB == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert model.get_input_embeddings().weight.shape[0] == VOCAB + 1
    # the pretrained parts arrive unchanged
    clip = CLIPVisionModel.from_pretrained(parts / "clip")
    for key, value in clip.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[key], value), key
    llm = LlamaForCausalLM.from_pretrained(parts / "llm")
    assert torch.equal(model.model.language_model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    assert torch.equal(model.get_input_embeddings().weight[:VOCAB], llm.get_input_embeddings().weight)
    inputs = chat_inputs(processor)
    assert int((inputs["input_ids"] == VOCAB).sum()) == 25
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.fixture(scope="module")
def ours(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("ours") / "model"
    run_cli("build", str(out), "--vision", str(parts / "clip"), "--language", str(parts / "llm"),
            "--projector-type", "linear", "--chat-template", "vicuna_v1")
    return out


def test_to_llava_hf_loads_with_builtin_classes_and_gives_identical_logits(ours, tmp_path):
    run_cli("convert", str(ours), str(tmp_path / "hf"), "--to", "llava-hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "llava" and "auto_map" not in config
    assert not list((tmp_path / "hf").glob("*.py"))
    builtin = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    builtin_processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    assert isinstance(builtin_processor, HFLlavaProcessor)
    model = AutoModelForImageTextToText.from_pretrained(ours, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(ours, trust_remote_code=True)
    inputs, builtin_inputs = chat_inputs(processor), chat_inputs(builtin_processor)
    assert torch.equal(inputs["input_ids"], builtin_inputs["input_ids"])
    assert torch.equal(inputs["pixel_values"], builtin_inputs["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(builtin(**builtin_inputs).logits, model(**inputs).logits, atol=0, rtol=0)


def test_from_llava_hf_then_back_roundtrips_exactly(ours, tmp_path):
    convert_checkpoints.to_llava_hf(ours, tmp_path / "hf")
    convert_checkpoints.from_llava_hf(tmp_path / "hf", tmp_path / "ours")
    convert_checkpoints.to_llava_hf(tmp_path / "ours", tmp_path / "hf2")
    first = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").state_dict()
    second = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf2").state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "ours", trust_remote_code=True)
    assert reloaded.config.projector_type == "linear"


def test_builtin_llava_hf_checkpoint_converts_to_ours(parts, tmp_path):
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(1)
    hf_config = HFLlavaConfig(
        vision_config=tiny_vision_config().to_dict(), text_config=tiny_text_config(vocab_size=VOCAB + 1).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
    )
    builtin = LlavaForConditionalGeneration(hf_config).eval()
    builtin.save_pretrained(tmp_path / "hf")
    HFLlavaProcessor(image_processor=tiny_clip_image_processor(), tokenizer=tokenizer, patch_size=6,
                     vision_feature_select_strategy="default", num_additional_image_tokens=1,
                     chat_template=get_chat_template("chatml", tokenizer)).save_pretrained(tmp_path / "hf")
    run_cli("convert", str(tmp_path / "hf"), str(tmp_path / "ours"), "--from", "llava-hf")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "ours", trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "ours", trust_remote_code=True)
    assert model.config.projector_type == "mlp2x_gelu"
    inputs = chat_inputs(processor)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, builtin(**inputs).logits, atol=1e-5, rtol=0)


def test_original_checkpoint_and_stage1_projector_convert(ours, parts, tmp_path):
    reference = AutoModelForImageTextToText.from_pretrained(ours, trust_remote_code=True).eval()
    config = reference.config
    # an original-layout checkpoint: the LLM's own vocabulary (no <image> row), mm_* config fields
    state = state_dict_to_original(reference.state_dict(), config)
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"][:VOCAB].clone()
    state["lm_head.weight"] = state["lm_head.weight"][:VOCAB].clone()
    src = tmp_path / "original"
    src.mkdir()
    torch.save(state, src / "pytorch_model.bin")
    original_config = {**config.text_config.to_dict(), "vocab_size": VOCAB, "model_type": "llava_llama",
                       "architectures": ["LlavaLlamaForCausalLM"], "mm_vision_tower": str(parts / "clip"),
                       "mm_hidden_size": 32, "mm_projector_type": "linear", "mm_vision_select_layer": -2,
                       "mm_vision_select_feature": "patch", "mm_use_im_start_end": False}
    (src / "config.json").write_text(json.dumps(original_config))
    type(smollm2_tokenizer()).from_pretrained(parts / "llm").save_pretrained(src)
    run_cli("convert", str(src), str(tmp_path / "converted"), "--from", "original")
    converted = AutoModelForImageTextToText.from_pretrained(tmp_path / "converted", trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "converted", trust_remote_code=True)
    inputs = chat_inputs(processor)
    with torch.no_grad():
        expected = reference(**inputs).logits[..., :VOCAB]
        torch.testing.assert_close(converted(**inputs).logits[..., :VOCAB], expected, atol=1e-5, rtol=0)

    # stage 1's projector-only artifact + the base LLM and vision tower
    projector = {k: v for k, v in state.items() if k.startswith("model.mm_projector.")}
    torch.save(projector, tmp_path / "mm_projector.bin")
    run_cli("convert", str(tmp_path / "mm_projector.bin"), str(tmp_path / "from_projector"), "--from", "original",
            "--language", str(parts / "llm"), "--vision", str(parts / "clip"))
    rebuilt = AutoModelForImageTextToText.from_pretrained(tmp_path / "from_projector", trust_remote_code=True)
    assert torch.equal(rebuilt.model.multi_modal_projector.linear_1.weight, reference.model.multi_modal_projector.linear_1.weight)


def test_output_folder_must_be_empty(ours, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="already exists"):
        convert_checkpoints.to_llava_hf(ours, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "user data"


def test_embedding_mean_projector_init_starts_image_tokens_at_the_mean_word_embedding(parts):
    from modeling_llava.build import build_llava

    torch.manual_seed(0)
    normal, _ = build_llava(parts / "clip", parts / "llm", projector_type="mlp2x_gelu")
    torch.manual_seed(0)
    centred, _ = build_llava(parts / "clip", parts / "llm", projector_type="mlp2x_gelu", projector_init="embedding_mean")
    mean_embedding = LlamaForCausalLM.from_pretrained(parts / "llm").get_input_embeddings().weight.mean(0)
    torch.testing.assert_close(centred.model.multi_modal_projector.linear_2.bias, mean_embedding)
    assert torch.count_nonzero(normal.model.multi_modal_projector.linear_2.bias) == 0
    # only that bias differs; the weights are the same seeded draw
    assert torch.equal(centred.model.multi_modal_projector.linear_1.weight, normal.model.multi_modal_projector.linear_1.weight)
    with pytest.raises(ValueError, match="projector_init='embedding_mean'.*identity"):
        build_llava(parts / "clip", parts / "llm", projector_type="identity", projector_init="embedding_mean")
    with pytest.raises(ValueError, match="projector_init must be one of"):
        build_llava(parts / "clip", parts / "llm", projector_init="zeros")
