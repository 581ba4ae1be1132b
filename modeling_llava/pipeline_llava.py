# Remote code: this file is copied next to the weights (configuration_llava.py imports it relatively, which makes
# `save_pretrained` and the Hub loader carry it along). It imports only transformers.
"""`pipeline("image-to-text", model=REPO, trust_remote_code=True)` for LLaVA: captions, or answers to a prompt.

transformers 5 redirects the `image-to-text` task to `image-text-to-text`, which refuses an image without text
("You must provide text for this pipeline"). Captioning users call `captioner(image)`: this pipeline, named in the
model's `config.custom_pipelines` (which `pipeline()` consults before the redirect), turns each image into a
one-turn chat through the model's own chat template, with the paper's brief-description instruction when no
`prompt` is given, and answers in the image-to-text format `[{"generated_text": ...}]`.
"""

from __future__ import annotations

from typing import Any

from transformers.pipelines.image_text_to_text import ImageTextToTextPipeline

#: The first of the paper's brief-description instructions (Table 8), used when no prompt is given.
BRIEF_DESCRIPTION_INSTRUCTION = "Describe the image concisely."


class LlavaImageToTextPipeline(ImageTextToTextPipeline):
    """Image-to-text pipeline of a LLaVA model: one caption (or answer) per image.

    Call it as transformers 4's image-to-text pipeline: `captioner(image)`, `captioner([image, ...])` (a batch),
    `captioner(image, prompt="What is in the picture?")`; `prompt` may also be a list, one per image. Generation
    options go through `max_new_tokens=` or `generate_kwargs=`. A single image gives `[{"generated_text": str}]`,
    a list of images a list of those. Called with `text=`, or built for the `image-text-to-text` task, it is
    transformers' image-text-to-text pipeline (without its "model is not supported" message).
    """

    def check_model_type(self, supported_models) -> None:
        # transformers' list holds only its own classes, so remote code always "is not supported" and the whole
        # list is printed; this pipeline is shipped with the model it runs.
        return None

    def __call__(self, images: Any = None, prompt: str | list[str] | None = None, **kwargs: Any):
        if self.task == "image-text-to-text" or "text" in kwargs:  # that task's calling convention, unchanged
            return super().__call__(images, **kwargs)
        if images is None:
            raise ValueError("image-to-text needs an image (a PIL image, a path or a URL) or a list of them.")
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt] * len(batch)
        if len(prompts) != len(batch):
            raise ValueError(f"Got {len(batch)} images but {len(prompts)} prompts: pass one prompt per image.")
        chats = [
            [{"role": "user", "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": text if text is not None else BRIEF_DESCRIPTION_INSTRUCTION},
            ]}]
            for image, text in zip(batch, prompts)
        ]
        kwargs.setdefault("return_full_text", False)
        outputs = super().__call__(text=chats, **kwargs)
        results = [[{"generated_text": candidate["generated_text"]} for candidate in output] for output in outputs]
        return results[0] if single else results


__all__ = ["LlavaImageToTextPipeline", "BRIEF_DESCRIPTION_INSTRUCTION"]
