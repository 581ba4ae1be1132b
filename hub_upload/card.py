"""The model card (`README.md`) of an exported model: Hub YAML metadata plus a short usage guide.

Built on `huggingface_hub.ModelCard` / `ModelCardData`, which validate the metadata and write the
`model-index` block that the Hub reads evaluation results from.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

#: Task under which evaluation results are filed in the Hub's `model-index`.
EVAL_TASK_TYPE = "image-text-to-text"

DEFAULT_TAGS = ["llava", "vision-language", "visual-instruction-tuning", "custom_code"]

_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}

LLaVA ("Visual Instruction Tuning", Liu et al. 2023): a vision encoder, a projector into the word
embedding space and a causal language model. The model ships as *remote code*
(`configuration_llava.py`, `modeling_llava.py`, `processing_llava.py` and the captioning pipeline
`pipeline_llava.py` beside the weights), so load it with `trust_remote_code=True`.

{% if base_models %}## Base models

{% for model in base_models %}- [{{ model }}](https://huggingface.co/{{ model }})
{% endfor %}{% endif %}
## Usage

{{ usage }}
{% if training_details %}
## Training

{{ training_details }}
{% endif %}{% if results_table %}
## Evaluation

{{ results_table }}
{% endif %}"""

_FULL_MODEL_USAGE = """```python
from transformers import pipeline

pipe = pipeline("image-text-to-text", model="{repo_id}", trust_remote_code=True)
messages = [{{"role": "user", "content": [
    {{"type": "image", "url": "https://example.com/photo.jpg"}},
    {{"type": "text", "text": "What is in this picture?"}},
]}}]
print(pipe(text=messages, max_new_tokens=64, return_full_text=False)[0]["generated_text"])
```

or interactively: `llava chat --model {repo_id} --image photo.jpg`."""

_ADAPTER_USAGE = """This is a PEFT LoRA adapter for `{base}`.

```python
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

base = AutoModelForImageTextToText.from_pretrained("{base}", trust_remote_code=True)
model = PeftModel.from_pretrained(base, "{repo_id}")
processor = AutoProcessor.from_pretrained("{base}", trust_remote_code=True)  # processor + chat template
```"""


@dataclass
class CardInfo:
    """What the card says about a model. Every field is optional except the name."""

    model_name: str
    repo_id: str | None = None
    base_models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    license: str | None = None
    language: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    is_adapter: bool = False
    summary: str = ""
    training_details: str = ""
    eval_results: list[EvalResult] = field(default_factory=list)


def _flatten_numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1.0}`: every finite number in a nested JSON object."""
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {prefix: float(value)} if math.isfinite(value) else {}
    if isinstance(value, dict):
        flat: dict[str, float] = {}
        for key, item in value.items():
            flat.update(_flatten_numbers(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {}


def load_eval_results(path: str | os.PathLike, dataset_name: str | None = None) -> list[EvalResult]:
    """Evaluation results from a `metrics.json` (as written by `llava eval ...`).

    The file is a JSON object. When it has an `"eval_results"` list (as `llava demo` writes), each entry holds the
    keyword arguments of one `huggingface_hub.EvalResult` (`metric_type`, a readable `metric_name`, `metric_value`,
    `dataset_name`, `dataset_type`, ...) and those are the results, as they are. Otherwise its numbers (at any depth;
    nested keys are joined with dots) become one `EvalResult` each; when it has a `"metrics"` object, only the numbers
    inside it count (so counts and settings beside it are not reported as results). The benchmark name is, in order:
    `dataset_name`, the file's own `"benchmark"`/`"dataset"`/`"task"` string field, or the name of the folder holding
    the file.

    Raises:
        ValueError: the file is not a JSON object, holds no numbers, or has an `eval_results` entry that is not an
            `EvalResult`, naming the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics, found {type(data).__name__}.")
    if "eval_results" in data:
        return _listed_eval_results(path, data["eval_results"])
    name = dataset_name
    for key in ("benchmark", "dataset", "task"):
        if name is None and isinstance(data.get(key), str):
            name = data[key]
    name = name or path.absolute().parent.name
    metrics = _flatten_numbers(data["metrics"] if isinstance(data.get("metrics"), dict) else data)
    if not metrics:
        raise ValueError(f"{path}: no numeric metrics found.")
    return [
        EvalResult(
            task_type=EVAL_TASK_TYPE,
            dataset_type=name,
            dataset_name=name,
            metric_type=metric,
            metric_name=metric,
            metric_value=value,
        )
        for metric, value in metrics.items()
    ]


def _listed_eval_results(path: Path, entries: Any) -> list[EvalResult]:
    """The `eval_results` entries of a metrics file, each checked by `EvalResult` itself."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: `eval_results` must be a non-empty list of EvalResult fields.")
    results = []
    for number, entry in enumerate(entries):
        try:
            results.append(EvalResult(**entry))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: `eval_results` entry {number} is not an EvalResult ({error}).") from error
    return results


def _results_table(results: list[EvalResult]) -> str:
    rows = ["| benchmark | metric | value |", "| --- | --- | --- |"]
    rows += [f"| {r.dataset_name} | {r.metric_name or r.metric_type} | {r.metric_value:.4g} |" for r in results]
    return "\n".join(rows)


def build_model_card(info: CardInfo) -> ModelCard:
    """The card as a `ModelCard`; `str(card)` is the README text, `card.save(path)` writes it."""
    repo_id = info.repo_id or info.model_name
    tags = list(dict.fromkeys(DEFAULT_TAGS + (["lora", "peft"] if info.is_adapter else []) + info.tags))
    card_data = ModelCardData(
        model_name=info.model_name,
        library_name="peft" if info.is_adapter else "transformers",
        pipeline_tag="image-text-to-text",
        base_model=info.base_models or None,
        # Several base models would otherwise read as a *merge* of them on the Hub; LLaVA fine-tunes
        # the combination (or adapts one base model, for adapters).
        base_model_relation=("adapter" if info.is_adapter else "finetune") if info.base_models else None,
        datasets=info.datasets or None,
        license=info.license,
        language=info.language or None,
        tags=tags,
        eval_results=info.eval_results or None,
    )
    if info.is_adapter:
        usage = _ADAPTER_USAGE.format(base=info.base_models[0] if info.base_models else "BASE_MODEL", repo_id=repo_id)
    else:
        usage = _FULL_MODEL_USAGE.format(repo_id=repo_id)
    return ModelCard.from_template(
        card_data,
        template_str=_CARD_TEMPLATE,
        model_name=info.model_name,
        summary=info.summary or f"A LLaVA vision-language model{' adapter' if info.is_adapter else ''}.",
        base_models=info.base_models,
        usage=usage,
        training_details=info.training_details,
        results_table=_results_table(info.eval_results) if info.eval_results else "",
    )


def write_model_card(folder: str | os.PathLike, info: CardInfo) -> Path:
    """Write `README.md` into `folder` and return its path."""
    path = Path(folder) / "README.md"
    build_model_card(info).save(path)
    return path
