"""Multi-process training: `accelerate launch --num_processes 2` of `llava train` on CPU (gloo) matches a single
process with the same global batch, under DDP and under FSDP2 (the shipped accelerate configs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT
from training_fixtures import chat_records, save_tiny_model, write_dataset, write_images


ACCELERATE_CONFIGS = REPO_ROOT / "training" / "configs" / "accelerate"
# accelerate drops the FSDP plugin on CPU; this script (test-only) keeps it, then runs the `llava` command line
FSDP_ON_CPU = REPO_ROOT / "tests" / "fsdp_on_cpu.py"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    paths = write_images(root / "images")
    write_dataset(root / "chats.json", chat_records(paths, repeats=4))  # 20 samples: whole global batches of 4
    save_tiny_model(root / "base")
    return root


def run_train(
    root, name: str, num_processes: int, per_device_batch: int, *extra: str,
    accelerate_config: str = "ddp_cpu.yaml", entry: tuple[str, ...] = ("-m", "llava_cli"),
) -> subprocess.CompletedProcess:
    arguments = [
        *entry, "train",
        "--config", str(REPO_ROOT / "training" / "configs" / "tiny_stage2.yaml"),
        "--model_name_or_path", str(root / "base"),
        "--data_path", str(root / "chats.json"),
        "--image_root", str(root / "images"),
        "--output_dir", str(root / name),
        "--per_device_train_batch_size", str(per_device_batch),
        "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
        "--use_cpu", "true", *extra,
    ]
    command = [sys.executable, *arguments]
    if num_processes > 1:
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(ACCELERATE_CONFIGS / accelerate_config),
            "--num_processes", str(num_processes), "--main_process_port", str(free_port()),
            "--mixed_precision", "no",  # the GPU configs say bf16; compared with fp32 here
            *arguments,
        ]
    return subprocess.run(command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


def losses(root, name: str) -> list[float]:
    state = json.loads((root / name / "checkpoint-4" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def trained(root, name: str, num_processes: int, per_device_batch: int, *extra: str, **options) -> list[float]:
    result = run_train(root, name, num_processes, per_device_batch, *extra, **options)
    assert result.returncode == 0, result.stderr[-4000:]
    return losses(root, name)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(workspace):
    grouped = ("--group_by_modality_length", "true")
    single = trained(workspace, "single-grouped", 1, 4, *grouped)
    ddp = trained(workspace, "ddp", 2, 2, *grouped)
    assert len(single) == len(ddp) == 4
    assert ddp == pytest.approx(single, rel=1e-3, abs=1e-4)


@pytest.mark.slow
def test_ddp_with_packing_matches_one_padded_process(workspace):
    """Each rank packs its own batch; the loss (a token mean over the global batch) is the padded one."""
    grouped = ("--group_by_modality_length", "true")
    single = trained(workspace, "single-padded", 1, 4, *grouped)
    ddp = trained(workspace, "ddp-packed", 2, 2, *grouped, "--packing", "true", "--packing_max_tokens", "256")
    assert len(single) == len(ddp) == 4
    assert ddp == pytest.approx(single, rel=1e-3, abs=1e-4)


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_matches_one_process_and_resumes(workspace):
    # Random order, not grouped by modality. With seed 16 (accelerate's seeded sampler: torch.randperm(20) under
    # manual_seed(16)), step 1 gives one rank two text-only samples and the other two image samples, and steps 3
    # and 4 mix both on a rank: the ranks stay in step only because a text-only batch runs the tower too.
    fsdp = {"accelerate_config": "fsdp.yaml", "entry": (str(FSDP_ON_CPU),)}
    single = trained(workspace, "single", 1, 4, "--seed", "16")
    sharded = trained(workspace, "fsdp", 2, 2, "--seed", "16", **fsdp)
    assert len(single) == len(sharded) == 4
    assert sharded == pytest.approx(single, rel=1e-3, abs=1e-4)
    # the checkpoints are FSDP's sharded ones, and training resumes from them
    assert (workspace / "fsdp" / "checkpoint-2" / "pytorch_model_fsdp_0" / ".metadata").is_file()
    checkpoint = str(workspace / "fsdp" / "checkpoint-2")
    resumed = trained(workspace, "resumed", 2, 2, "--seed", "16", "--resume_from_checkpoint", checkpoint, **fsdp)
    assert resumed == pytest.approx(single, rel=1e-3, abs=1e-4)

    # The model that leaves training is whole and loads as this project's model, with the one-process weights.
    for name in ("fsdp", "resumed"):
        folder = workspace / name
        assert not list(folder.glob("_fsdp*.py")), "torch's FSDP sources were saved as the model's code"
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert auto_map["AutoModelForImageTextToText"] == "modeling_llava.LlavaForCausalLM"
        reference, weights = load_file(workspace / "single" / "model.safetensors"), load_file(folder / "model.safetensors")
        assert weights.keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_fsdp_launch_on_cpu_stops_instead_of_training_as_ddp(workspace):
    # Without the test's script, accelerate (1.16) would run the FSDP config on CPU as DDP, silently.
    result = run_train(workspace, "fsdp-unsharded", 2, 2, accelerate_config="fsdp.yaml")
    assert result.returncode != 0
    assert "llava train: FSDP was requested, but accelerate" in result.stderr
    assert "MULTI_CPU" in result.stderr
    assert not (workspace / "fsdp-unsharded" / "checkpoint-2").exists()
