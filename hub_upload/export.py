"""Export a training output to a Hub-ready folder.

Three kinds of training output are accepted (`detect_source_kind`):

* **model** — a folder saved by `save_pretrained` (stage 1's complete model, stage 2, a TRL
  `checkpoint-N`): config.json + weights, usually with the processor beside them;
* **projector** — stage 1's projector-only safetensors file, applied to `--base-model` (the LLaVA
  folder stage 1 started from, e.g. `llava build` output);
* **adapter** — a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors):
  exported *as an adapter* whose `base_model_name_or_path` and card name the base model's Hub id
  (the processor and chat template are the base model's), or merged into the base model with `merge=True` and exported as a full model.

A full-model export holds sharded safetensors + index, config.json with the complete `auto_map`,
the remote-code `.py` files flat beside the weights (written by `save_pretrained` from the
installed classes, so they are the current, self-consistent set), the processor files with
`chat_template.jinja`, generation_config.json and the README.md card. Everything is written into
a staging folder that only becomes `OUT` after the static checks pass (`atomic_output_dir`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from modeling_llava.dtypes import torch_dtype
from processing.files import atomic_output_dir
from hub_upload.card import CardInfo, load_eval_results, write_model_card
from hub_upload.checks import ADAPTER_CONFIG_FILE, check_export_folder

PROJECTOR_PREFIX = "model.multi_modal_projector."
PROCESSOR_AUTO_CLASS = "processing_llava.LlavaRemoteProcessor"


class ExportError(ValueError):
    """The source cannot be exported as asked; the message names the file or option at fault."""


@dataclass
class ExportOptions:
    """How to export. Only `base_model` is needed, and only for projector and adapter sources."""

    base_model: str | None = None
    base_model_repo_id: str | None = None
    merge: bool = False
    processor: str | None = None
    chat_template: str | None = None
    max_shard_size: str = "5GB"
    dtype: str = "auto"
    overwrite: bool = False
    model_name: str | None = None
    repo_id: str | None = None
    base_model_ids: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    license: str | None = None
    language: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)


def detect_source_kind(src: str | os.PathLike) -> str:
    """`"model"`, `"projector"` or `"adapter"` (see the module docstring).

    Raises:
        ExportError: `src` is none of these, with what was found and, for a TRL output folder, the
            checkpoints to choose from.
    """
    src = Path(src)
    if src.is_file():
        if src.suffix == ".safetensors":
            return "projector"
        raise ExportError(f"{src}: a file source must be a stage-1 projector .safetensors file.")
    if not src.is_dir():
        raise ExportError(f"{src}: no such file or folder.")
    if (src / ADAPTER_CONFIG_FILE).is_file():
        return "adapter"
    if (src / "config.json").is_file():
        return "model"
    checkpoints = sorted(src.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    hint = f"; pick a checkpoint, e.g. {checkpoints[-1]}" if checkpoints else ""
    raise ExportError(f"{src}: neither a model folder (config.json) nor an adapter folder ({ADAPTER_CONFIG_FILE}){hint}.")


def _load_model(folder: str | os.PathLike, dtype: str):
    from modeling_llava import LlavaConfig, LlavaForCausalLM

    config = LlavaConfig.from_pretrained(folder)
    quantization = getattr(config.text_config, "quantization_config", None)
    if isinstance(quantization, dict) and quantization.get("quant_method") == "gguf":
        # A model built from a .gguf LLM carries the GGUF loader's note in its text config, although its
        # saved weights are plain dequantized tensors; left in, transformers treats the model as
        # quantized and refuses to save it (and Hub users would be told it is GGUF).
        del config.text_config.quantization_config
    model, info = LlavaForCausalLM.from_pretrained(folder, config=config, dtype=torch_dtype(dtype),
                                                   output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if k != "lm_head.weight" or not model.config.tie_word_embeddings]
    if missing or info.get("mismatched_keys"):
        raise ExportError(f"{folder}: weights do not match its config.json (missing: {sorted(missing)[:8]}, "
                          f"mismatched: {sorted(info.get('mismatched_keys') or [])[:8]}).")
    return model.eval()


def _load_processor(candidates: list[str | os.PathLike], chat_template: str | None):
    """The processor from the first candidate folder that has one, with the chat template checked."""
    from processing import LlavaProcessor

    for folder in candidates:
        if folder is not None and (Path(folder) / "processor_config.json").is_file():
            # The folder is the user's own training output; its auto_map makes transformers ask before
            # resolving the sub-processors, and only installed classes are used here anyway.
            processor = LlavaProcessor.from_pretrained(folder, trust_remote_code=True)
            break
    else:
        searched = ", ".join(str(c) for c in candidates if c is not None)
        raise ExportError(f"no processor (processor_config.json) in {searched}; pass --processor DIR.")
    if chat_template is not None:
        processor.chat_template = _resolve_chat_template(chat_template, processor.tokenizer)
    if not processor.chat_template:
        raise ExportError(f"the processor from {folder} has no chat template (chat_template.jinja); pass "
                          "--chat-template NAME_OR_FILE with the template the model was trained with.")
    return processor


def _resolve_chat_template(value: str, tokenizer) -> str:
    """A `.jinja` file's text, or a template name / Jinja string as `processing.templates` resolves it."""
    from processing.templates import resolve_chat_template

    path = Path(value)
    if path.suffix == ".jinja" or path.is_file():
        if not path.is_file():
            raise ExportError(f"--chat-template {value}: file not found.")
        return path.read_text(encoding="utf-8")
    try:
        return resolve_chat_template(value, tokenizer)
    except ValueError as error:
        raise ExportError(f"--chat-template: {error}") from error


