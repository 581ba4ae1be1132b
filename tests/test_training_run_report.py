"""What a training run reports back: a run shorter than `logging_steps` still has its loss (the user guide's
`stage2.losses[-1]`), a LoRA run's trainable-parameter counts include its adapters, a chat template other than
the model's own is warned (the LoRA config no longer hard-codes one), and the libraries' warnings that were console
noise on CPU are gone."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from training.train import parse_config, run
from training_fixtures import chat_records, save_tiny_model, write_dataset, write_images

CONFIGS = REPO_ROOT / "training" / "configs"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run_report")
    write_dataset(root / "chats.json", chat_records(write_images(root / "images"), repeats=1))
    save_tiny_model(root / "base", template="chatml")
    return root


def tiny_stage2(workdir: Path, output: str, **overrides) -> dict:
    values = yaml.safe_load((CONFIGS / "tiny_stage2.yaml").read_text())
    values.update(model_name_or_path=str(workdir / "base"), data_path=str(workdir / "chats.json"),
                  image_root=str(workdir / "images"), output_dir=str(workdir / output))
    values.update(overrides)
    return values


def test_a_short_run_reports_its_loss_and_a_foreign_template_is_warned(workdir, caplog, capfd):
    config = tiny_stage2(workdir, "short", max_steps=2, chat_template="paper")
    del config["logging_steps"]  # transformers' default, 500
    with caplog.at_level(logging.WARNING, logger="training.train"):
        stage2 = run(config)
    print(stage2.losses[-1], stage2.model_dir)  # the user guide's line, as written
    assert len(stage2.losses) == 1
    assert "chat_template 'paper' is not the model's own chat template" in caplog.text
    # The data is converted once, under a bar that says what it does (it was two anonymous "Map" bars).
    console = capfd.readouterr().err
    assert "Map:" not in console
    assert console.count("Reading conversations: 100%") == 1


def test_a_lora_run_counts_its_adapters_and_keeps_the_models_template_quietly(workdir, caplog, recwarn):
    config = tiny_stage2(workdir, "lora", max_steps=1, use_peft=True, lora_r=4, lora_alpha=8, merge_lora=False)
    with caplog.at_level(logging.INFO, logger="training.train"):
        output = run(config)
    # The console noise of a CPU LoRA run, fixed at the cause: no pinned memory without an accelerator, no
    # deprecated gradient-checkpointing alias.
    noise = [str(w.message) for w in recwarn if "pin_memory" in str(w.message) or "is_gradient_checkpointing" in
             str(w.message)]
    assert noise == []
    counts = output.trainable_parameters
    adapters = sum(p.numel() for name, p in output.model.named_parameters() if "lora_" in name)
    assert adapters > 0 and counts["language_model"] == adapters
    assert counts["projector"] > 0 and counts["vision_tower"] == 0 and counts["lm_head"] == 0
    assert f"'language_model': {adapters}" in caplog.text
    assert "is not the model's own chat template" not in caplog.text


def test_the_lora_config_uses_the_models_own_template():
    script_args, _ = parse_config(yaml.safe_load((CONFIGS / "lora_stage2.yaml").read_text()))
    assert script_args.chat_template is None
