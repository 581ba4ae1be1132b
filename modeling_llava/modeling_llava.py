# Copyright 2026 The LLaVA-transformers authors. Licensed under the Apache License, Version 2.0.
# Remote code: this file is copied next to the weights on the Hub. It imports only torch, transformers
# and its sibling `configuration_llava.py`.
"""PyTorch LLaVA: a vision encoder, a projector H_v = W · Z_v and a causal language model."""

# No `from __future__ import annotations`: transformers reads the `Unpack[TransformersKwargs]` annotation of
# `forward` at run time (e.g. to know that the model can return attentions).
import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from transformers import AutoModel, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging, torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .configuration_llava import LlavaConfig, projector_depth


try:  # transformers newer than 5.19: multimodal outputs (`image_outputs`), the KV cache named `cache`
    from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast
except ImportError:  # the floor, 5.16.1 (what vLLM pins): the same `image_outputs` field on the plain outputs

    @dataclass
    class MultimodalBaseModelOutputWithPast(BaseModelOutputWithPast):
        image_outputs: BaseModelOutputWithPooling | None = None

    @dataclass
    class MultimodalCausalLMOutputWithPast(CausalLMOutputWithPast):
        image_outputs: BaseModelOutputWithPooling | None = None


#: The KV cache's keyword and output field in this transformers: `cache`, or `past_key_values` up to 5.19.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _accepts_past_key_values(forward):
    """`past_key_values=` as the old name of `cache=`: deprecated where transformers says `cache`; where it still
    says `past_key_values` (up to 5.19, whose `generate` passes it) accepted without a deprecation warning."""
    if CACHE_NAME == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)
    import functools

    @functools.wraps(forward)
    def renamed(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            kwargs["cache"] = past_key_values
        return forward(*args, **kwargs)

    return renamed


logger = logging.get_logger(__name__)


class _DeprecatedImageHiddenStates:
    """`image_hidden_states`, the transformers 4 name of `image_outputs.pooler_output` (as the built-in keeps it)."""

    @property
    def image_hidden_states(self) -> torch.Tensor | None:
        logger.warning_once("`image_hidden_states` is deprecated; use `outputs.image_outputs.pooler_output`.")
        return None if self.image_outputs is None else self.image_outputs.pooler_output


@dataclass
class LlavaModelOutputWithPast(_DeprecatedImageHiddenStates, MultimodalBaseModelOutputWithPast):
    r"""
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        What [`LlavaModel.get_image_features`] returned for this forward's images; its `pooler_output`
        `(num_images, image_seq_length, hidden_size)` holds the projected features that replaced the image tokens.
    """


@dataclass
class LlavaCausalLMOutputWithPast(_DeprecatedImageHiddenStates, MultimodalCausalLMOutputWithPast):
    r"""
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        What [`LlavaModel.get_image_features`] returned for this forward's images; its `pooler_output`
        `(num_images, image_seq_length, hidden_size)` holds the projected features that replaced the image tokens.
    """


class LlavaMultiModalProjector(nn.Module):
    """Maps vision features into the language model's embedding space.

    `linear` is the paper's W; `mlp<N>x_gelu` stacks N linear layers with GELU between them (LLaVA-1.5:
    N=2); `identity` passes features through. Layers are named `linear_1 … linear_N` so that checkpoints of
    transformers' built-in Llava (`linear_1`, `linear_2`) map by name.
    """

    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.depth = projector_depth(config.projector_type)
        in_features, out_features = config.vision_feature_dim, config.text_config.hidden_size
        for index in range(1, self.depth + 1):
            layer = nn.Linear(in_features if index == 1 else out_features, out_features, bias=config.multimodal_projector_bias)
            self.add_module(f"linear_{index}", layer)
        self.act = ACT2FN["gelu"]

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states = image_features
        for index in range(1, self.depth + 1):
            if index > 1:
                hidden_states = self.act(hidden_states)
            hidden_states = getattr(self, f"linear_{index}")(hidden_states)
        return hidden_states


class LlavaPreTrainedModel(PreTrainedModel):
    config_class = LlavaConfig
    config: LlavaConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # no data-dependent control flow at inference (static cache, compiled generate)
    _skip_keys_device_placement = [CACHE_NAME]
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer", "SiglipEncoderLayer"]

    @torch.no_grad()
    def initialize_weights(self):
        # transformers hands the top model's "custom code" flag down to every sub-model, and for custom code it
        # skips each module whose own parameters are all initialised -- which includes every module with no
        # parameters of its own, such as CLIPAttention, whose `_init_weights` is what sets q/k/v/out_proj. On the
        # meta device (a checkpoint missing the tower, `from_pretrained(..., state_dict={})`) the tower's linears
        # would then get the generic init instead of CLIP's. So let each built-in sub-model (vision tower, language
        # model) initialise itself first, as it does when loaded alone; that skips loaded weights and marks its
        # modules done, and the pass below initialises what is ours (the projector, the head).
        for module in self.modules():
            if module is not self and isinstance(module, PreTrainedModel) and not module.is_custom_code():
                module.initialize_weights()
        super().initialize_weights()


def _every_rank_must_run_every_module() -> bool:
    """True in a distributed job (DDP, FSDP, DeepSpeed): all ranks must run the same modules each step."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return distributed or is_deepspeed_zero3_enabled()


def _is_packed(position_ids: torch.Tensor | None) -> bool:
    """Whether `position_ids` restart inside a row: several samples packed in it (`training.packing`)."""
    if position_ids is None or position_ids.shape[-1] < 2:
        return False
    return bool((position_ids[..., 1:] - position_ids[..., :-1] != 1).any())


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class LlavaModel(LlavaPreTrainedModel):
    """The LLaVA backbone without a language-modelling head.

    It encodes images, projects them and scatters them into the token embeddings at the image-token
    positions, then runs the language model. TRL's SFT loss path calls this module directly (plus the
    output embeddings), so the image merge must live here, not in the head model.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A checkpoint of the generating model loads as [`LlavaForCausalLM`]: `AutoModel.from_pretrained(repo,
        trust_remote_code=True).generate(...)` works, as it does for other remote-code VLMs. A saved backbone
        (`architectures: ["LlavaModel"]`) loads as this class.

        `AutoModel` must name this backbone for `AutoModel.from_config` (vLLM's transformers backend builds the
        backbone that way and loads `model.*` into it); the backbone of a full checkpoint is
        `LlavaForCausalLM.from_pretrained(repo).model`.
        """
        config = kwargs.get("config")
        if not isinstance(config, PreTrainedConfig):
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            config = cls.config_class.from_pretrained(config or pretrained_model_name_or_path, **hub_kwargs)
        if cls is LlavaModel and "LlavaForCausalLM" in (getattr(config, "architectures", None) or []):
            return LlavaForCausalLM.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # ----------------------------------------------------------------------------------------------
    # Vision
    # ----------------------------------------------------------------------------------------------
    def _num_vision_layers(self) -> int:
        return self.config.vision_config.num_hidden_layers

    def vision_layers_used(self) -> int:
        """How many encoder layers the selected features need (the rest are never run)."""
        total = self._num_vision_layers()
        return max(layer if layer >= 0 else total + 1 + layer for layer in self.config.vision_feature_layers)

    def _layer_by_layer_parts(self) -> tuple[nn.Module, nn.Module | None, nn.ModuleList] | None:
        """`(embeddings, pre-encoder norm or None, encoder layers)` of a CLIP/SigLIP-style tower, which this model
        runs layer by layer; `None` for another kind of encoder, which runs whole."""
        tower = self.vision_tower
        encoder_layers = getattr(getattr(tower, "encoder", None), "layers", None)
        if not (hasattr(tower, "embeddings") and isinstance(encoder_layers, nn.ModuleList)):
            return None
        # CLIP normalises before the encoder; SigLIP does not
        return tower.embeddings, getattr(tower, "pre_layrnorm", None), encoder_layers

    def vision_parameters_without_gradient(self) -> list[str]:
        """Names (as in `vision_tower.named_parameters()`) of the vision parameters the outputs never depend on.

        The image features come from the embeddings (and CLIP's pre-encoder norm) through the encoder layers up to
        the deepest selected one (`vision_layers_used`); the later layers, the final norm and any pooling head never
        reach them, so they never receive a gradient even in a trained tower. Empty for encoders other than
        CLIP/SigLIP, whose structure this model does not know.
        """
        parts = self._layer_by_layer_parts()
        if parts is None:
            return []
        embeddings, pre_norm, encoder_layers = parts
        used = [embeddings, *([pre_norm] if pre_norm is not None else []), *encoder_layers[: self.vision_layers_used()]]
        used_parameters = {id(parameter) for module in used for parameter in module.parameters()}
        return [name for name, parameter in self.vision_tower.named_parameters() if id(parameter) not in used_parameters]

    def expected_pixel_shape(self) -> tuple[int, int, int]:
        """`(channels, height, width)` of one image as the vision encoder takes it."""
        vision = self.config.vision_config
        return (vision.num_channels, vision.image_size, vision.image_size)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        expected = self.expected_pixel_shape()
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values have shape {tuple(pixel_values.shape)}; this model's vision encoder expects "
                f"(num_images, {expected[0]}, {expected[1]}, {expected[2]}). Preprocess images with the "
                "model's own processor."
            )

    def _run_vision_tower(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        """The selected features (before the projector) and the tower's outputs.

        Runs the encoder only up to the deepest selected layer: with the paper's default (-2) the last layer is
        never computed. CLIP and SigLIP are run layer by layer; when the caller asks for the tower's hidden states
        or attentions (or the encoder is of another kind) the tower runs whole, with `output_hidden_states`.
        Either way `last_hidden_state` is the encoder state at the deepest selected layer (every token, CLS
        included), so it does not depend on what else was asked for.
        """
        self._check_pixel_values(pixel_values)
        # Nothing can receive a gradient through a frozen tower, so record no graph for it; the projector after it
        # still trains. Without this, activation checkpointing's `enable_input_require_grads` (which hooks every
        # sub-model's input embeddings, the tower's patch embedding included) makes the frozen tower's activations
        # require grad: each layer is then recomputed and back-propagated in the backward pass for nothing.
        with contextlib.nullcontext() if self._vision_tower_needs_graph(pixel_values) else torch.no_grad():
            return self._run_vision_tower_layers(pixel_values, output_hidden_states, output_attentions)

    def _vision_tower_needs_graph(self, pixel_values: torch.Tensor) -> bool:
        """Whether the tower's forward must be recorded for autograd: some of its parameters train (a trained
        tower, LoRA adapters in it) or the caller wants gradients with respect to the pixels."""
        if not torch.is_grad_enabled():
            return False
        tower_trains = any(parameter.requires_grad for parameter in self.vision_tower.parameters())
        return tower_trains or pixel_values.requires_grad

    def _run_vision_tower_layers(
        self, pixel_values: torch.Tensor, output_hidden_states: bool, output_attentions: bool
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        tower = self.vision_tower
        pixel_values = pixel_values.to(dtype=tower.dtype)
        wanted = self.config.vision_feature_layers
        deepest = self.vision_layers_used()
        parts = self._layer_by_layer_parts()
        hidden_states = attentions = None
        if parts is not None and not (output_hidden_states or output_attentions):
            embeddings, pre_norm, encoder_layers = parts
            states = embeddings(pixel_values)
            if pre_norm is not None:
                states = pre_norm(states)
            collected = [states]
            for layer in encoder_layers[:deepest]:
                states = layer(states, None)
                if isinstance(states, tuple):
                    states = states[0]
                collected.append(states)
        else:
            outputs = tower(
                pixel_values, output_hidden_states=True, output_attentions=output_attentions, return_dict=True
            )
            collected = list(outputs.hidden_states)
            hidden_states = outputs.hidden_states if output_hidden_states else None
            attentions = outputs.attentions if output_attentions else None
        total = self._num_vision_layers() + 1
        selected = [collected[layer if layer >= 0 else total + layer] for layer in wanted]
        if self.config.vision_feature_select_strategy == "default" and self.config.vision_has_cls_token:
            selected = [states[:, 1:] for states in selected]
        tower_outputs = BaseModelOutputWithPooling(
            last_hidden_state=collected[deepest], hidden_states=hidden_states, attentions=attentions
        )
        return torch.cat(selected, dim=-1), tower_outputs

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Selected vision hidden states, before the projector: `(num_images, image_seq_length, vision_feature_dim)`.

        The plain-tensor input of the projector. `forward(vision_features=...)` takes it back in place of
        `pixel_values`, which is how a frozen tower's features can be computed once and reused (the stage-1 feature
        cache); [`vision_feature_dependencies`] says when two models give the same features.
        """
        return self._run_vision_tower(pixel_values.to(self.vision_tower.device))[0]

    def vision_feature_dependencies(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """What [`get_vision_features`] depends on besides the pixels: `(settings, weights)`.

        `settings` holds the vision config, the selected feature layer(s), the select strategy and the tower's dtype
        (JSON-serialisable); `weights` is the tower's state dict. Models with equal settings and weights give equal
        features for equal pixels, so a cache of features can key on the two.
        """
        settings = {
            "vision_config": self.config.vision_config.to_dict(),
            "vision_feature_layer": self.config.vision_feature_layer,
            "vision_feature_select_strategy": self.config.vision_feature_select_strategy,
            "dtype": str(self.vision_tower.dtype),
        }
        return settings, self.vision_tower.state_dict()

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | BaseModelOutputWithPooling:
        r"""
        Encodes and projects images, transformers' multimodal contract.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`):
                Images as this model's processor prepares them.

        Returns:
            [`BaseModelOutputWithPooling`]: `pooler_output` holds the projected image features
            `(num_images, image_seq_length, text_hidden_size)` (one entry per image, what replaces its image
            tokens); `last_hidden_state` the encoder state at the deepest selected layer; `hidden_states` /
            `attentions` the whole tower's, when asked for (in `kwargs` or the vision config).
        """
        vision_config = self.config.vision_config
        output_hidden_states = kwargs.get("output_hidden_states")
        output_attentions = kwargs.get("output_attentions")
        output_hidden_states = vision_config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = vision_config.output_attentions if output_attentions is None else output_attentions
        features, outputs = self._run_vision_tower(pixel_values, bool(output_hidden_states), bool(output_attentions))
        outputs.pooler_output = self.multi_modal_projector(features)
        return outputs

    def merge_image_features(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Write `image_features` into `inputs_embeds` at the image-token positions, in reading order."""
        image_mask = self._image_token_mask(input_ids, inputs_embeds)
        num_features = image_features.shape[0] * image_features.shape[1]
        # A check torch.compile can trace (no data-dependent branch); the message is built only when it fails.
        torch_compilable_check(
            image_mask.sum() == num_features,
            lambda: (
                f"Image features and image tokens do not match: the text has {int(image_mask.sum())} image tokens but "
                f"the {image_features.shape[0]} image(s) give {num_features} features "
                f"({image_features.shape[1]} per image). Expand each <image> with the model's processor."
            ),
        )
        image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_features.reshape(-1, inputs_embeds.shape[-1]))

    def _image_token_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embedding).all(-1)

    @can_return_tuple
    @_accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        vision_features: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | LlavaModelOutputWithPast:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`, *optional*):
            Images, in the order their `<image>` placeholders appear in the batch.
        vision_features (`torch.FloatTensor` of shape `(num_images, image_seq_length, vision_feature_dim)`, *optional*):
            Precomputed output of [`get_vision_features`] (e.g. from a stage-1 feature cache) used instead of
            `pixel_values`; the projector still runs, so it still trains.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if pixel_values is not None and vision_features is not None:
            raise ValueError("Pass pixel_values or vision_features, not both.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        image_outputs = self._encode_images(pixel_values, vision_features, **kwargs)
        if image_outputs is not None:
            # Images given: every image token gets exactly one feature, or a clear error.
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_outputs.pooler_output)
        elif self.training:
            inputs_embeds = self._text_only_training_embeddings(input_ids, inputs_embeds)

        rows = None
        if attention_mask is None and cache is None and _is_packed(position_ids):
            # A packed batch (training.packing): transformers confines attention to each sample only when no cache is
            # built, and a cache of several samples would mean nothing anyway.
            use_cache = False
            inputs_embeds, position_ids, rows = self._packed_rows_for_attention(inputs_embeds, position_ids)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **{CACHE_NAME: cache},
            **kwargs,
        )
        if rows is not None:  # back to the packed batch's rows
            outputs.last_hidden_state = outputs.last_hidden_state.reshape(*rows, -1)
            if outputs.hidden_states is not None:
                outputs.hidden_states = tuple(states.reshape(*rows, -1) for states in outputs.hidden_states)
        return LlavaModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs,
        )

    def _packed_rows_for_attention(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor):
        """`(inputs_embeds, position_ids, rows)` of a packed batch as the attention kernel needs them; `rows` is the
        original `(rows, length)` when they were laid end to end, else `None`.

        Flash attention finds the samples (cu_seqlens) from the position ids of a one-row batch only: lay the rows end
        to end; each row's padding is a block of its own, so nothing else changes. Other kernels take the rows as
        they are (transformers builds their block-diagonal mask from the position ids).
        """
        if "flash" not in str(self.language_model.config._attn_implementation) or inputs_embeds.shape[0] == 1:
            return inputs_embeds, position_ids, None
        rows = inputs_embeds.shape[:2]
        return inputs_embeds.reshape(1, -1, inputs_embeds.shape[-1]), position_ids.reshape(1, -1), rows

    def _encode_images(
        self, pixel_values: torch.Tensor | None, vision_features: torch.Tensor | None, **kwargs
    ) -> BaseModelOutputWithPooling | None:
        """The projected image features of a forward's images (`pooler_output`), or `None` without images."""
        if pixel_values is not None:
            return self.get_image_features(
                pixel_values,
                output_hidden_states=kwargs.get("output_hidden_states"),
                output_attentions=kwargs.get("output_attentions"),
                return_dict=True,
            )
        if vision_features is not None:
            projected = self.multi_modal_projector(vision_features.to(self.multi_modal_projector_dtype))
            return BaseModelOutputWithPooling(pooler_output=projected)
        return None

    def _text_only_training_embeddings(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """`inputs_embeds` of a training batch without images, after two checks only training needs."""
        image_mask = self._image_token_mask(input_ids, inputs_embeds)
        if image_mask.any():
            # At inference the image tokens are ordinary tokens, as transformers' contract has it (assisted
            # decoding and text-only passes over a prompt that holds them rely on it). In a training batch, image
            # tokens without their images mean the images were lost on the way (a dropped column, a collator bug),
            # and training on placeholder embeddings would fail silently.
            raise ValueError(
                f"This training batch has {int(image_mask.sum())} image tokens but no pixel_values or vision_features "
                "(0 image features): pass the images that belong to its <image> placeholders."
            )
        if not _every_rank_must_run_every_module():
            return inputs_embeds
        # A text-only batch on one rank while the others have images: under ZeRO-3/FSDP the tower's and the
        # projector's parameters are gathered collectively (the job hangs), under DDP the projector's gradient is
        # missing on this rank (the reduction fails). Run them on one blank image and add the result times zero:
        # the same modules on every rank, the same loss, zero gradients from this batch.
        blank = torch.zeros((1, *self.expected_pixel_shape()), dtype=inputs_embeds.dtype, device=inputs_embeds.device)
        return inputs_embeds + 0.0 * self.multi_modal_projector(self.get_vision_features(blank)).sum()

    @property
    def multi_modal_projector_dtype(self) -> torch.dtype:
        parameter = next(self.multi_modal_projector.parameters(), None)
        return parameter.dtype if parameter is not None else self.language_model.dtype


def mask_image_token_labels(labels: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """`labels` with every image-token target set to -100: an image placeholder is never a prediction target,
    whatever the collator wrote (transformers' built-in LLaVA trains on them when the labels say so)."""
    return labels.masked_fill(labels == image_token_id, -100)


def _masking_image_token_labels(forward, image_token_id: int):
    import functools

    @functools.wraps(forward)
    def masked_forward(*args, labels=None, **kwargs):
        if labels is not None:
            kwargs["labels"] = mask_image_token_labels(labels, image_token_id)
        return forward(*args, **kwargs)

    return masked_forward


class LlavaForCausalLM(LlavaPreTrainedModel, GenerationMixin):
    """LLaVA with a language-modelling head: the model users load, train and generate with."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __setattr__(self, name: str, value) -> None:
        # TRL's SFTTrainer replaces `forward` with a fused LM head that computes the loss from `labels` itself,
        # without calling the forward below; the replacement is wrapped so that it, too, never supervises image
        # tokens (TRL's default vision collator labels all of them).
        if name == "forward" and callable(value):
            value = _masking_image_token_labels(value, self.config.image_token_id)
        super().__setattr__(name, value)

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        self.model = LlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_image_features(
        self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple | BaseModelOutputWithPooling:
        """See [`LlavaModel.get_image_features`]: `pooler_output` holds the projected image features."""
        return self.model.get_image_features(pixel_values, **kwargs)

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """See [`LlavaModel.get_vision_features`]: the projector's input, which `forward(vision_features=...)`
        takes back in place of `pixel_values`."""
        return self.model.get_vision_features(pixel_values)

    def vision_feature_dependencies(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """See [`LlavaModel.vision_feature_dependencies`]: when two models give the same vision features."""
        return self.model.vision_feature_dependencies()

    @can_return_tuple
    @_accepts_past_key_values
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        vision_features: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | LlavaCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets aligned with `input_ids` (shifted inside the loss); -100 is ignored. The
            processor/collator sets -100 on everything but the assistant's answers.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Compute logits only for the last N positions (int) or the given positions (1-D tensor).
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            vision_features=vision_features,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:, :] if logits_to_keep else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep, :]
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            labels = mask_image_token_labels(labels, self.config.image_token_id)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return LlavaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        # `generate` drops pixel_values after the prefill (their tokens are then in the cache) but does not know
        # our `vision_features`; drop them the same way, or every decode step would try to merge them again.
        # (GenerationMixin's signature, spelled out: `generate` and its tests read it, e.g. for `inputs_embeds`.)
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            model_inputs.pop("vision_features", None)
        return model_inputs


# save_pretrained copies this file (and configuration_llava.py) next to the weights.
LlavaForCausalLM.register_for_auto_class("AutoModelForImageTextToText")

#: LoRA targets of the language model only, as LLaVA's LoRA trains it: CLIP's and SigLIP's attention layers share
#: Llama's names (`q_proj`, ...), so a plain name list would put adapters in the vision tower too.
LORA_TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

try:  # offered where PEFT looks up a model type's default targets (`LoraConfig()`, `trl sft --use_peft`)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
except ImportError:  # PEFT is optional for loading and running this model
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING = {}
TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.setdefault(LlavaConfig.model_type, LORA_TARGET_MODULES)

__all__ = ["LlavaForCausalLM", "LlavaModel", "LlavaPreTrainedModel", "LlavaMultiModalProjector", "LORA_TARGET_MODULES"]