def load_projector_weights(path: str | os.PathLike) -> dict:
    """A stage-1 projector file's tensors, keyed as in `LlavaForCausalLM` (`model.multi_modal_projector.*`).

    Accepts our keys, llava-hf's (`multi_modal_projector.*`) and the original LLaVA's (`model.mm_projector.*`).

    Raises:
        ExportError: the file holds tensors that are not projector weights (naming some).
    """
    from safetensors.torch import load_file

    from modeling_llava.convert import projector_key_from_original

    renamed, foreign = {}, []
    for key, tensor in load_file(str(path)).items():
        if key.startswith(PROJECTOR_PREFIX):
            renamed[key] = tensor
        elif key.startswith("multi_modal_projector."):
            renamed["model." + key] = tensor
        elif (ours := projector_key_from_original(key)) is not None:
            renamed[ours] = tensor
        else:
            foreign.append(key)
    if foreign or not renamed:
        raise ExportError(f"{path}: not a projector-only file (unexpected keys: {sorted(foreign)[:5]}).")
    return renamed


def _apply_projector(model, weights: dict, source: Path) -> None:
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(PROJECTOR_PREFIX)}
    if set(weights) != set(expected):
        raise ExportError(f"{source}: projector keys {sorted(weights)} do not match the base model's "
                          f"{sorted(expected)} (different projector_type?).")
    for key, tensor in weights.items():
        if tensor.shape != expected[key].shape:
            raise ExportError(f"{source}: {key} has shape {tuple(tensor.shape)}, the base model expects "
                              f"{tuple(expected[key].shape)}.")
    model.load_state_dict(weights, strict=False)


def _hub_ids(values: list) -> list[str]:
    """Entries that are Hub repo ids (local paths are meaningless in Hub metadata)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    ids = []
    for value in values:
        if not value or Path(str(value)).exists() or str(value).endswith(".gguf") or "/" not in str(value):
            continue
        try:
            validate_repo_id(str(value))
        except HFValidationError:
            continue
        ids.append(str(value))
    return list(dict.fromkeys(ids))


def _training_summary(src: Path) -> str:
    """A line about the run from TRL's `trainer_state.json`, when the source has one."""
    state_path = src / "trainer_state.json" if src.is_dir() else None
    if state_path is None or not state_path.is_file():
        return ""
    state = json.loads(state_path.read_text())
    losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
    parts = [f"{state.get('global_step', '?')} optimizer steps", f"{state.get('epoch', 0):.2f} epochs"]
    if losses:
        parts.append(f"final training loss {losses[-1]:.4f}")
    return "Trained with TRL's SFTTrainer: " + ", ".join(parts) + "."


