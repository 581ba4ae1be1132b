"""lmms-eval plugin: run lmms-eval's tasks unchanged on this project's LLaVA models.

Registration (both of lmms-eval's mechanisms):
- the entry point `llava_remote = evaluation.lmms_eval_plugin:manifest` in the group
  `lmms_eval.models` (declared in setup.py), which lmms-eval's model registry loads at start-up;
- `@register_model("llava_remote")` in lmms-eval's legacy registry, when this module is imported.

Use:
    lmms-eval --model llava_remote --model_args pretrained=DIR_OR_HUB_ID,batch_size=8 --tasks pope

The model is loaded exactly as `llava eval` loads it (`AutoModelForImageTextToText` +
`AutoProcessor`, `trust_remote_code=True`) and answers through the same left-padded batch
generation (`inference.batch.BatchAnswerer`). Requires the `eval` extra (`pip install .[eval]`).
"""

from __future__ import annotations

import json
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model

from inference.batch import BatchAnswerer
from inference.loading import load_model_and_processor
from inference.messages import build_messages, truncate_at_stops
from inference.settings import GenerationSettings

MODEL_NAME = "llava_remote"


def manifest():
    """The entry-point payload: lmms-eval's manifest naming this module's model class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.LlavaRemoteLmms")


@register_model(MODEL_NAME)
class LlavaRemoteLmms(lmms):
    """lmms-eval's model API (`lmms`) over a LLaVA folder or Hub id.

    Args (lmms-eval passes `--model_args` as keyword arguments):
        pretrained: model folder or Hub id.
        device: torch device (default: cuda if available, else cpu).
        dtype: `auto` (the checkpoint's), `float32`, `bfloat16` or `float16`.
        batch_size: requests per generate call (left-padded); an integer (lmms-eval's `auto` search is not
            supported).
        max_batch_size: accepted because lmms-eval always passes it; only used by `auto`, so ignored.
        max_new_tokens: default generation length when a task does not set one.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_new_tokens: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"{MODEL_NAME}: unknown model_args {sorted(kwargs)}")
        try:
            self.batch_size = int(batch_size)
        except ValueError:
            raise ValueError(f"{MODEL_NAME}: batch_size must be an integer, got {batch_size!r}") from None
        model, processor = load_model_and_processor(pretrained, device=device, dtype=dtype)
        self.answerer = BatchAnswerer(model, processor, GenerationSettings(max_new_tokens=int(max_new_tokens)))
        self.pretrained = pretrained

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "LlavaRemoteLmms":
        """Build from `--model_args` plus the `batch_size`, `max_batch_size` and `device` lmms-eval adds.

        lmms-eval always passes its own `--batch_size` (default 1) next to `--model_args`; the base class hands
        both to `__init__`, which fails with "got multiple values for keyword argument" whenever `--model_args`
        names one of them. Here a value written in `--model_args` wins over lmms-eval's option.
        """
        from lmms_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        for key, value in (additional_config or {}).items():
            if value is not None:
                args.setdefault(key, value)
        return cls(**args)

    # lmms-eval passes (context, gen_kwargs, doc_to_visual, doc_id, task, split) per generate_until request.
    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return [v for v in (visuals or []) if v is not None]

    @staticmethod
    def _settings(gen_kwargs: dict[str, Any], default: GenerationSettings) -> tuple[GenerationSettings, list[str]]:
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        settings = GenerationSettings(
            max_new_tokens=int(gen_kwargs.get("max_new_tokens", default.max_new_tokens)),
            temperature=float(gen_kwargs.get("temperature", 0.0) or 0.0) if gen_kwargs.get("do_sample", True) else 0.0,
            top_p=gen_kwargs.get("top_p"),
            num_beams=int(gen_kwargs.get("num_beams", 1) or 1),
        )
        return settings, until

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answer each request; consecutive requests with the same generation settings and the same
        kind (with or without images) share a batch. Answers are cut at the task's `until` strings."""
        prepared = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            settings, until = self._settings(dict(gen_kwargs or {}), self.answerer.settings)
            key = (json.dumps(settings.__dict__, sort_keys=True), bool(visuals))
            prepared.append((key, build_messages(context, len(visuals)), visuals, settings, until))

        results: list[str] = []
        start = 0
        while start < len(prepared):
            end = start + 1
            while end < len(prepared) and end - start < self.batch_size and prepared[end][0] == prepared[start][0]:
                end += 1
            batch = prepared[start:end]
            images = [image for item in batch for image in item[2]]
            answers = self.answerer([item[1] for item in batch], images or None, batch[0][3])
            results += [truncate_at_stops(answer, item[4]) for answer, item in zip(answers, batch)]
            start = end
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Sum of the log-probabilities of each continuation after the chat-formatted context, and
        whether greedy decoding would have produced it (requests: context, doc_to_target,
        doc_to_visual, doc_id, task, split)."""
        import torch

        processor, model = self.answerer.processor, self.answerer.model
        results = []
        for request in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            continuation = (
                doc_to_target if isinstance(doc_to_target, str) else doc_to_target(self.task_dict[task][split][doc_id])
            )
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            prompt = self.answerer.prompts([build_messages(context, len(visuals))])[0]
            images = visuals or None
            full = processor(images=images, text=[prompt + continuation], return_tensors="pt").to(model.device)
            prompt_length = processor(images=images, text=[prompt], return_tensors="pt")["input_ids"].shape[1]
            if "pixel_values" in full:
                full["pixel_values"] = full["pixel_values"].to(model.dtype)
            with torch.inference_mode():
                logits = model(**full).logits[0, prompt_length - 1 : -1].float()
            targets = full["input_ids"][0, prompt_length:]
            if targets.numel() == 0:
                raise ValueError(f"{MODEL_NAME}: the continuation {continuation!r} adds no token after the context")
            log_probs = torch.log_softmax(logits, dim=-1)
            total = log_probs.gather(1, targets[:, None]).sum().item()
            greedy = bool((logits.argmax(dim=-1) == targets).all())
            results.append((total, greedy))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME} does not implement lmms-eval's multi-round generation yet")
