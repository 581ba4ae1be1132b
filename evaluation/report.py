"""Evaluation reports: `metrics.json` plus a Markdown report with the tables and a few examples
(image thumbnails copied next to the report, question, answer, score)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datagen.prompting import RESPONSE_TYPES
from processing.files import write_json, write_text
from processing.images import ImageLoadError, load_image

THUMBNAIL_SIZE = (256, 256)


def write_metrics(output_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write `metrics.json` atomically into `output_dir`."""
    path = Path(output_dir) / "metrics.json"
    write_json(path, metrics)
    return path


def judge_table(results: dict[str, dict[str, Any]]) -> str:
    """The paper's Table 3 layout: relative score per type and overall, with both means."""
    lines = [
        "| Type | Relative score | Model mean | Reference mean | Scored | Unscored |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in (*RESPONSE_TYPES, "all"):
        if name not in results:
            continue
        row = results[name]
        lines.append(
            f"| {name} | {_fmt(row['relative_score'], 1)} | {_fmt(row['model_mean'], 2)} | "
            f"{_fmt(row['reference_mean'], 2)} | {row['count']} | {row['unscored']} |"
        )
    return "\n".join(lines)


def pope_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per POPE subset (and `all`): accuracy, precision, recall, F1 (%) and yes-ratio."""
    lines = [
        "| Subset | Accuracy | Precision | Recall | F1 | Yes-ratio | Questions |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        cells = [_fmt(100 * row[key], 2) for key in ("accuracy", "precision", "recall", "f1", "yes_ratio")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['count']} |")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_examples(
    examples: Sequence[dict[str, Any]], output_dir: str | os.PathLike, image_root: str | os.PathLike | None
) -> str:
    """Markdown blocks for examples `{"id", "image"?, "question", "answer", "reference"?, "score"?}`.

    Images are copied as thumbnails into `output_dir/report_images/` so that the report stays valid
    when the data folder moves; a missing image is noted, not fatal (the metrics are already written).
    """
    blocks = []
    for example in examples:
        lines = [f"### {example['id']}", ""]
        if example.get("image"):
            try:
                image = load_image(image_root or ".", example["image"])
            except ImageLoadError as error:
                lines += [f"*(image not shown: {error})*", ""]
            else:
                target = Path(output_dir) / "report_images" / f"{_safe_name(str(example['id']))}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                image.thumbnail(THUMBNAIL_SIZE)
                image.save(target)
                lines += [f"![{example['id']}](report_images/{target.name})", ""]
        lines += [f"**Question:** {_escape(example['question'])}", "", f"**Answer:** {_escape(example['answer'])}", ""]
        if example.get("reference") is not None:
            lines += [f"**Reference:** {_escape(example['reference'])}", ""]
        if example.get("score") is not None:
            lines += [f"**Score:** {example['score']}", ""]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(output_dir: str | os.PathLike, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Write `report.md` with a title and `(heading, markdown)` sections."""
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    path = Path(output_dir) / "report.md"
    write_text(path, "\n".join(parts))
    return path