def _card_info(options: ExportOptions, out: Path, base_ids: list[str], is_adapter: bool, src: Path) -> CardInfo:
    eval_results = [result for path in options.metrics for result in load_eval_results(path)]
    return CardInfo(
        model_name=options.model_name or (options.repo_id.split("/")[-1] if options.repo_id else out.name),
        repo_id=options.repo_id,
        base_models=_hub_ids(options.base_model_ids or base_ids),
        datasets=options.datasets,
        license=options.license,
        language=options.language,
        tags=options.tags,
        is_adapter=is_adapter,
        training_details=_training_summary(src),
        eval_results=eval_results,
    )


def _finish_generation_config(model, tokenizer) -> None:
    """Make `generate` stop and pad correctly without the caller passing token ids."""
    generation_config = model.generation_config
    if generation_config.eos_token_id is None and tokenizer.eos_token_id is not None:
        generation_config.eos_token_id = tokenizer.eos_token_id
    if generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def _save_full_model(model, processor, staging: Path, options: ExportOptions) -> None:
    _finish_generation_config(model, processor.tokenizer)
    # The config alone then names every entry point (AutoProcessor included).
    model.config.auto_map = {**model.config.auto_map, "AutoProcessor": PROCESSOR_AUTO_CLASS}
    model.save_pretrained(staging, max_shard_size=options.max_shard_size)
    processor.save_pretrained(staging)


def _export_adapter(src: Path, staging: Path, options: ExportOptions) -> list[str]:
    """Copy the adapter with its base model's Hub id; returns the base model ids for the card."""
    adapter_config = json.loads((src / ADAPTER_CONFIG_FILE).read_text())
    base = options.base_model_repo_id or adapter_config.get("base_model_name_or_path")
    if not base or not _hub_ids([base]):
        raise ExportError(
            f"{src / ADAPTER_CONFIG_FILE}: base_model_name_or_path is {base!r}, not a Hub repo id; pass "
            "--base-model-repo-id ORG/NAME (where the base model is, or will be, on the Hub).")
    weights = src / "adapter_model.safetensors"
    if not weights.is_file():
        raise ExportError(f"{weights}: adapter weights are missing.")
    adapter_config["base_model_name_or_path"] = base
    (staging / ADAPTER_CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    shutil.copy2(weights, staging / weights.name)
    # No processor files: users load the base model's processor (see `hub_upload.checks`).
    return [base]


def export_model(src: str | os.PathLike, out: str | os.PathLike, options: ExportOptions | None = None) -> Path:
    """Export the training output `src` to the Hub-ready folder `out` (atomically). Returns `out`.

    Raises:
        ExportError: the source or options are unusable (nothing is written);
        FileExistsError: `out` exists and `options.overwrite` is False.
    """
    options = options or ExportOptions()
    src, out = Path(src), Path(out).absolute()
    kind = detect_source_kind(src)
    if kind in ("projector", "adapter") and options.base_model is None and (kind == "projector" or options.merge):
        raise ExportError(f"{src} is a {kind}; pass --base-model DIR (the LLaVA folder it was trained on).")
    with atomic_output_dir(out, overwrite=options.overwrite) as staging:
        if kind == "adapter" and not options.merge:
            base_ids = _export_adapter(src, staging, options)
            is_adapter = True
        else:
            if kind == "model":
                model = _load_model(src, options.dtype)
            elif kind == "projector":
                model = _load_model(options.base_model, options.dtype)
                _apply_projector(model, load_projector_weights(src), src)
            else:  # adapter, merged
                from peft import PeftModel

                model = PeftModel.from_pretrained(_load_model(options.base_model, options.dtype), src).merge_and_unload()
            processor = _load_processor([options.processor, src if src.is_dir() else None, options.base_model],
                                        options.chat_template)
            _save_full_model(model, processor, staging, options)
            config = model.config
            base_ids = [getattr(config, "vision_checkpoint", None), getattr(config, "language_checkpoint", None)]
            if kind == "adapter":
                base_ids = [options.base_model_repo_id] + base_ids
            is_adapter = False
        write_model_card(staging, _card_info(options, out, base_ids, is_adapter, src))
        problems = check_export_folder(staging)
        if problems:
            raise ExportError("the export is incomplete, so it was not written:\n" + "\n".join(f"  {p}" for p in problems))
    return out
