"""COCO annotations -> the teacher "contexts" file (paper §3: the image as captions plus boxes).

`llava coco-contexts captions_train2017.json instances_train2017.json --output contexts.jsonl`
writes one JSON object per image that has captions:

    {"id": "000000391895", "image": "000000391895.jpg",
     "captions": ["A man with a red helmet on a small moped on a dirt road.", ...],
     "boxes": [{"name": "person", "bbox": [0.339, 0.178, 0.611, 0.949]}, ...]}

COCO boxes are `[x, y, width, height]` in pixels; here they become `[x1, y1, x2, y2]` divided by the
image width and height (from the `images` entries), clipped to 0–1 and rounded to 3 decimals as in
the paper's Table 1. Captions and boxes keep the order of the annotation files.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from processing.jsonio import write_records


def _load_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(f"{path}: not a COCO annotation file (no {key!r} key)")
    return data


def normalize_bbox(bbox: list[float], width: float, height: float) -> list[float]:
    """COCO `[x, y, w, h]` in pixels -> `[x1, y1, x2, y2]` in 0–1, rounded to 3 decimals."""
    x, y, w, h = (float(v) for v in bbox)
    corners = (x / width, y / height, (x + w) / width, (y + h) / height)
    return [round(min(max(v, 0.0), 1.0), 3) for v in corners]


def build_contexts(captions_file: str | Path, instances_file: str | Path) -> list[dict[str, Any]]:
    """Join a COCO captions file and an instances file into one context record per captioned image."""
    captions_data = _load_json(captions_file)
    instances_data = _load_json(instances_file)
    if "categories" not in instances_data:
        raise ValueError(f"{instances_file}: not a COCO instances file (no 'categories' key)")

    images: dict[int, dict[str, Any]] = {}
    for data in (instances_data, captions_data):  # the instances file is the one whose sizes the boxes need
        for image in data["images"]:
            images.setdefault(image["id"], image)
    categories = {category["id"]: category["name"] for category in instances_data["categories"]}

    captions: dict[int, list[str]] = defaultdict(list)
    for annotation in captions_data["annotations"]:
        if annotation["image_id"] not in images:
            raise ValueError(
                f"{captions_file}: caption annotation {annotation.get('id')} refers to image "
                f"{annotation['image_id']}, which no 'images' entry lists"
            )
        captions[annotation["image_id"]].append(annotation["caption"].strip())

    boxes: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for annotation in instances_data["annotations"]:
        image = images.get(annotation["image_id"])
        if image is None:
            raise ValueError(
                f"{instances_file}: instance annotation {annotation.get('id')} refers to image "
                f"{annotation['image_id']}, which no 'images' entry lists"
            )
        width, height = image.get("width"), image.get("height")
        if not width or not height:
            raise ValueError(
                f"{instances_file}: image {image['id']} has no usable width/height "
                f"(found width={width!r}, height={height!r}); cannot normalise its boxes"
            )
        if annotation["category_id"] not in categories:
            raise ValueError(
                f"{instances_file}: annotation {annotation.get('id')} has category_id "
                f"{annotation['category_id']}, which 'categories' does not list"
            )
        boxes[annotation["image_id"]].append(
            {"name": categories[annotation["category_id"]], "bbox": normalize_bbox(annotation["bbox"], width, height)}
        )

    contexts = []
    for image_id in sorted(captions):
        image = images[image_id]
        contexts.append(
            {
                "id": Path(image["file_name"]).stem if image.get("file_name") else str(image_id),
                "image": image.get("file_name", str(image_id)),
                "captions": captions[image_id],
                "boxes": boxes.get(image_id, []),
            }
        )
    return contexts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llava coco-contexts",
        description="Turn COCO caption + instance annotations into the contexts JSONL that "
        "`llava generate-data` reads (captions, then boxes normalised to 0-1).",
    )
    parser.add_argument("captions", help="COCO captions file, e.g. annotations/captions_train2017.json")
    parser.add_argument("instances", help="COCO instances file, e.g. annotations/instances_train2017.json")
    parser.add_argument("--output", required=True, help="where to write the contexts (JSON lines)")
    args = parser.parse_args(argv)

    contexts = build_contexts(args.captions, args.instances)
    write_records(args.output, contexts)
    n_boxes = sum(len(context["boxes"]) for context in contexts)
    print(f"wrote {len(contexts)} images ({n_boxes} boxes) to {args.output}")
    return 0
