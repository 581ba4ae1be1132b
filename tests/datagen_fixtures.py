"""Small data for the datagen tests: COCO files in the exact COCO layout, contexts, canned teacher replies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Two images; image 2 has no caption (must be left out), image 3 has captions but no boxes.
COCO_IMAGES = [
    {"id": 139, "file_name": "000000000139.jpg", "width": 640, "height": 426},
    {"id": 285, "file_name": "000000000285.jpg", "width": 200, "height": 100},
    {"id": 632, "file_name": "000000000632.jpg", "width": 500, "height": 400},
]
COCO_CAPTIONS = {
    "info": {"description": "test"},
    "licenses": [],
    "images": COCO_IMAGES,
    "annotations": [
        {"image_id": 139, "id": 1, "caption": "A woman stands in the dining area at the table."},
        {"image_id": 632, "id": 2, "caption": "Bedroom scene with a bookcase, blue comforter and window. "},
        {"image_id": 139, "id": 3, "caption": "A room with chairs, a table, and a woman in it."},
    ],
}
COCO_INSTANCES = {
    "info": {"description": "test"},
    "licenses": [],
    "images": COCO_IMAGES,
    "annotations": [
        # [x, y, w, h] in pixels
        {"image_id": 139, "id": 10, "category_id": 1, "bbox": [64.0, 42.6, 320.0, 213.0], "area": 1.0, "iscrowd": 0, "segmentation": []},
        {"image_id": 139, "id": 11, "category_id": 62, "bbox": [0.0, 0.0, 640.0, 426.0], "area": 1.0, "iscrowd": 0, "segmentation": []},
        {"image_id": 285, "id": 12, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "area": 1.0, "iscrowd": 0, "segmentation": []},
        # extends past the right edge: clipped to 1.0
        {"image_id": 139, "id": 13, "category_id": 62, "bbox": [600.0, 400.0, 100.0, 50.0], "area": 1.0, "iscrowd": 0, "segmentation": []},
    ],
    "categories": [
        {"supercategory": "person", "id": 1, "name": "person"},
        {"supercategory": "furniture", "id": 62, "name": "chair"},
    ],
}


def write_coco(folder: Path) -> tuple[Path, Path]:
    captions = folder / "captions_val2017.json"
    instances = folder / "instances_val2017.json"
    captions.write_text(json.dumps(COCO_CAPTIONS))
    instances.write_text(json.dumps(COCO_INSTANCES))
    return captions, instances


def make_contexts(n: int) -> list[dict]:
    """`n` synthetic images; image i's captions mention the marker `img{i}` so canned replies can key on it."""
    return [
        {
            "id": f"img{i:03d}",
            "image": f"images/img{i:03d}.jpg",
            "captions": [f"A dog plays in a park (img{i:03d}).", f"A brown dog runs on the grass (img{i:03d})."],
            "boxes": [{"name": "dog", "bbox": [0.1, 0.2, 0.5, 0.8]}, {"name": "frisbee", "bbox": [0.6, 0.1, 0.7, 0.2]}],
        }
        for i in range(n)
    ]


def write_contexts(path: Path, contexts: list[dict]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in contexts))
    return path


CONVERSATION_REPLY = "Question:\nWhat animal is in the image?\n===\nAnswer:\nA brown dog.\n===\nQuestion:\nWhere is it?\n===\nAnswer:\nIn a park, on the grass."
DETAIL_REPLY = "A brown dog runs across the grass of a park, with a frisbee flying above it to the right."
COMPLEX_REPLY = "Question:\nWhy might the dog be running?\n===\nAnswer:\nIt is probably chasing the frisbee thrown by its owner."

REPLIES = {"conversation": CONVERSATION_REPLY, "detail": DETAIL_REPLY, "complex": COMPLEX_REPLY}
# A phrase only the system message of each type contains: canned replies key on it (`system`).
SYSTEM_MARKERS = {"conversation": "Design a conversation", "detail": "in a detailed manner", "complex": "one plausible question"}


def canned_responses(delay: float = 0.0) -> list[dict]:
    """One correct canned reply per response type, for any image."""
    return [{"system": SYSTEM_MARKERS[t], "content": REPLIES[t], "delay": delay} for t in REPLIES]


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `llava ARGS` the way the team's tests must: `python -m llava_cli` from the repo root."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "llava_cli", *args], cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
