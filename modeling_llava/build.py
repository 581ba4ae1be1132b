"""Assemble a fresh LLaVA from a vision checkpoint and a causal-LM checkpoint (paper §4.1).

    model, processor = build_llava("openai/clip-vit-large-patch14", "lmsys/vicuna-7b-v1.5")

The pretrained parts are moved into the new model (no second copy in memory); only the projector is
new. The tokenizer gains an `<image>` token and the embeddings grow by one row (initialised at the mean
of the existing rows, transformers' default), so every later stage sees the same vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .configuration_llava import LlavaConfig
from .modeling_llava import LlavaForCausalLM

IMAGE_TOKEN = "<image>"
_VISION_TOWER_CLASSES = {
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
}


def split_gguf_path(checkpoint: str | Path) -> tuple[str, str | None]:
    """`dir/model.gguf` -> (`dir`, `model.gguf`); any other checkpoint -> (checkpoint, None)."""
    text = str(checkpoint)
    if text.endswith(".gguf"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(path.parent), path.name
    return text, None


def load_vision_tower(checkpoint: str | Path, dtype: torch.dtype | None = None) -> tuple[nn.Module, object]:
    """Load the vision encoder of a CLIP/SigLIP checkpoint (full or vision-only) and its image processor."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor

    config = AutoConfig.from_pretrained(checkpoint)
    vision_config = getattr(config, "vision_config", config)
    class_name = _VISION_TOWER_CLASSES.get(vision_config.model_type)
    if class_name is None:
        raise ValueError(
            f"{checkpoint}: vision model type {vision_config.model_type!r} is not supported "
            f"(supported: {sorted(set(_VISION_TOWER_CLASSES))})."
        )
    tower = getattr(transformers, class_name).from_pretrained(checkpoint, dtype=dtype)
    image_processor = AutoImageProcessor.from_pretrained(checkpoint)
    return tower, image_processor


def load_language_model(checkpoint: str | Path, dtype: torch.dtype | None = None) -> tuple[nn.Module, object]:
    """Load a causal LM (Hub id, folder, or `.gguf` file — dequantised by transformers) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf_file = split_gguf_path(checkpoint)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    language_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    if gguf_file:
        forget_gguf_quantization(language_model.config)
    return language_model, tokenizer


def forget_gguf_quantization(config) -> None:
    """Drop the `quantization_config` a GGUF load leaves behind.

    transformers dequantises GGUF weights to full precision on load, yet keeps `quant_method: gguf` in
    the config; saved with it, every later load is flagged "quantized" and the Trainer refuses to
    fine-tune it. The weights really are plain tensors, so the entry is removed.
    """
    quantization = getattr(config, "quantization_config", None)
    if isinstance(quantization, dict):
        method = quantization.get("quant_method")
    else:
        method = getattr(quantization, "quant_method", None)
    if method == "gguf":
        del config.quantization_config


def add_image_token(tokenizer, image_token: str = IMAGE_TOKEN) -> int:
    """Add `image_token` as a special token (idempotent) and return its id."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(image_token)


