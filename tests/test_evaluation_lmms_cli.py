"""lmms-eval's own command line and evaluator on a local task, with our model found through its entry point.

This is the user guide's command (`--model llava_remote --model_args pretrained=...,batch_size=8`) run as a user
runs it: `python -m lmms_eval`, which parses its options, builds the model through `create_from_arg_string`, loads
the task's dataset, generates, scores and writes its results. The task is written here: three colour questions
about tiny PNGs in a JSON Lines file (no Hub access).

lmms-eval 0.7.3 is installed `--no-deps` (its declared dependencies would replace torch); its evaluator needs
`sacrebleu` and `aiohttp` and breaks on filelock 4 (`No module named 'filelock._api'`): `scripts/setup.sh`
installs those. `LLAVA_LMMS_EVAL_PYTHON` names another interpreter to run lmms-eval with (a separate venv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (scripts/setup.sh)")

from conftest import REPO_ROOT  # noqa: E402
from evaluation_fixtures import save_tiny_image_text_model  # noqa: E402
from training_fixtures import write_images  # noqa: E402

TASK_YAML = """\
dataset_path: json
dataset_kwargs:
  data_files: {data_file}
task: toy_colours
test_split: train
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.0
"""
TASK_UTILS = '''\
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"]), "answer": results[0]}
'''


def write_task(root: Path) -> Path:
    images = write_images(root / "images")
    data_file = root / "toy_colours.jsonl"
    with data_file.open("w", encoding="utf-8") as handle:
        for colour in ("red", "green", "blue"):
            record = {"image": str(root / "images" / images[colour]), "question": "What colour is it?", "answer": colour}
            handle.write(json.dumps(record) + "\n")
    task_dir = root / "tasks" / "toy_colours"
    task_dir.mkdir(parents=True)
    (task_dir / "toy_colours.yaml").write_text(TASK_YAML.format(data_file=data_file), encoding="utf-8")
    (task_dir / "utils.py").write_text(TASK_UTILS, encoding="utf-8")
    return root / "tasks"


def test_the_guides_lmms_eval_command_evaluates_a_local_task(tmp_path):
    python = os.environ.get("LLAVA_LMMS_EVAL_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", "import lmms_eval.evaluator"], capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, (
        "lmms-eval's evaluator does not import (run scripts/setup.sh): " + probe.stderr.strip().splitlines()[-1]
    )
    model = save_tiny_image_text_model(tmp_path / "model")
    tasks = write_task(tmp_path)
    output = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    result = subprocess.run(
        [python, "-m", "lmms_eval", "--model", "llava_remote",
         "--model_args", f"pretrained={model},batch_size=8,dtype=float32",
         "--tasks", "toy_colours", "--include_path", str(tasks), "--device", "cpu",
         "--output_path", str(output), "--log_samples"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "multiple values for keyword argument" not in log
    results_files = sorted(output.rglob("*results*.json"))
    assert results_files, log[-3000:]
    results = json.loads(results_files[-1].read_text())
    scores = results["results"]["toy_colours"]
    assert "exact_match,none" in scores and 0.0 <= scores["exact_match,none"] <= 1.0
    samples = sorted(output.rglob("*toy_colours*.jsonl"))
    assert samples and len(samples[-1].read_text().splitlines()) == 3
