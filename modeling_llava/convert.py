"""Conversion between this project's LLaVA and the two other layouts users hold checkpoints in.

* **llava-hf** (transformers' built-in `LlavaForConditionalGeneration`): the v5 key layout is ours, so
  conversion is a config translation plus, for legacy 4.x checkpoints, a prefix rename. Our `linear`
  projector exports exactly: the built-in 2-layer MLP gets `linear_1 = W`, `linear_2 = I` and the
  `linear` (identity) activation.
* **original** (liuhaotian `LlavaLlamaForCausalLM`): `model.mm_projector.*`, `model.vision_tower.*`,
  `mm_*` config fields, the image token inserted at run time (id -200) rather than stored in the
  vocabulary. Converting adds an `<image>` token to the tokenizer and resizes the embeddings.

These are tooling, not remote code: loading a converted model never imports this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .configuration_llava import VISION_FEATURE_SELECT_STRATEGIES, LlavaConfig, projector_depth

# ------------------------------------------------------------------------------------------------
# llava-hf
# ------------------------------------------------------------------------------------------------
_LEGACY_LLAVA_HF_RENAMES = (
    # On-disk llava-hf layouts -> the in-memory v5 layout (ours). transformers 4.x wrote
    # `vision_tower.vision_model.*`; v5's save_pretrained still writes the 4.x prefixes but drops
    # `vision_model.` (`vision_tower.embeddings.*`). Both occur on the Hub.
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^language_model\.model\."), "model.language_model."),
    (re.compile(r"^vision_tower\.vision_model\."), "model.vision_tower."),
    (re.compile(r"^vision_tower\."), "model.vision_tower."),
    (re.compile(r"^multi_modal_projector\."), "model.multi_modal_projector."),
)


def rename_llava_hf_key(key: str) -> str:
    """Map a llava-hf key (v5 or legacy 4.x layout) to ours; v5 keys are already ours."""
    for pattern, replacement in _LEGACY_LLAVA_HF_RENAMES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return key


_VISION_TOWER_WITHOUT_VISION_MODEL = re.compile(r"^vision_tower\.(?!vision_model\.)")


def llava_hf_portable_key(key: str) -> str:
    """A saved llava-hf key in the layout transformers 4.x, transformers 5 and vLLM all load.

    transformers 5 writes the 4.x prefixes (`language_model.model.*`, `language_model.lm_head.*`) except for the
    vision tower, which it writes without `vision_model.`; the 4.x name `vision_tower.vision_model.*` is restored.
    """
    return _VISION_TOWER_WITHOUT_VISION_MODEL.sub("vision_tower.vision_model.", key, count=1)


def _is_identity(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    square = weight.dim() == 2 and weight.shape[0] == weight.shape[1]
    return (
        square
        and torch.equal(weight, torch.eye(weight.shape[0], dtype=weight.dtype))
        and (bias is None or not torch.any(bias))
    )


def config_from_llava_hf(hf_config, state_dict: Mapping[str, torch.Tensor] | None = None) -> LlavaConfig:
    """Translate a built-in `transformers.LlavaConfig` (object or dict) into ours.

    A checkpoint exported from a `linear` projector (activation `linear`, `linear_2` = identity) comes back
    as `linear`; a GELU MLP becomes `mlp2x_gelu`. Other activations have no equivalent here.
    """
    hf = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    act = hf.get("projector_hidden_act", "gelu")
    if act == "gelu":
        projector_type = "mlp2x_gelu"
    elif act == "linear":
        projector_type = "linear"
        if state_dict is not None:
            weight = state_dict.get("model.multi_modal_projector.linear_2.weight")
            bias = state_dict.get("model.multi_modal_projector.linear_2.bias")
            if weight is None or not _is_identity(weight, bias):
                raise ValueError(
                    "llava-hf checkpoint uses projector_hidden_act='linear' but linear_2 is not the identity; "
                    "it is a product of two matrices this project would have to fold (not supported)."
                )
    else:
        raise ValueError(f"llava-hf projector_hidden_act={act!r} has no equivalent here (supported: gelu, linear).")
    select_strategy = hf.get("vision_feature_select_strategy", "default")
    if select_strategy not in VISION_FEATURE_SELECT_STRATEGIES:
        raise ValueError(f"Unknown llava-hf vision_feature_select_strategy {select_strategy!r}.")
    vision_type = (hf["vision_config"] if isinstance(hf["vision_config"], dict) else hf["vision_config"].to_dict())["model_type"]
    if "siglip" in vision_type:
        select_strategy = "default"  # no CLS token: llava-hf's "full" keeps every (patch) token, as our "default"
    return LlavaConfig(
        vision_config=hf["vision_config"],
        text_config=hf["text_config"],
        image_token_id=hf.get("image_token_id", hf.get("image_token_index", 32000)),
        vision_feature_layer=hf.get("vision_feature_layer", -2),
        vision_feature_select_strategy=select_strategy,
        projector_type=projector_type,
        multimodal_projector_bias=hf.get("multimodal_projector_bias", True),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def state_dict_from_llava_hf(
    state_dict: Mapping[str, torch.Tensor], config: LlavaConfig
) -> dict[str, torch.Tensor]:
    """Rename llava-hf keys to ours; drop the identity `linear_2` of an exported `linear` projector."""
    renamed = {rename_llava_hf_key(key): value for key, value in state_dict.items()}
    if config.projector_type == "linear":
        renamed.pop("model.multi_modal_projector.linear_2.weight", None)
        renamed.pop("model.multi_modal_projector.linear_2.bias", None)
    return renamed


def config_to_llava_hf(config: LlavaConfig):
    """Our config as a built-in `transformers.LlavaConfig`.

    Raises:
        ValueError: for projectors the built-in 2-layer MLP cannot represent exactly (mlpNx with N > 2).
    """
    from transformers import LlavaConfig as HFLlavaConfig

    depth = projector_depth(config.projector_type)
    if depth > 2:
        raise ValueError(
            f"projector_type={config.projector_type!r} has {depth} layers; llava-hf's projector has exactly 2."
        )
    return HFLlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.image_seq_length,
        vision_feature_layer=config.vision_feature_layer,
        # llava-hf's "default" drops the first token; without a CLS token (SigLIP) nothing may be dropped.
        vision_feature_select_strategy=(
            config.vision_feature_select_strategy if config.vision_has_cls_token else "full"
        ),
        projector_hidden_act="gelu" if depth == 2 else "linear",
        multimodal_projector_bias=config.multimodal_projector_bias,
        tie_word_embeddings=config.tie_word_embeddings,
    )


def state_dict_to_llava_hf(state_dict: Mapping[str, torch.Tensor], config: LlavaConfig) -> dict[str, torch.Tensor]:
    """Our weights in the llava-hf v5 layout; `linear`/`identity` projectors are padded with exact identities."""
    converted = dict(state_dict)
    prefix = "model.multi_modal_projector."
    depth = projector_depth(config.projector_type)
    width = config.text_config.hidden_size
    reference = converted["lm_head.weight"] if "lm_head.weight" in converted else next(iter(converted.values()))
    eye = torch.eye(width, dtype=reference.dtype)
    zeros = torch.zeros(width, dtype=reference.dtype)
    if depth == 0:
        if config.vision_feature_dim != width:
            raise ValueError("identity projector needs vision feature width == text hidden size.")
        converted[prefix + "linear_1.weight"] = eye.clone()
    if depth <= 1:
        converted[prefix + "linear_2.weight"] = eye.clone()
        if config.multimodal_projector_bias:
            converted.setdefault(prefix + "linear_1.bias", zeros.clone())
            converted[prefix + "linear_2.bias"] = zeros.clone()
    return converted


# ------------------------------------------------------------------------------------------------
# Original LLaVA (liuhaotian)
# ------------------------------------------------------------------------------------------------
_ORIGINAL_VISION_PREFIXES = ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower.vision_model.")
_ORIGINAL_PROJECTOR = re.compile(r"^model\.mm_projector\.(?:(\d+)\.)?(weight|bias)$")


def projector_key_from_original(key: str) -> str | None:
    """`model.mm_projector.weight` (linear) / `model.mm_projector.{0,2,4}.*` (MLP) -> ours, else None."""
    match = _ORIGINAL_PROJECTOR.match(key)
    if match is None:
        return None
    index, kind = match.groups()
    layer = 1 if index is None else int(index) // 2 + 1
    return f"model.multi_modal_projector.linear_{layer}.{kind}"


def projector_key_to_original(key: str, projector_type: str) -> str:
    """Inverse of [`projector_key_from_original`]."""
    layer, kind = re.match(r"^model\.multi_modal_projector\.linear_(\d+)\.(weight|bias)$", key).groups()
    if projector_type == "linear":
        return f"model.mm_projector.{kind}"
    return f"model.mm_projector.{(int(layer) - 1) * 2}.{kind}"


def rename_original_key(key: str) -> str | None:
    """Map one original-LLaVA key to ours (None for keys that have no counterpart)."""
    projector_key = projector_key_from_original(key)
    if projector_key is not None:
        return projector_key
    for prefix in _ORIGINAL_VISION_PREFIXES:
        if key.startswith(prefix):
            return "model.vision_tower." + key[len(prefix) :]
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    if key.startswith("lm_head."):
        return key
    return None


_ORIGINAL_ONLY_FIELDS = (
    "mm_vision_tower",
    "mm_hidden_size",
    "mm_projector_type",
    "mm_vision_select_layer",
    "mm_vision_select_feature",
    "mm_use_im_start_end",
    "mm_use_im_patch_token",
    "mm_patch_merge_type",
    "mm_projector_lr",
    "mm_vision_tower_lr",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "freeze_mm_mlp_adapter",
    "tune_mm_mlp_adapter",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "use_mm_proj",
    "unfreeze_mm_vision_tower",
    "architectures",
    "auto_map",
)


def text_config_from_original(original: Mapping) -> dict:
    """The LLM part of an original `config.json` (a Llama config with `mm_*` fields added)."""
    text = {key: value for key, value in original.items() if key not in _ORIGINAL_ONLY_FIELDS}
    text["model_type"] = "llama" if text.get("model_type") in (None, "llava", "llava_llama") else text["model_type"]
    return text


def original_projector_type(original: Mapping) -> str:
    projector_type = original.get("mm_projector_type", "linear")
    projector_depth(projector_type)  # validates
    return projector_type


def original_uses_image_markers(original: Mapping) -> bool:
    return bool(original.get("mm_use_im_start_end", False))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load every `*.safetensors` (preferred) or `*.bin` shard of a folder, or one weights file.

    `.bin` files are pickles: they are opened with `weights_only=True`, which refuses arbitrary code.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        files = [file for file in files if not file.name.startswith("training_args")]
    if not files:
        raise FileNotFoundError(f"No *.safetensors or *.bin weights in {path}.")
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            state_dict.update(load_file(str(file)))
        else:
            state_dict.update(torch.load(file, map_location="cpu", weights_only=True))
    return state_dict


def read_json(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def state_dict_from_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-LLaVA state dict to ours.

    Raises:
        ValueError: naming the keys that have no counterpart (nothing is dropped silently).
    """
    converted, unknown = {}, []
    for key, value in state_dict.items():
        new_key = rename_original_key(key)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = value
    if unknown:
        raise ValueError(f"Original LLaVA checkpoint has keys with no counterpart here: {sorted(unknown)[:10]}")
    return converted


