"""`llava convert --to llava-hf` as a user runs it: silent, self-contained, in the key layout every reader loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import REPO_ROOT
from training_fixtures import save_tiny_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("llava_hf_export")
    ours = save_tiny_model(root / "ours")
    export = root / "export"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "llava_cli", "convert", str(ours), str(export), "--to", "llava-hf"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return ours, export, result.stdout + result.stderr


def test_convert_asks_nothing_and_warns_nothing_about_our_own_folder(exported):
    _, _, output = exported
    assert "Do you wish to run the custom code" not in output
    assert "to instantiate a model of type" not in output


def test_export_refers_to_no_file_it_lacks(exported):
    _, export, _ = exported
    assert not list(export.glob("*.py"))
    for file in export.glob("*.json"):
        assert "auto_map" not in file.read_text(encoding="utf-8"), file.name


def test_export_writes_the_vision_model_key_layout(exported):
    _, export, _ = exported
    with safe_open(str(export / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    vision_keys = [key for key in keys if key.startswith("vision_tower.")]
    assert vision_keys and all(key.startswith("vision_tower.vision_model.") for key in vision_keys)
    assert {key.split(".")[0] for key in keys} == {"vision_tower", "multi_modal_projector", "language_model"}


def test_builtin_classes_load_the_export_without_remote_code_and_match_ours(exported):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_llava import LlavaForCausalLM

    ours, export, _ = exported
    builtin = AutoModelForImageTextToText.from_pretrained(export).eval()
    assert type(builtin).__name__ == "LlavaForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(export)
    assert type(processor).__name__ == "LlavaProcessor"
    model = LlavaForCausalLM.from_pretrained(ours).eval()
    from PIL import Image

    inputs = processor(images=Image.new("RGB", (40, 32), (200, 30, 30)), text="<image>\nWhat?", return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits
        got = builtin(**inputs).logits
    torch.testing.assert_close(got, expected)
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "llava"
