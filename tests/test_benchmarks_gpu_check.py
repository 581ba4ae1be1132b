"""`benchmarks/gpu_check.py --tiny` runs on CPU and prints its whole table, so the GPU check's code path is exercised
in CI even though no GPU runs it here."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def table_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        if line.startswith("| ") and not line.startswith("| row "):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_tiny_run_prints_every_row(gpu_check, capsys):
    assert gpu_check.main(["--tiny", "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    rows = table_rows(output)
    assert list(rows) == [
        "stage 2 padded",
        "stage 2 packed (128 tokens/row)",
        "inference prefill, batch 2",
        "inference decode, batch 2",
    ]
    padded = rows["stage 2 padded"]
    assert padded[0].endswith("tok/s") and padded[2] == "MFU n/a"  # no peak is known for a CPU
    packed = rows["stage 2 packed (128 tokens/row)"]
    assert packed[0] == "packed: not available in this build" or packed[0].endswith("tok/s")
    for name in ("inference prefill, batch 2", "inference decode, batch 2"):
        assert rows[name][0].startswith("ours ") and rows[name][1].startswith("built-in ")
        assert "greedy tokens identical: yes" in rows[name][3]


def test_training_flops_follow_the_stated_formula(gpu_check):
    """6·(N_llm + N_head)·T + 6·N_projector·I + 2·N_tower·P, recomputed by hand for a one-sample batch."""
    import torch

    load = gpu_check.workload(gpu_check.parse_args(["--tiny"]))
    _, model = gpu_check.build_pair(load.sizes, torch.device("cpu"), torch.float32, "sdpa")
    sample = gpu_check.instruct_like_samples(load, 1, seed=0)[0]
    batch = gpu_check.collate(gpu_check.batching_collator(load.sizes.image_token_id), [sample])
    text, vision = model.config.text_config, model.config.vision_config
    embeddings = text.vocab_size * text.hidden_size
    n_llm = sum(p.numel() for p in model.model.language_model.parameters()) - embeddings
    n_projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    # layer -2 of 2: the embeddings, the pre-norm and the first encoder layer run
    tower = model.model.vision_tower
    used = (tower.embeddings, tower.pre_layrnorm, tower.encoder.layers[0])
    n_tower = sum(p.numel() for module in used for p in module.parameters())
    tokens, image_tokens = len(sample["input_ids"]), load.sizes.image_seq_length
    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    expected = 6 * (n_llm + embeddings) * tokens + 6 * n_projector * image_tokens + 2 * n_tower * patches
    assert gpu_check.training_flops(model, batch, load.sizes.image_token_id) == expected


def test_peak_table_knows_the_cards_of_the_issue(gpu_check):
    assert gpu_check.PEAK_TFLOPS["H100"] == 989.0
    assert gpu_check.PEAK_TFLOPS["H200"] == 989.0
    assert gpu_check.PEAK_TFLOPS["A100"] == 312.0
    assert gpu_check.peak_tflops(__import__("torch").device("cpu")) is None
