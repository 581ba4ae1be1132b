"""Folder-to-folder conversions (the API behind `llava convert`).

Each function reads a checkpoint folder, writes a complete model folder (weights, config, remote code,
processor) to `out`, and returns the converted model. Outputs are written to a staging folder beside `out`
and renamed into place (`processing.files`), so an interrupted conversion never leaves a folder that
looks complete; an existing `out` is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from processing.files import atomic_output_dir

from .build import add_image_token, make_processor
from .configuration_llava import LlavaConfig
from .convert import (
    config_from_llava_hf,
    config_to_llava_hf,
    infer_original_projector_type,
    llava_hf_portable_key,
    load_weights,
    original_projector_type,
    original_uses_image_markers,
    read_json,
    rename_llava_hf_key,
    state_dict_from_llava_hf,
    state_dict_from_original,
    state_dict_to_llava_hf,
    text_config_from_original,
)
from .modeling_llava import LlavaForCausalLM


logger = logging.getLogger(__name__)


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
    """Strictly load `state_dict`, allowing only a tied `lm_head.weight` to be absent."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not fit the converted architecture. Missing: {missing[:10]}; "
            f"unexpected: {unexpected[:10]}."
        )
    model.tie_weights()


def from_llava_hf(src: str | Path, out: str | Path) -> LlavaForCausalLM:
    """Convert a transformers-native llava-hf checkpoint (v5 or legacy 4.x key layout) to this project's."""
    from transformers import AutoImageProcessor, AutoTokenizer

    src = Path(src)
    renamed = {rename_llava_hf_key(key): value for key, value in load_weights(src).items()}
    config = config_from_llava_hf(read_json(src / "config.json"), renamed)
    model = LlavaForCausalLM(config)
    load_into(model, state_dict_from_llava_hf(renamed, config), src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    template = _image_template_of(src, tokenizer)
    processor = make_processor(config, AutoImageProcessor.from_pretrained(src), tokenizer, template)
    _save(model, processor, out)
    return model


def _image_template_of(src: Path, tokenizer) -> str | None:
    """The checkpoint's chat template when it renders image content, else `None` (the converted processor then gets
    the language model's format made image-aware). A llava-hf folder often carries only its language model's
    text-only template, which cannot render an image block."""
    from processing.templates import image_content_problem

    template = _chat_template_of(src)
    if template is not None and (problem := image_content_problem(template, tokenizer)) is not None:
        logger.warning(
            "%s: its chat template cannot render image content (%s); the converted processor gets the language "
            "model's own format made image-aware instead (pass another with `llava export --chat-template`).",
            src, problem,
        )
        return None
    return template


def to_llava_hf(src: str | Path, out: str | Path):
    """Export one of our model folders to the llava-hf format (loads with transformers' built-in classes)."""
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers import LlavaForConditionalGeneration, LlavaProcessor as HFLlavaProcessor

    src = Path(src)
    model = LlavaForCausalLM.from_pretrained(src)
    hf_config = config_to_llava_hf(model.config)
    hf_model = LlavaForConditionalGeneration(hf_config)
    load_into(hf_model, state_dict_to_llava_hf(model.state_dict(), model.config), src)
    hf_model.to(model.dtype)
    # Our config is passed in: left to itself AutoTokenizer reads config.json through AutoConfig, which asks
    # "Do you wish to run the custom code?" and then warns about the unknown `llava_remote` model type.
    tokenizer = AutoTokenizer.from_pretrained(src, config=model.config)
    image_processor = AutoImageProcessor.from_pretrained(src)
    processor = HFLlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy=hf_config.vision_feature_select_strategy,
        num_additional_image_tokens=int(model.config.vision_has_cls_token),
        image_token=tokenizer.convert_ids_to_tokens(model.config.image_token_id),
        chat_template=_chat_template_of(src),
    )
    with atomic_output_dir(out) as staging:
        hf_model.save_pretrained(staging)
        processor.save_pretrained(staging)
        write_llava_hf_key_layout(staging)
        drop_dangling_auto_map(staging)
    return hf_model


