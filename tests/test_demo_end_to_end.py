"""`llava demo` end to end on a shortened run (slow: the real SmolLM2-135M LLM trains for a few steps).

It checks the pipeline and its deliverables, not the accuracy a shortened run reaches: the tables of a
full run are in the README and docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_shortened_demo_runs_every_stage_and_delivers(tmp_path, smollm2_gguf):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "llava_cli", "demo", "--quick", "--train-scenes", "16", "--eval-scenes", "3",
               "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last_lines = result.stdout.strip().splitlines()[-6:]
    assert last_lines[0].startswith("| model | color | shape | count | overall |")
    assert [line.split("|")[1].strip() for line in last_lines[2:]] == [
        "chance", "before training", "after stage 1", "after stage 2"
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("before training", "after stage 1", "after stage 2"):
        assert set(metrics["accuracy"][stage]) >= {"color", "shape", "count", "overall"}
    assert metrics["pipeline_check"]["answer"].strip()
    assert (out / "report.md").read_text().count("| ![](report_images/") >= 3
    assert (out / "loss_curves.png").stat().st_size > 10_000
    assert {"modeling_llava.py", "configuration_llava.py", "processing_llava.py", "README.md"} <= {
        path.name for path in (out / "export").iterdir()
    }
    # a re-run reuses every cached step and reprints the same table
    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-6:] == last_lines
