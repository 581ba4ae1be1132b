# Copyright 2026 The LLaVA-transformers authors. Licensed under the Apache License, Version 2.0.
# Remote code: this file is copied next to the weights on the Hub. It imports only transformers.
"""Configuration of the LLaVA model (Liu et al., "Visual Instruction Tuning", 2023)."""

from __future__ import annotations

import re

from transformers import AutoConfig, PreTrainedConfig

try:  # transformers newer than 5.19 declares sub-configs with their defaults
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # the floor (5.16.1, what vLLM pins): `__post_init__` builds them as 5.16's own LLaVA does
    SubConfigSpec = None

#: Projector types: the paper's single linear layer W, LLaVA-1.5's MLPs, or no projection at all.
_MLP_PATTERN = re.compile(r"^mlp(\d+)x_gelu$")
VISION_FEATURE_SELECT_STRATEGIES = ("default", "full")
#: Names older config files (and the original LLaVA's `mm_vision_select_feature`) use for the same strategies.
LEGACY_SELECT_STRATEGIES = {"patch": "default", "cls_patch": "full"}
#: Fields this config once named differently from transformers' built-in `LlavaConfig`: old name -> current name.
LEGACY_FIELD_NAMES = {"projector_bias": "multimodal_projector_bias"}
#: AutoModel names the backbone, as for transformers' own models: vLLM's transformers backend builds it with
#: `AutoModel.from_config` and loads the checkpoint's `model.*` into it. `LlavaModel.from_pretrained` (what
#: `AutoModel.from_pretrained` calls) still returns the generating `LlavaForCausalLM`, as users of this repo expect.
AUTO_MAP = {
    "AutoConfig": "configuration_llava.LlavaConfig",
    "AutoModel": "modeling_llava.LlavaModel",
    "AutoModelForCausalLM": "modeling_llava.LlavaForCausalLM",
    "AutoModelForImageTextToText": "modeling_llava.LlavaForCausalLM",
}

#: `pipeline("image-to-text", model=FOLDER, trust_remote_code=True)` builds the captioning pipeline of
#: `pipeline_llava.py` (transformers consults `custom_pipelines` before redirecting the task to
#: image-text-to-text, which refuses an image without a prompt).
#: The same class serves `image-text-to-text` (transformers' pipeline, without its "not supported" list).
CUSTOM_PIPELINES = {
    task: {"impl": "pipeline_llava.LlavaImageToTextPipeline", "pt": ["AutoModelForImageTextToText"], "tf": [],
           "type": "multimodal"}
    for task in ("image-to-text", "image-text-to-text")
}


def _ship_the_pipeline_file() -> None:
    # Never called. `save_pretrained` copies the files this module imports relatively, and the Hub loader fetches
    # them: this import is what puts pipeline_llava.py beside every model folder's weights.
    from .pipeline_llava import LlavaImageToTextPipeline  # noqa: F401


def projector_depth(projector_type: str) -> int:
    """Number of linear layers of a projector type (0 for `identity`).

    Raises:
        ValueError: for an unknown projector type, naming the accepted ones.
    """
    if projector_type == "identity":
        return 0
    if projector_type == "linear":
        return 1
    match = _MLP_PATTERN.match(projector_type)
    if match and int(match.group(1)) >= 1:
        return int(match.group(1))
    raise ValueError(
        f"Unknown projector_type {projector_type!r}: expected 'linear', 'identity' or 'mlp<N>x_gelu' "
        "(e.g. 'mlp2x_gelu')."
    )


#: Sub-config defaults (model type, init kwargs): CLIP ViT-L/14 at 224 px, the paper's encoder, and Llama.
_SUB_CONFIG_DEFAULTS = {
    "vision_config": (
        "clip_vision_model",
        {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
            "projection_dim": 768,
        },
    ),
    "text_config": ("llama", {}),
}


def _build_sub_configs(config: PreTrainedConfig) -> None:
    """Turn dict/None sub-configs into config objects (what `SubConfigSpec` does on transformers newer than 5.19)."""
    from transformers import CONFIG_MAPPING

    for key, (default_type, init_kwargs) in _SUB_CONFIG_DEFAULTS.items():
        value = getattr(config, key)
        if value is None:
            value = {"model_type": default_type, **init_kwargs}
        if isinstance(value, dict):
            value = dict(value)
            setattr(config, key, CONFIG_MAPPING[value.pop("model_type", default_type)](**value))


