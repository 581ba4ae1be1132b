"""`llava train`: shipped configs parse to the paper's hyper-parameters, `--help` documents every option, and a
tiny stage-1 run from the command line (YAML + overrides) produces a model and the projector artifact."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from training.arguments import LlavaTrainArguments
from training.train import PROJECTOR_FILE, parse_config
from training_fixtures import caption_records, save_tiny_model, write_dataset, write_images


CONFIGS = sorted((REPO_ROOT / "training" / "configs").glob("*.yaml"))


def load(name: str):
    import yaml

    return parse_config(yaml.safe_load((REPO_ROOT / "training" / "configs" / name).read_text()))


@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_every_shipped_config_parses(path):
    import yaml

    script_args, training_args = parse_config(yaml.safe_load(path.read_text()))
    assert script_args.stage in (1, 2)
    assert training_args.max_length is not None


def test_paper_configs_match_the_paper():
    stage1, args1 = load("paper_stage1.yaml")
    assert (stage1.stage, stage1.projector_type, stage1.vision_feature_layer) == (1, "linear", -2)
    assert stage1.vision_tower == "openai/clip-vit-large-patch14"
    assert args1.learning_rate == 2e-3 and args1.num_train_epochs == 1 and args1.max_length == 2048
    assert args1.per_device_train_batch_size * args1.gradient_accumulation_steps * 8 == 128
    stage2, args2 = load("paper_stage2.yaml")
    assert stage2.stage == 2 and stage2.chat_template == "paper" and stage2.freeze_vision_tower
    assert args2.learning_rate == 2e-5 and args2.num_train_epochs == 3 and args2.max_length == 2048
    assert args2.per_device_train_batch_size * args2.gradient_accumulation_steps * 8 == 32
    science, science_args = load("scienceqa.yaml")
    assert science_args.num_train_epochs == 12
    llava15, _ = load("llava15_stage1.yaml")
    assert (llava15.projector_type, llava15.image_aspect_mode) == ("mlp2x_gelu", "pad")
    assert llava15.vision_tower.endswith("-336")
    lora, _ = load("lora_stage2.yaml")
    assert lora.use_peft and lora.projector_learning_rate is not None


def test_help_explains_every_option():
    result = subprocess.run(
        [sys.executable, "-m", "llava_cli", "train", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for field in dataclasses.fields(LlavaTrainArguments):
        assert f"--{field.name}" in result.stdout, field.name
    assert "--learning_rate" in result.stdout  # TRL's SFTConfig options too
    assert "--config" in result.stdout


def test_cli_stage1_run_with_overrides(tmp_path):
    paths = write_images(tmp_path / "images")
    write_dataset(tmp_path / "captions.json", caption_records(paths, repeats=1))
    save_tiny_model(tmp_path / "base")
    command = [
        sys.executable, "-m", "llava_cli", "train",
        "--config", str(REPO_ROOT / "training" / "configs" / "tiny_stage1.yaml"),
        "--model_name_or_path", str(tmp_path / "base"),
        "--data_path", str(tmp_path / "captions.json"),
        "--image_root", str(tmp_path / "images"),
        "--output_dir", str(tmp_path / "out"),
        "--max_steps", "2",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / PROJECTOR_FILE).is_file()
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "Trained model:" in result.stdout


def test_cli_refuses_bad_data_with_exit_status_1(tmp_path):
    paths = write_images(tmp_path / "images")
    records = caption_records(paths, repeats=1)
    records[1]["image"] = "missing.png"
    write_dataset(tmp_path / "captions.json", records)
    save_tiny_model(tmp_path / "base")
    command = [
        sys.executable, "-m", "llava_cli", "train",
        "--config", str(REPO_ROOT / "training" / "configs" / "tiny_stage1.yaml"),
        "--model_name_or_path", str(tmp_path / "base"),
        "--data_path", str(tmp_path / "captions.json"),
        "--image_root", str(tmp_path / "images"),
        "--output_dir", str(tmp_path / "out"),
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert "missing.png" in result.stderr and records[1]["id"] in result.stderr
