"""The demo's deliverables: Hub-ready export, a pipeline round trip, loss curves, metrics and a report."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from demo.teacher import QUESTION_TYPES

CHANCE = {"color": 1 / 6, "shape": 1 / 3, "count": 1 / 3}
#: How the exported card's `model-index` names the data the accuracies are measured on.
HELD_OUT_DATASET = {"dataset_name": "llava demo: synthetic shapes, held-out scenes", "dataset_type": "llava-demo-synthetic-shapes",
                    "dataset_split": "held-out"}
READABLE_TYPES = {"color": "Colour", "shape": "Shape", "count": "Count", "overall": "Overall"}


def accuracy_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per model stage, one column per question type (accuracy and its 95% Wilson
    interval), plus chance and the number of questions each row is scored on."""
    from evaluation.intervals import format_accuracy

    kinds = [*QUESTION_TYPES, "overall"]
    questions = "questions (" + " / ".join(QUESTION_TYPES) + ")"
    lines = ["| model | " + " | ".join(kinds) + f" | {questions} |", "|---|" + "---|" * (len(kinds) + 1)]
    lines.append("| chance | " + " | ".join(f"{CHANCE[k]:.0%}" if k in CHANCE else "-" for k in kinds) + " | - |")
    for name, result in results.items():
        cells = [format_accuracy(result["correct"][k], result["questions"][k]) if k in result["questions"] else "-" for k in kinds]
        counts = " / ".join(str(result["questions"].get(k, 0)) for k in QUESTION_TYPES)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {counts} |")
    return "\n".join(lines)


def hub_eval_results(results: dict[str, dict]) -> list[dict]:
    """One `huggingface_hub.EvalResult` (as its keyword arguments) per model stage and question type: the Hub's
    convention of `type: accuracy` with a readable name, on the held-out scenes (the number of them as the config)."""
    from hub_upload.card import EVAL_TASK_TYPE

    return [
        {"task_type": EVAL_TASK_TYPE, "task_name": "Visual question answering (one-word answers)", **HELD_OUT_DATASET,
         "dataset_config": f"{result['scenes']} scenes, {result['questions'][kind]} questions",
         "metric_type": "accuracy", "metric_name": f"{READABLE_TYPES.get(kind, kind)} accuracy {name}",
         "metric_value": round(value, 4)}
        for name, result in results.items()
        for kind, value in result["accuracy"].items()
    ]


def plot_losses(losses: dict[str, list[float]], path: Path) -> Path:
    """One PNG with a training-loss curve per stage (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 3.5), squeeze=False)
    for axis, (name, values) in zip(axes[0], losses.items()):
        axis.plot(range(1, len(values) + 1), values)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def export_and_reload(model_dir: Path, export_dir: Path, metrics_path: Path, question: dict, image_root: Path) -> dict:
    """Export `model_dir` Hub-ready, then answer `question` through `pipeline("image-to-text")` from it."""
    from PIL import Image
    from transformers import pipeline

    from hub_upload.export import ExportOptions, export_model

    if not (export_dir / "config.json").is_file():
        options = ExportOptions(
            overwrite=True, model_name="llava-smollm2-135m-shapes-demo", datasets=["synthetic-shapes (llava demo)"],
            tags=["llava", "demo"], metrics=[str(metrics_path)] if metrics_path.is_file() else [],
        )
        export_model(model_dir, export_dir, options)
    # transformers 5.24 logs the image-to-text redirect with a stray format argument, which prints a
    # "--- Logging error ---" traceback; the redirect itself is fine, so only that warning is muted.
    redirect_logger = logging.getLogger("transformers.pipelines")
    level = redirect_logger.level
    redirect_logger.setLevel(logging.ERROR)
    try:
        captioner = pipeline("image-to-text", model=str(export_dir), trust_remote_code=True)
    finally:
        redirect_logger.setLevel(level)
    image = Image.open(image_root / question["image"]).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question["question"]}]}]
    output = captioner(text=messages, max_new_tokens=8, return_full_text=False)
    answer = output[0]["generated_text"]
    if isinstance(answer, list):  # chat output: the assistant's message
        answer = answer[-1]["content"]
    return {"image": question["image"], "question": question["question"], "truth": question["answer"], "answer": answer}


def write_report(out: Path, results: dict[str, dict], losses_png: Path, pipeline_check: dict, image_root: Path) -> Path:
    """`report.md`: accuracy table, loss curves, the pipeline round trip and example answers with images."""
    examples_dir = out / "report_images"
    examples_dir.mkdir(exist_ok=True)
    lines = ["# LLaVA offline demo report", "", "## Held-out exact-match accuracy", "",
             ("Accuracy with its 95% Wilson score interval in brackets; the last column is the number of questions "
              "per type each row is scored on."), "", accuracy_table(results), ""]
    lines += ["## Training loss", "", f"![loss curves]({losses_png.name})", ""]
    lines += [
        "## Reloaded through `pipeline(\"image-to-text\", trust_remote_code=True)`",
        "",
        f"Q: {pipeline_check['question']}  ",
        f"A: {pipeline_check['answer']}  (truth: {pipeline_check['truth']})",
        "",
        "## Example answers after stage 2",
        "",
        "| image | question | answer | truth | correct |",
        "|---|---|---|---|---|",
    ]
    final = list(results.values())[-1]
    for example in final["examples"]:
        image_name = Path(example["image"]).name
        shutil.copy(image_root / example["image"], examples_dir / image_name)
        lines.append(
            f"| ![]({examples_dir.name}/{image_name}) | {example['question']} | {example['prediction']} | "
            f"{example['answer']} | {'yes' if example['correct'] else 'no'} |"
        )
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_metrics(out: Path, results: dict[str, dict], extra: dict) -> Path:
    """`metrics.json`: accuracy, its 95% Wilson interval and the question counts per model stage and type; chance;
    the run's settings; and `eval_results`, the entries of the exported card's `model-index`
    (`hub_upload.card.load_eval_results`)."""
    metrics = {
        "accuracy": {name: result["accuracy"] for name, result in results.items()},
        "interval_95": {name: result["interval_95"] for name, result in results.items()},
        "questions": {name: result["questions"] for name, result in results.items()},
        "correct": {name: result["correct"] for name, result in results.items()},
        "held_out_scenes": {name: result["scenes"] for name, result in results.items()},
        "chance": CHANCE,
        **extra,
        "eval_results": hub_eval_results(results),
    }
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    return path
