"""Export what `llava train` (TRL's SFTTrainer) really leaves: stage 1's model and projector file, a LoRA run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from conftest import REPO_ROOT
from hub_upload.checks import check_export_folder
from hub_upload.export import ExportOptions, export_model
from hub_upload.preflight import run_preflight
from training.train import PROJECTOR_FILE, run
from training_fixtures import caption_records, chat_records, save_tiny_model, write_dataset, write_images


def config(name: str, **overrides) -> dict:
    values = yaml.safe_load((REPO_ROOT / "training" / "configs" / name).read_text())
    values.update({key: str(value) if isinstance(value, Path) else value for key, value in overrides.items()})
    return values


def weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(folder.glob("model*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    paths = write_images(root / "images")
    write_dataset(root / "captions.json", caption_records(paths, repeats=2))
    write_dataset(root / "chats.json", chat_records(paths, repeats=2))
    save_tiny_model(root / "base")
    common = dict(model_name_or_path=root / "base", image_root=root / "images", max_steps=3)
    run(config("tiny_stage1.yaml", data_path=root / "captions.json", output_dir=root / "stage1",
               save_strategy="steps", save_steps=3, **common))
    run(config("tiny_lora_stage2.yaml", data_path=root / "chats.json", output_dir=root / "lora", **common))
    return root


def test_stage1_output_exports_and_passes_preflight(runs, tmp_path):
    out = export_model(runs / "stage1", tmp_path / "stage1", ExportOptions(repo_id="me/tiny-stage1"))
    assert not check_export_folder(out)
    trained = weights(runs / "stage1")
    exported = weights(out)
    assert trained.keys() == exported.keys() and all(torch.equal(trained[k], exported[k]) for k in trained)
    report = run_preflight(out, repo_id="me/tiny-stage1")
    assert report.passed, report.format()


def test_a_trl_checkpoint_exports_with_its_training_summary(runs, tmp_path):
    checkpoint = runs / "stage1" / "checkpoint-3"
    assert (checkpoint / "trainer_state.json").is_file()
    out = export_model(checkpoint, tmp_path / "checkpoint")
    assert not check_export_folder(out)
    assert "Trained with TRL's SFTTrainer: 3 optimizer steps" in ModelCard.load(out / "README.md").text


def test_stage1_projector_file_on_the_base_model_equals_the_stage1_model(runs, tmp_path):
    out = export_model(runs / "stage1" / PROJECTOR_FILE, tmp_path / "projector",
                       ExportOptions(base_model=str(runs / "base")))
    full, from_projector = weights(runs / "stage1"), weights(out)
    assert full.keys() == from_projector.keys()
    assert all(torch.equal(full[k], from_projector[k]) for k in full)


def test_lora_run_exports_as_adapter_and_merged(runs, tmp_path):
    adapter = export_model(runs / "lora", tmp_path / "adapter", ExportOptions(base_model_repo_id="me/tiny-base"))
    assert not check_export_folder(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "me/tiny-base"
    merged = export_model(runs / "lora", tmp_path / "merged", ExportOptions(base_model=str(runs / "base"), merge=True))
    assert not check_export_folder(merged)
    # Our merge of the adapter equals the merged model the training run wrote itself.
    ours, theirs = weights(merged), weights(runs / "lora" / "merged")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)
