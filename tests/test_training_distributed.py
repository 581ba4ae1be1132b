"""Multi-process training: `accelerate launch --num_processes 2` (DDP on CPU, gloo) of `llava train` matches a
single process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from training_fixtures import chat_records, save_tiny_model, write_dataset, write_images


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp_path, name: str, num_processes: int, per_device_batch: int, *options: str) -> list[float]:
    output_dir = tmp_path / name
    arguments = [
        "-m", "llava_cli", "train",
        "--config", str(REPO_ROOT / "training" / "configs" / "tiny_stage2.yaml"),
        "--model_name_or_path", str(tmp_path / "base"),
        "--data_path", str(tmp_path / "chats.json"),
        "--image_root", str(tmp_path / "images"),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", str(per_device_batch),
        "--max_steps", "4", "--group_by_modality_length", "true",
        "--save_strategy", "steps", "--save_steps", "4", *options,
    ]
    if num_processes == 1:
        command = [sys.executable, *arguments]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO_ROOT / "training" / "configs" / "accelerate" / "ddp_cpu.yaml"),
            "--num_processes", str(num_processes), "--main_process_port", str(free_port()), *arguments,
            "--use_cpu", "true",
        ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((output_dir / "checkpoint-4" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    paths = write_images(tmp_path / "images")
    write_dataset(tmp_path / "chats.json", chat_records(paths, repeats=4))  # 20 samples: whole global batches of 4
    save_tiny_model(tmp_path / "base")
    single = launch(tmp_path, "single", num_processes=1, per_device_batch=4)
    ddp = launch(tmp_path, "ddp", num_processes=2, per_device_batch=2)
    assert len(single) == len(ddp) == 4
    assert ddp == pytest.approx(single, rel=1e-3, abs=1e-4)


@pytest.mark.slow
def test_ddp_with_packing_matches_one_padded_process(tmp_path):
    """Each rank packs its own batch; the loss (a token mean over the global batch) is the padded one."""
    paths = write_images(tmp_path / "images")
    write_dataset(tmp_path / "chats.json", chat_records(paths, repeats=4))
    save_tiny_model(tmp_path / "base")
    single = launch(tmp_path, "single", num_processes=1, per_device_batch=4)
    ddp = launch(tmp_path, "ddp-packed", 2, 2, "--packing", "true", "--packing_max_tokens", "256")
    assert len(single) == len(ddp) == 4
    assert ddp == pytest.approx(single, rel=1e-3, abs=1e-4)