def write_llava_hf_key_layout(folder: str | Path) -> None:
    """Rewrite the weights of a llava-hf folder in the layout every reader loads: `vision_tower.vision_model.*`.

    transformers 5 saves the vision tower as `vision_tower.embeddings.*`; transformers 4.x and vLLM's native
    LLaVA read only `vision_tower.vision_model.*`, which transformers 5 loads as well (its legacy renames).
    """
    import json

    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    for shard in sorted(folder.glob("*.safetensors")):
        state_dict = load_file(str(shard))
        save_file({llava_hf_portable_key(key): value for key, value in state_dict.items()}, str(shard),
                  metadata={"format": "pt"})
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text(encoding="utf-8"))
        index["weight_map"] = {llava_hf_portable_key(key): file for key, file in index["weight_map"].items()}
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def drop_dangling_auto_map(folder: str | Path) -> None:
    """Remove `auto_map` entries of a folder's JSON files whose module (e.g. `processing_llava.py`) is not in it.

    The tokenizer and image processor loaded from one of our folders remember our processor's `auto_map`; saved
    into a llava-hf export, which has no remote code, they would point at a file the export lacks.
    """
    import json

    folder = Path(folder)

    def present(reference) -> bool:
        references = reference if isinstance(reference, (list, tuple)) else [reference]
        return all(
            item is None or (folder / (item.split("--")[-1].rsplit(".", 1)[0] + ".py")).is_file() for item in references
        )

    def clean(value):
        if isinstance(value, dict):
            cleaned = {key: clean(item) for key, item in value.items()}
            if isinstance(cleaned.get("auto_map"), dict):
                kept = {name: ref for name, ref in cleaned["auto_map"].items() if present(ref)}
                if kept:
                    cleaned["auto_map"] = kept
                else:
                    del cleaned["auto_map"]
            return cleaned
        return value

    for file in sorted(folder.glob("*.json")):
        content = json.loads(file.read_text(encoding="utf-8"))
        cleaned = clean(content)
        if cleaned != content:
            file.write_text(json.dumps(cleaned, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def from_original(
    src: str | Path, out: str | Path, vision: str | Path | None = None, chat_template: str = "vicuna_v1"
) -> LlavaForCausalLM:
    """Convert an original LLaVA checkpoint (liuhaotian `LlavaLlamaForCausalLM`) to this project's format.

    The vision encoder's config and image processor come from `vision` (default: the checkpoint's
    `mm_vision_tower`); its weights from the checkpoint when it holds them, else from `vision`. The
    original repo keeps the conversation format outside the checkpoint (`--conv-mode`), so it is an
    argument here: `vicuna_v1` is LLaVA-1.5's; the paper's v0 checkpoints used `paper`.
    """
    from transformers import AutoTokenizer

    from .build import load_vision_tower

    src = Path(src)
    original = read_json(src / "config.json")
    if original_uses_image_markers(original):
        raise NotImplementedError(
            f"{src}: mm_use_im_start_end=True checkpoints wrap images in <im_start>/<im_end>; not supported."
        )
    vision = vision or original.get("mm_vision_tower")
    if not vision:
        raise ValueError(f"{src}: config has no mm_vision_tower; pass the vision checkpoint explicitly.")
    vision_tower, image_processor = load_vision_tower(vision)
    state_dict = state_dict_from_original(load_weights(src))
    if not any(key.startswith("model.vision_tower.") for key in state_dict):
        state_dict.update({"model.vision_tower." + key: value for key, value in vision_tower.state_dict().items()})

    tokenizer = AutoTokenizer.from_pretrained(src)
    image_token_id = add_image_token(tokenizer)
    config = LlavaConfig(
        vision_config=vision_tower.config.to_dict(),
        text_config=text_config_from_original(original),
        image_token_id=image_token_id,
        vision_feature_layer=original.get("mm_vision_select_layer", -2),
        # The original's `mm_vision_select_feature` names ("patch", "cls_patch"); LlavaConfig reads them.
        vision_feature_select_strategy=original.get("mm_vision_select_feature", "patch"),
        projector_type=original_projector_type(original),
    )
    model = _model_with_vocab(config, state_dict, len(tokenizer), src)
    aspect = "pad" if original.get("image_aspect_ratio") == "pad" else "resize"
    processor = make_processor(model.config, image_processor, tokenizer, chat_template, aspect)
    _save(model, processor, out)
    return model


def from_projector(
    projector: str | Path,
    language: str | Path,
    vision: str | Path,
    out: str | Path,
    vision_feature_layer: int = -2,
    chat_template: str | None = None,
) -> LlavaForCausalLM:
    """A stage-1 `mm_projector.bin`/`.safetensors` (original key names) plus its base LLM and vision encoder."""
    from .build import build_llava

    weights = load_weights(projector)
    projector_type = infer_original_projector_type(weights)
    model, processor = build_llava(
        vision, language, projector_type=projector_type, vision_feature_layer=vision_feature_layer,
        chat_template=chat_template,
    )
    projector_weights = state_dict_from_original(weights)
    prefix = "model.multi_modal_projector."
    model.model.multi_modal_projector.load_state_dict(
        {key[len(prefix):]: value.to(model.dtype) for key, value in projector_weights.items()}, strict=True
    )
    _save(model, processor, out)
    return model


def _model_with_vocab(config: LlavaConfig, state_dict: dict, vocab_size: int, source: Path) -> LlavaForCausalLM:
    """Load `state_dict` into a model, then grow the vocabulary to `vocab_size` (new image token)."""
    stored_vocab = state_dict["model.language_model.embed_tokens.weight"].shape[0]
    config.text_config.vocab_size = stored_vocab
    model = LlavaForCausalLM(config)
    load_into(model, state_dict, source)
    if vocab_size > stored_vocab:
        model.resize_token_embeddings(vocab_size)
    return model


def _chat_template_of(folder: Path) -> str | None:
    template_file = Path(folder) / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    config_file = Path(folder) / "tokenizer_config.json"
    if config_file.is_file():
        return read_json(config_file).get("chat_template")
    return None


def _save(model: LlavaForCausalLM, processor, out: str | Path) -> None:
    with atomic_output_dir(out) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
