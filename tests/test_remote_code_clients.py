"""The shipped remote code as other clients load it: `AutoModel` both ways, and the oldest transformers we support.

The floor test runs our three remote-code files under transformers 5.16.1 (the lowest version vLLM 0.32 accepts)
in a separate virtualenv: `python -m venv --system-site-packages` plus `pip install --no-deps transformers==5.16.1`
(and the huggingface-hub range it needs), created once in a stable folder (`$LLAVA_FLOOR_VENV`, default
`~/.cache/llava-transformers/venv-transformers-5.16.1`) and reused. It needs PyPI on first use (CI has it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT
from training_fixtures import save_tiny_model

FLOOR_VERSION = "5.16.1"
FLOOR_REQUIREMENTS = [f"transformers=={FLOOR_VERSION}", "huggingface-hub>=1.5.0,<2.0"]
REMOTE_CODE_FILES = ("modeling_llava/configuration_llava.py", "modeling_llava/modeling_llava.py",
                     "processing/processing_llava.py")
MAX_NEW_TOKENS = 6

# Runs inside the floor environment, from a folder outside the repository: only what the model folder ships.
CHILD = r"""
import json, sys
import torch, transformers
from PIL import Image
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
folder, max_new_tokens = sys.argv[1], int(sys.argv[2])
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
inputs = processor(images=Image.new("RGB", (40, 32), (200, 30, 30)), text="<image>\nWhat?", return_tensors="pt")
with torch.no_grad():
    generated = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    logits = model(**inputs).logits
    image_features = model.get_image_features(inputs["pixel_values"]).pooler_output
print(json.dumps({
    "version": transformers.__version__,
    "tokens": generated[0, inputs["input_ids"].shape[1]:].tolist(),
    "last_logits": logits[0, -1].tolist(),
    "image_features_shape": list(image_features.shape),
    "automodel": type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__,
}))
"""


def floor_venv() -> Path:
    """The floor environment, created on first use (an interrupted creation is redone, never half-used)."""
    from demo.default_llm import default_cache_dir

    venv = Path(os.environ.get("LLAVA_FLOOR_VENV") or default_cache_dir() / f"venv-transformers-{FLOOR_VERSION}")
    python = venv / "bin" / "python"
    ready = venv / "READY"
    if ready.is_file():
        return python
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", *FLOOR_REQUIREMENTS],
                   check=True, timeout=600)
    ready.write_text(" ".join(FLOOR_REQUIREMENTS) + "\n")
    return python


def test_automodel_loads_a_generating_model_and_builds_the_backbone_from_a_config(tmp_path):
    from transformers import AutoConfig, AutoModel

    folder = save_tiny_model(tmp_path / "model")
    loaded = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(loaded).__name__ == "LlavaForCausalLM" and callable(loaded.generate)
    # vLLM's transformers backend: `AutoModel.from_config` must build the backbone, whose weights are `model.*`.
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(folder, trust_remote_code=True), trust_remote_code=True)
    assert type(backbone).__name__ == "LlavaModel"
    assert set(backbone.state_dict()) == {key[len("model."):] for key in loaded.state_dict() if key.startswith("model.")}


def test_remote_code_runs_on_the_floor_transformers(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = save_tiny_model(tmp_path / "model")
    for file in REMOTE_CODE_FILES:  # the files that ship, as they are in this checkout
        assert (folder / Path(file).name).read_bytes() == (REPO_ROOT / file).read_bytes()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    inputs = processor(images=Image.new("RGB", (40, 32), (200, 30, 30)), text="<image>\nWhat?", return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS)
        expected_logits = model(**inputs).logits[0, -1]

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([str(floor_venv()), "-c", CHILD, str(folder), str(MAX_NEW_TOKENS)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is deprecated" not in result.stderr  # the floor's `generate` passes `past_key_values` itself
    floor = json.loads(result.stdout.strip().splitlines()[-1])
    assert floor["version"] == FLOOR_VERSION
    assert floor["tokens"] == expected[0, inputs["input_ids"].shape[1]:].tolist()
    torch.testing.assert_close(torch.tensor(floor["last_logits"]), expected_logits, rtol=1e-4, atol=1e-5)
    assert floor["image_features_shape"] == [1, model.config.image_seq_length, model.config.text_config.hidden_size]
    assert floor["automodel"] == "LlavaForCausalLM"