def state_dict_to_original(state_dict: Mapping[str, torch.Tensor], config: LlavaConfig) -> dict[str, torch.Tensor]:
    """Our weights in the original LLaVA layout (`model.mm_projector.*`, `model.vision_tower.vision_tower.*`)."""
    if config.projector_type == "identity":
        raise ValueError("The original LLaVA code has no identity projector.")
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("model.multi_modal_projector."):
            converted[projector_key_to_original(key, config.projector_type)] = value
        elif key.startswith("model.vision_tower."):
            converted["model.vision_tower.vision_tower.vision_model." + key[len("model.vision_tower.") :]] = value
        elif key.startswith("model.language_model."):
            converted["model." + key[len("model.language_model.") :]] = value
        else:
            converted[key] = value
    return converted


def infer_original_projector_type(state_dict: Mapping[str, torch.Tensor]) -> str:
    """`linear` for `model.mm_projector.weight`, `mlp<N>x_gelu` for N indexed linear layers."""
    keys = [key for key in state_dict if projector_key_from_original(key) is not None]
    if not keys:
        raise ValueError("No model.mm_projector.* weights found.")
    weights = [key for key in keys if key.endswith("weight")]
    if weights == ["model.mm_projector.weight"]:
        return "linear"
    return f"mlp{len(weights)}x_gelu"