class LlavaConfig(PreTrainedConfig):
    r"""
    Configuration of [`LlavaForCausalLM`]: a vision encoder, a projector and a causal language model.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision encoder (CLIP or SigLIP vision model). Defaults to CLIP ViT-L/14 at 224 px,
            the paper's encoder.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the causal language model (any `AutoModel`-loadable decoder; Llama by default).
        image_token_id (`int`, *optional*, defaults to 32000):
            Token id of the image placeholder; the processor expands each `<image>` to `image_seq_length` of them.
        vision_feature_layer (`int` or `list[int]`, *optional*, defaults to -2):
            Hidden state(s) of the vision encoder used as image features, indexed like `hidden_states`
            (0 = embeddings, -1 = last layer). The paper's best: -2, the layer before the last. A list
            concatenates several layers along the channel dimension.
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            `"default"` drops the CLS token (when the encoder has one), `"full"` keeps every token. The names are
            transformers' (the built-in `LlavaConfig`'s); older files' `"patch"` / `"cls_patch"` are read as
            `"default"` / `"full"`. Unlike the built-in, `"default"` drops nothing from an encoder without a CLS
            token (SigLIP), where the built-in would drop a real patch.
        projector_type (`str`, *optional*, defaults to `"linear"`):
            `"linear"` (the paper's H_v = W · Z_v), `"mlp<N>x_gelu"` (LLaVA-1.5 uses `"mlp2x_gelu"`) or
            `"identity"` (vision width must equal text width).
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's linear layers have a bias (older files' `projector_bias` is read as this).
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Tie `lm_head` to the input embeddings; inherited from `text_config` when it ties them.
    """

    model_type = "llava_remote"
    # transformers' built-in LlavaConfig stores `image_token_index`; both names read the same field.
    attribute_map = {"image_token_index": "image_token_id"}
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            key: SubConfigSpec(config_class=AutoConfig, model_type=model_type_, init_kwargs=init_kwargs)
            for key, (model_type_, init_kwargs) in _SUB_CONFIG_DEFAULTS.items()
        }
    else:
        sub_configs = {key: AutoConfig for key in _SUB_CONFIG_DEFAULTS}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"
    projector_type: str = "linear"
    multimodal_projector_bias: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # Derived, never stored: accept it from older config files only when it agrees.
        stored_seq_length = kwargs.pop("image_seq_length", None)
        if SubConfigSpec is None:
            _build_sub_configs(self)
        # Old names of renamed fields: config.json files written before the rename must still load.
        for old_name, name in LEGACY_FIELD_NAMES.items():
            if old_name in kwargs:
                setattr(self, name, kwargs.pop(old_name))
        self.vision_feature_select_strategy = LEGACY_SELECT_STRATEGIES.get(
            self.vision_feature_select_strategy, self.vision_feature_select_strategy
        )
        super().__post_init__(**kwargs)
        if isinstance(self.vision_feature_layer, tuple):
            self.vision_feature_layer = list(self.vision_feature_layer)
        if self.vision_feature_select_strategy not in VISION_FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy must be one of {VISION_FEATURE_SELECT_STRATEGIES}, "
                f"got {self.vision_feature_select_strategy!r}."
            )
        projector_depth(self.projector_type)  # validates
        if self.projector_type == "identity" and self.vision_feature_dim != self.text_config.hidden_size:
            raise ValueError(
                f"projector_type='identity' needs vision feature width ({self.vision_feature_dim}) equal to the "
                f"text hidden size ({self.text_config.hidden_size})."
            )
        if getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        # One map for every entry point users reach for (register_for_auto_class keeps only one per class).
        self.auto_map = {**AUTO_MAP, **(self.auto_map or {})} if hasattr(self, "auto_map") else dict(AUTO_MAP)
        self.custom_pipelines = {**CUSTOM_PIPELINES, **(getattr(self, "custom_pipelines", None) or {})}
        if stored_seq_length is not None and int(stored_seq_length) != self.image_seq_length:
            raise ValueError(
                f"config has image_seq_length={stored_seq_length} but its vision config yields "
                f"{self.image_seq_length} image tokens."
            )

    @property
    def vision_feature_layers(self) -> list[int]:
        """`vision_feature_layer` as a list."""
        layer = self.vision_feature_layer
        return [layer] if isinstance(layer, int) else list(layer)

    @property
    def vision_feature_dim(self) -> int:
        """Channel width of the selected image features (before the projector)."""
        return self.vision_config.hidden_size * len(self.vision_feature_layers)

    @property
    def vision_has_cls_token(self) -> bool:
        """CLIP-style encoders prepend a CLS token; SigLIP does not."""
        return "siglip" not in self.vision_config.model_type

    @property
    def image_seq_length(self) -> int:
        """Number of image tokens one image becomes: grid patches, plus CLS under `full`."""
        grid = self.vision_config.image_size // self.vision_config.patch_size
        keeps_cls = self.vision_feature_select_strategy == "full" and self.vision_has_cls_token
        return grid * grid + int(keeps_cls)


LlavaConfig.register_for_auto_class()  # save_pretrained copies this file next to config.json

__all__ = ["LlavaConfig", "projector_depth", "AUTO_MAP", "LEGACY_SELECT_STRATEGIES"]
