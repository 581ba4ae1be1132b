# Copyright 2026 The LLaVA-transformers authors. Licensed under the Apache License, Version 2.0.
"""Processor for LLaVA (Visual Instruction Tuning): an image processor plus the language model's tokenizer.

This file is shipped as remote code next to the weights (`save_pretrained` copies it), so it is flat and
self-contained: it imports only transformers, PIL and numpy.

The processor expands each `<image>` placeholder in the text into `image_seq_length` image tokens, one per
feature the vision tower yields, so that the model can scatter image features into those positions without
changing the sequence length. The expansion goes through `ProcessorMixin.replace_image_token`, the hook that
`ProcessorMixin.__call__` uses to build `text_replacement_offsets`; `apply_chat_template` relies on those
offsets to keep the assistant-token masks (TRL's `assistant_only_loss`) aligned with the expanded text.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from transformers.image_transforms import to_pil_image
from transformers.processing_utils import MultiModalData, ProcessorMixin


IMAGE_ASPECT_MODES = ("resize", "pad")


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Centre `image` on a square RGB canvas filled with `background` (LLaVA-1.5's `pad` aspect mode).

    The image keeps its aspect ratio; the image processor's own resize then shrinks the square, so no part of
    the image is cropped away (unlike the default shortest-edge resize + centre crop).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class LlavaRemoteProcessor(ProcessorMixin):
    r"""
    Constructs a LLaVA processor from an image processor (CLIP or SigLIP, either backend) and a tokenizer.

    The class is named `LlavaRemoteProcessor` (and exported as `LlavaProcessor` too) on purpose: the name is
    written into `processor_config.json` as `processor_class`, and the name `LlavaProcessor` would make
    `AutoProcessor.from_pretrained(DIR)` without `trust_remote_code=True` silently build transformers' built-in
    LLaVA processor, which knows neither `image_seq_length` nor the `pad` aspect mode. With this name, loading
    without `trust_remote_code=True` fails with transformers' remote-code error instead.

    Args:
        image_processor ([`BaseImageProcessor`]):
            A CLIP or SigLIP image processor (`CLIPImageProcessor`, `CLIPImageProcessorPil`, ...).
        tokenizer ([`PreTrainedTokenizerBase`]):
            The language model's tokenizer. It must know `image_token` as a single token. Its `padding_side` is
            set to `"left"`, the right default for batched generation; training collators pass
            `padding_side="right"` explicitly.
        chat_template (`str`, *optional*):
            A Jinja chat template (see `processing.templates.get_chat_template`).
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The placeholder that marks where an image goes in the text.
        image_seq_length (`int`, *optional*, defaults to 576):
            Number of image tokens per image: the number of features the vision tower yields
            (`LlavaConfig.image_seq_length`, e.g. (336 // 14) ** 2 = 576 for CLIP ViT-L/14-336 without CLS).
        image_aspect_mode (`str`, *optional*, defaults to `"resize"`):
            `"resize"`: the image processor's own resize (and centre crop for CLIP). `"pad"`: first centre the
            image on a square canvas filled with the image processor's mean colour, as LLaVA-1.5 does.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        image_seq_length: int = 576,
        image_aspect_mode: str = "resize",
    ):
        if image_processor is None or tokenizer is None:
            raise ValueError("LlavaProcessor needs both an `image_processor` and a `tokenizer`.")
        if not isinstance(image_seq_length, int) or isinstance(image_seq_length, bool) or image_seq_length < 1:
            raise ValueError(f"`image_seq_length` must be a positive int, got {image_seq_length!r}.")
        if image_aspect_mode not in IMAGE_ASPECT_MODES:
            raise ValueError(f"`image_aspect_mode` must be one of {IMAGE_ASPECT_MODES}, got {image_aspect_mode!r}.")
        image_token_ids = tokenizer.encode(image_token, add_special_tokens=False)
        if len(image_token_ids) != 1:
            raise ValueError(
                f"The tokenizer splits the image token {image_token!r} into {len(image_token_ids)} tokens "
                f"{image_token_ids}; it must be a single token. Add it first, e.g. "
                f"`tokenizer.add_special_tokens({{'extra_special_tokens': [{image_token!r}]}})`, and resize the "
                "model's token embeddings to match."
            )
        self.image_token = image_token
        self.image_token_id = image_token_ids[0]
        self.image_seq_length = image_seq_length
        self.image_aspect_mode = image_aspect_mode
        tokenizer.padding_side = "left"
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        # transformers sets `auto_map` (where AutoProcessor finds this class) on the processor when saving it and
        # drops it when loading, so a processor and its saved-and-reloaded copy would serialise differently. Set
        # it from the start, to the value `save_pretrained` writes.
        if self._auto_class is not None:
            self.auto_map = {self._auto_class: f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"}

    @property
    def pad_background(self) -> tuple[int, int, int]:
        """The `pad` canvas colour: the image processor's mean, in 0-255 (truncated, as in LLaVA-1.5)."""
        mean = self.image_processor.image_mean
        if isinstance(mean, (int, float)):
            mean = [mean] * 3
        return tuple(int(channel * 255) for channel in mean)

    def _pad_images(self, images: Any) -> Any:
        """Apply `expand_to_square` to every image of a (possibly nested) list, keeping the nesting."""
        if isinstance(images, (list, tuple)):
            return [self._pad_images(image) for image in images]
        if not isinstance(images, Image.Image):
            images = to_pil_image(images)
        return expand_to_square(images, self.pad_background)

    def _process_images(self, images, **kwargs):
        # `ProcessorMixin.__call__` hands every image to this hook before the image processor sees it, which makes
        # it the one place where the `pad` aspect mode can act for `__call__` and `apply_chat_template` alike.
        if self.image_aspect_mode == "pad":
            images = self._pad_images(images)
        return super()._process_images(images, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """The text that replaces the `image_idx`-th `<image>`: `image_seq_length` image tokens."""
        return self.image_token * self.image_seq_length

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Number of placeholder tokens per image (used by serving engines such as vLLM)."""
        vision_data = {}
        if image_sizes is not None:
            vision_data["num_image_tokens"] = [self.image_seq_length] * len(image_sizes)
            vision_data["num_image_patches"] = [1] * len(image_sizes)
        return MultiModalData(**vision_data)


# The public name used throughout the project (`from processing import LlavaProcessor`).
LlavaProcessor = LlavaRemoteProcessor

LlavaRemoteProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["LlavaProcessor", "LlavaRemoteProcessor", "expand_to_square"]
