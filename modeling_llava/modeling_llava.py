# Remote code: this file is copied next to the weights on the Hub. It imports only torch, transformers
# and its sibling `configuration_llava.py`.
"""PyTorch LLaVA: a vision encoder, a projector H_v = W · Z_v and a causal language model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_llava import LlavaConfig, projector_depth


@dataclass
class LlavaModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(num_images, image_seq_length, hidden_size)`, *optional*):
        Projected image features that replaced the image tokens.
    """

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class LlavaCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(num_images, image_seq_length, hidden_size)`, *optional*):
        Projected image features that replaced the image tokens.
    """

    image_hidden_states: torch.FloatTensor | None = None


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
            layer = nn.Linear(in_features if index == 1 else out_features, out_features, bias=config.projector_bias)
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
    _skip_keys_device_placement = ["cache"]
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer", "SiglipEncoderLayer"]


def _every_rank_must_run_every_module() -> bool:
    """True in a distributed job (DDP, FSDP, DeepSpeed): all ranks must run the same modules each step."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return distributed or is_deepspeed_zero3_enabled()


class LlavaModel(LlavaPreTrainedModel):
    """The LLaVA backbone without a language-modelling head.

    It encodes images, projects them and scatters them into the token embeddings at the image-token
    positions, then runs the language model. TRL's SFT loss path calls this module directly (plus the
    output embeddings), so the image merge must live here, not in the head model.
    """

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

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Selected vision hidden states, before the projector: `(num_images, image_seq_length, vision_feature_dim)`.

        Runs the encoder only up to the deepest selected layer: with the paper's default (-2) the last
        layer is never computed. CLIP and SigLIP are run layer by layer; other encoders fall back to
        a full forward with `output_hidden_states`.
        """
        self._check_pixel_values(pixel_values)
        tower = self.vision_tower
        pixel_values = pixel_values.to(dtype=tower.dtype)
        wanted = self.config.vision_feature_layers
        encoder_layers = getattr(getattr(tower, "encoder", None), "layers", None)
        if hasattr(tower, "embeddings") and isinstance(encoder_layers, nn.ModuleList):
            hidden_states = tower.embeddings(pixel_values)
            if hasattr(tower, "pre_layrnorm"):  # CLIP normalises before the encoder; SigLIP does not
                hidden_states = tower.pre_layrnorm(hidden_states)
            collected = [hidden_states]
            for layer in encoder_layers[: self.vision_layers_used()]:
                hidden_states = layer(hidden_states, None)
                if isinstance(hidden_states, tuple):
                    hidden_states = hidden_states[0]
                collected.append(hidden_states)
            total = len(encoder_layers) + 1
            selected = [collected[layer if layer >= 0 else total + layer] for layer in wanted]
        else:
            outputs = tower(pixel_values, output_hidden_states=True, return_dict=True)
            selected = [outputs.hidden_states[layer] for layer in wanted]
        if self.config.vision_feature_select_strategy == "patch" and self.config.vision_has_cls_token:
            selected = [states[:, 1:] for states in selected]
        return torch.cat(selected, dim=-1)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image features `(num_images, image_seq_length, text_hidden_size)`."""
        return self.multi_modal_projector(self.get_vision_features(pixel_values))

    def merge_image_features(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Write `image_features` into `inputs_embeds` at the image-token positions, in reading order."""
        if input_ids is not None:
            image_mask = input_ids == self.config.image_token_id
        else:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
            )
            image_mask = (inputs_embeds == image_embedding).all(-1)
        num_tokens = int(image_mask.sum())
        num_features = image_features.shape[0] * image_features.shape[1]
        if num_tokens != num_features:
            raise ValueError(
                f"Image features and image tokens do not match: the text has {num_tokens} image tokens but the "
                f"{image_features.shape[0]} image(s) give {num_features} features "
                f"({image_features.shape[1]} per image). Expand each <image> with the model's processor."
            )
        image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), image_features.reshape(-1, inputs_embeds.shape[-1]))

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
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
        **kwargs,
    ) -> LlavaModelOutputWithPast:
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

        image_features = None
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values)
        elif vision_features is not None:
            image_features = self.multi_modal_projector(vision_features.to(self.multi_modal_projector_dtype))
        if image_features is not None:
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features)
        elif input_ids is not None and (cache is None or cache.get_seq_length() == 0):
            # Catch the classic bug early: image tokens in the prompt but no image given.
            num_tokens = int((input_ids == self.config.image_token_id).sum())
            if num_tokens:
                raise ValueError(
                    f"The text has {num_tokens} image tokens but no pixel_values (0 image features) were given."
                )
        if image_features is None and self.training and _every_rank_must_run_every_module():
            # A text-only batch on one rank while the others have images: under ZeRO-3/FSDP the tower's and the
            # projector's parameters are gathered collectively (the job hangs), under DDP the projector's gradient
            # is missing on this rank (the reduction fails). Run them on one blank image and add the result times
            # zero: the same modules on every rank, the same loss, zero gradients from this batch.
            blank = torch.zeros((1, *self.expected_pixel_shape()), dtype=inputs_embeds.dtype, device=inputs_embeds.device)
            inputs_embeds = inputs_embeds + 0.0 * self.get_image_features(blank).sum()

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return LlavaModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )

    @property
    def multi_modal_projector_dtype(self) -> torch.dtype:
        parameter = next(self.multi_modal_projector.parameters(), None)
        return parameter.dtype if parameter is not None else self.language_model.dtype


class LlavaForCausalLM(LlavaPreTrainedModel, GenerationMixin):
    """LLaVA with a language-modelling head: the model users load, train and generate with."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

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

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image features `(num_images, image_seq_length, text_hidden_size)`."""
        return self.model.get_image_features(pixel_values)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
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
        **kwargs,
    ) -> LlavaCausalLMOutputWithPast:
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
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return LlavaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        # `generate` drops pixel_values after the prefill (their tokens are then in the cache) but does not know
        # our `vision_features`; drop them the same way, or every decode step would try to merge them again.
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            model_inputs.pop("vision_features", None)
        return model_inputs


# save_pretrained copies this file (and configuration_llava.py) next to the weights.
LlavaForCausalLM.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["LlavaForCausalLM", "LlavaModel", "LlavaPreTrainedModel", "LlavaMultiModalProjector"]
