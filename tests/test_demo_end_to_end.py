"""`llava demo` end to end (slow: a small CLIP tower pretrains, then the real SmolLM2-135M trains for 50 + 163 steps:
~6 min on 2 Intel cores with AMX, ~12 on 2 AMD cores with AVX512-BF16, ~17 min on 2 AVX2-only cores, which train in float32).

It runs the default preset, checks every deliverable, and asserts what the demo is for: the model learns to see
— held-out accuracy after stage 2 is clearly above chance on colour, shape and count questions, while before
training it is not on colour and shape. (The issue's 80% target is measured, not asserted here (README,
docs/benchmarks.md): bf16 kernels differ between CPUs, and so do the trained weights.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CHANCE = {"color": 1 / 6, "shape": 1 / 3, "count": 1 / 3}
MARGIN = 0.10  # >= 2 binomial standard deviations at chance for the 40-73 questions per type scored before training


def test_demo_learns_to_see_and_delivers(tmp_path, smollm2_gguf):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "llava_cli", "demo", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last_lines = result.stdout.strip().splitlines()[-6:]
    assert last_lines[0].startswith("| model | color | shape | count | overall |")
    assert [line.split("|")[1].strip() for line in last_lines[2:]] == [
        "chance", "before training", "after stage 1", "after stage 2"
    ]
    # the console: one line per phase, none of the Trainer's per-step dictionaries
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.lstrip().startswith("{")], result.stdout[-3000:]
    # nor a library's progress bar (the GGUF conversion's, on a fresh cache) or torchvision fallback warning on stderr
    assert "it/s]" not in result.stderr and "falling back" not in result.stderr, result.stderr[-3000:]
    for phase in ("vision tower", "stage 1", "stage 2"):
        assert len([line for line in lines if f"] {phase}: " in line and " steps" in line]) == 1, phase
    for evaluation in ("before training", "after stage 1", "after stage 2"):
        assert len([line for line in lines if f"] {evaluation}: " in line]) == 1, evaluation
    metrics = json.loads((out / "metrics.json").read_text())
    # enough held-out questions for a 95% interval of at most ±5 points at 80% accuracy (demo.settings)
    assert min(metrics["questions"]["after stage 2"][kind] for kind in CHANCE) >= 246, metrics["questions"]
    accuracy = metrics["accuracy"]
    for stage in ("before training", "after stage 1", "after stage 2"):
        assert set(accuracy[stage]) >= {"color", "shape", "count", "overall"}
    for kind in ("color", "shape", "count"):
        assert accuracy["after stage 2"][kind] >= CHANCE[kind] + MARGIN, accuracy
    # not counting: answering "one" to every count question scores the share of one-object scenes (~45%). Shape gets
    # three standard deviations at chance (73 questions): the word-aligned projector start already reads some image
    # tokens as their shape's word (42% on the 2-core AMD EPYC of docs/benchmarks.md), and another CPU's kernels
    # may move that by a question or two.
    assert accuracy["before training"]["color"] < CHANCE["color"] + MARGIN, accuracy
    three_sd = 3 * (CHANCE["shape"] * (1 - CHANCE["shape"]) / 73) ** 0.5
    assert accuracy["before training"]["shape"] < CHANCE["shape"] + three_sd, accuracy

    assert metrics["pipeline_check"]["answer"].strip()
    assert (out / "report.md").read_text().count("| ![](report_images/") >= 3
    assert (out / "loss_curves.png").stat().st_size > 10_000
    assert {"modeling_llava.py", "configuration_llava.py", "processing_llava.py", "README.md"} <= {
        path.name for path in (out / "export").iterdir()
    }
    # a re-run reuses every cached step and reprints the same table
    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-6:] == last_lines