def assemble_llava(
    vision_tower: nn.Module,
    language_model: nn.Module,
    image_token_id: int,
    projector_type: str = "linear",
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str = "default",
    multimodal_projector_bias: bool = True,
    projector_init: str = "normal",
) -> LlavaForCausalLM:
    """Wrap already-loaded parts into a [`LlavaForCausalLM`] with a freshly initialised projector.

    `language_model` is a `*ForCausalLM` (its backbone becomes `model.language_model`, its head `lm_head`).
    Its vocabulary must already contain `image_token_id`. `projector_init`: `normal` (weights N(0, the LLM's
    initializer_range), zero bias: the paper's fresh projector) or `embedding_mean` (same weights, but the
    last layer's bias is the mean of the LLM's input embeddings, so image tokens start inside the word-embedding
    distribution; see `_init_projector`).
    """
    if projector_init not in PROJECTOR_INITS:
        raise ValueError(f"projector_init must be one of {PROJECTOR_INITS}, got {projector_init!r}")
    if projector_init == "embedding_mean" and (not multimodal_projector_bias or projector_type == "identity"):
        raise ValueError(
            "projector_init='embedding_mean' sets the projector's last bias; it needs a linear/mlp projector with "
            f"multimodal_projector_bias=True (got projector_type={projector_type!r}, "
            f"multimodal_projector_bias={multimodal_projector_bias})"
        )
    text_config = language_model.config
    if image_token_id >= language_model.get_input_embeddings().weight.shape[0]:
        raise ValueError(
            f"image_token_id {image_token_id} is outside the language model's embedding table "
            f"({language_model.get_input_embeddings().weight.shape[0]} rows): resize the embeddings first."
        )
    config = LlavaConfig(
        vision_config=vision_tower.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=image_token_id,
        projector_type=projector_type,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        multimodal_projector_bias=multimodal_projector_bias,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    dtype = language_model.get_input_embeddings().weight.dtype
    # Build the shell on the meta device: the big parts are moved in, not allocated twice.
    with torch.device("meta"):
        model = LlavaForCausalLM(config)
    backbone = language_model.get_decoder() if hasattr(language_model, "get_decoder") else language_model.model
    model.model.vision_tower = vision_tower
    model.model.language_model = backbone
    model.lm_head = language_model.get_output_embeddings()
    model.model.multi_modal_projector = type(model.model.multi_modal_projector)(config).to(dtype=dtype)
    _init_projector(model.model.multi_modal_projector, config)
    if projector_init == "embedding_mean":
        _center_projector_on_embeddings(model.model.multi_modal_projector, language_model.get_input_embeddings().weight)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.get_input_embeddings().weight
    model.to(dtype)
    model.generation_config = language_model.generation_config
    return model


PROJECTOR_INITS = ("normal", "embedding_mean")


def _center_projector_on_embeddings(projector: nn.Module, embeddings: torch.Tensor) -> None:
    # With N(0, 0.02) weights a fresh projector emits vectors ~10x shorter than word embeddings; RMSNorm in the
    # first decoder layer then blows their noise up to full scale. Starting from the mean word embedding (as
    # transformers' mean_resizing does for new tokens) measured a 1.6x lower stage-1 loss after 150 steps on the
    # demo (benchmarks.md, "demo learning experiments").
    last = [module for module in projector.modules() if isinstance(module, nn.Linear)][-1]
    with torch.no_grad():
        last.bias.copy_(embeddings.float().mean(0).to(last.bias.dtype))


def _init_projector(projector: nn.Module, config: LlavaConfig) -> None:
    std = getattr(config.text_config, "initializer_range", 0.02)
    for module in projector.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_llava(
    vision: str | Path,
    language: str | Path,
    projector_type: str = "linear",
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str = "default",
    chat_template: str | None = None,
    image_aspect_mode: str = "resize",
    dtype: torch.dtype | None = None,
    projector_init: str = "normal",
):
    """Assemble a new LLaVA from a vision checkpoint and a causal-LM checkpoint.

    Args:
        vision: CLIP/SigLIP checkpoint (Hub id or folder), e.g. `openai/clip-vit-large-patch14`.
        language: causal-LM checkpoint (Hub id, folder or `.gguf` file), e.g. `lmsys/vicuna-7b-v1.5`.
        projector_type: `linear` (paper), `mlp2x_gelu` (LLaVA-1.5), `mlp<N>x_gelu` or `identity`.
        vision_feature_layer: encoder hidden state(s) used as features (-2: before the last layer).
        vision_feature_select_strategy: `default` (drop CLS) or `full` (keep it).
        chat_template: a template name from `processing.templates` or a Jinja string; default: the
            language model's own template made image-aware when it has one, else the paper's.
        image_aspect_mode: `resize` (the image processor's own resize/crop) or `pad` (LLaVA-1.5).
        dtype: load dtype (default: the checkpoints' own).
        projector_init: `normal` (paper) or `embedding_mean` (last bias = mean word embedding; see `assemble_llava`).

    Returns:
        `(model, processor)`: a [`LlavaForCausalLM`] and a `LlavaProcessor`, ready for `save_pretrained`.
    """
    vision_tower, image_processor = load_vision_tower(vision, dtype=dtype)
    language_model, tokenizer = load_language_model(language, dtype=dtype)
    image_token_id = add_image_token(tokenizer)
    if image_token_id >= language_model.get_input_embeddings().weight.shape[0]:
        language_model.resize_token_embeddings(len(tokenizer))
    model = assemble_llava(
        vision_tower,
        language_model,
        image_token_id=image_token_id,
        projector_type=projector_type,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        projector_init=projector_init,
    )
    model.config.name_or_path = ""
    model.config.vision_checkpoint = str(vision)
    model.config.language_checkpoint = str(language)
    processor = make_processor(model.config, image_processor, tokenizer, chat_template, image_aspect_mode)
    return model, processor


def make_processor(config: LlavaConfig, image_processor, tokenizer, chat_template=None, image_aspect_mode="resize"):
    """A `LlavaProcessor` whose image-token expansion matches `config`."""
    from processing import LlavaProcessor
    from processing.templates import resolve_chat_template

    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=resolve_chat_template(chat_template, tokenizer),
        image_token=tokenizer.convert_ids_to_tokens(config.image_token_id),
        image_seq_length=config.image_seq_length,
        image_aspect_mode=image_aspect_mode,
    )
