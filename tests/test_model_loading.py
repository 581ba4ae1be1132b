"""Loading as Hub remote code (local folder and offline Hub cache), and LoRA through PEFT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, TINY_IMAGE_TOKEN_ID, tiny_llava_model

PROJECT_PACKAGES = ("modeling_llava", "processing", "training", "hub_upload", "datagen", "evaluation", "demo", "llava_cli")
AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText")


def place_in_hub_cache(folder: Path, hf_home: Path, repo_id: str) -> None:
    """Lay `folder` out as `huggingface_hub` caches a downloaded repo, so it loads by repo id offline."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_dir / "snapshots" / revision
    shutil.copytree(folder, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)


def run_isolated(code: str, hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that cannot import this repo's packages (as a Hub user would)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PYTHONPATH"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    # Block this project's packages: remote code must load with only torch + transformers installed.
    guard = textwrap.dedent(
        """
        import sys
        class _BlockProject:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in %r:
                    raise ImportError(f"{name} is not importable in this isolated check")
        sys.meta_path.insert(0, _BlockProject())
        """
        % (PROJECT_PACKAGES,)
    )
    return subprocess.run(
        [sys.executable, "-c", guard + textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    folder = tmp_path_factory.mktemp("tiny-llava")
    model = tiny_llava_model(seed=7)
    model.save_pretrained(folder)
    ids = torch.tensor([[1] + [TINY_IMAGE_TOKEN_ID] * 25 + [5, 6]])
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, 30, 30)
    torch.save({"input_ids": ids, "pixel_values": pixel_values}, folder / "inputs.pt")
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixel_values).logits
    return folder, logits


LOAD_ALL = """
import torch, transformers
inputs = torch.load({inputs!r})
reference = torch.load({reference!r})
config = transformers.AutoConfig.from_pretrained({target!r}, trust_remote_code=True)
assert config.model_type == "llava_remote", config.model_type
assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
for name in {classes!r}:
    model = getattr(transformers, name).from_pretrained({target!r}, trust_remote_code=True).eval()
    assert type(model).__name__ == "LlavaForCausalLM", (name, type(model))
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, reference)
print("LOADED", {classes!r})
"""


def test_all_auto_classes_load_from_a_local_folder(saved_model, tmp_path):
    folder, logits = saved_model
    torch.save(logits, tmp_path / "reference.pt")
    code = LOAD_ALL.format(
        inputs=str(folder / "inputs.pt"), reference=str(tmp_path / "reference.pt"), target=str(folder), classes=AUTO_CLASSES
    )
    result = run_isolated(code, tmp_path / "hf_home", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED" in result.stdout


def test_all_auto_classes_load_by_repo_id_from_offline_hub_cache(saved_model, tmp_path):
    folder, logits = saved_model
    hf_home = tmp_path / "hf_home"
    place_in_hub_cache(folder, hf_home, "someone/tiny-llava")
    torch.save(logits, tmp_path / "reference.pt")
    code = LOAD_ALL.format(
        inputs=str(folder / "inputs.pt"),
        reference=str(tmp_path / "reference.pt"),
        target="someone/tiny-llava",
        classes=AUTO_CLASSES,
    )
    result = run_isolated(code, hf_home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_loading_without_trust_remote_code_fails_loudly(saved_model, tmp_path):
    folder, _ = saved_model
    code = f"""
import transformers
try:
    transformers.AutoModelForImageTextToText.from_pretrained({str(folder)!r})
except Exception as error:
    print("REFUSED", type(error).__name__, error)
else:
    print("LOADED SILENTLY")
"""
    result = run_isolated(code, tmp_path / "hf_home", cwd=tmp_path)
    assert "REFUSED" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "trust_remote_code" in result.stdout


def test_config_json_declares_all_auto_classes(saved_model):
    folder, _ = saved_model
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_llava.LlavaConfig"
    # AutoModel names the backbone (vLLM builds it with AutoModel.from_config); its from_pretrained gives the
    # generating model (tests/test_remote_code_clients.py).
    assert auto_map["AutoModel"] == "modeling_llava.LlavaModel"
    for name in AUTO_CLASSES[1:]:
        assert auto_map[name] == "modeling_llava.LlavaForCausalLM"


LLM_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def test_lora_on_language_model_only_then_merge_keeps_logits_and_remote_code(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny_llava_model(seed=11)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=LLM_LORA_TARGETS, modules_to_save=["multi_modal_projector"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, lora)
    names = [name for name, _ in peft_model.named_modules()]
    assert any("language_model" in name and "lora_A" in name for name in names)
    assert not any("vision_tower" in name and "lora_" in name for name in names)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("multi_modal_projector" in name for name in trainable)
    assert not any("vision_tower" in name for name in trainable)

    ids = torch.tensor([[1] + [TINY_IMAGE_TOKEN_ID] * 25 + [5, 6, 7]])
    pixel_values = torch.randn(1, 3, 30, 30)
    loss = peft_model(input_ids=ids, pixel_values=pixel_values, labels=ids).loss
    loss.backward()
    projector_grads = [
        p.grad for name, p in peft_model.named_parameters() if "multi_modal_projector" in name and p.requires_grad
    ]
    assert projector_grads and all(g is not None and g.abs().sum() > 0 for g in projector_grads)

    peft_model.eval()
    with torch.no_grad():
        before = peft_model(input_ids=ids, pixel_values=pixel_values).logits
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        after = merged(input_ids=ids, pixel_values=pixel_values).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)

    merged.save_pretrained(tmp_path / "merged")
    torch.save({"input_ids": ids, "pixel_values": pixel_values}, tmp_path / "inputs.pt")
    torch.save(after, tmp_path / "reference.pt")
    code = LOAD_ALL.format(
        inputs=str(tmp_path / "inputs.pt"),
        reference=str(tmp_path / "reference.pt"),
        target=str(tmp_path / "merged"),
        classes=("AutoModelForImageTextToText",),
    )
    result = run_isolated(code, tmp_path / "hf_home", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
