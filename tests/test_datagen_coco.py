"""COCO captions + instances -> contexts JSONL (datagen/coco.py)."""

import json

import pytest
from datagen_fixtures import COCO_CAPTIONS, COCO_INSTANCES, run_cli, write_coco

from datagen.coco import build_contexts, normalize_bbox


def test_normalize_bbox_converts_xywh_pixels_to_corners_in_unit_range():
    assert normalize_bbox([64, 42.6, 320, 213], 640, 426) == [0.1, 0.1, 0.6, 0.6]
    assert normalize_bbox([600, 400, 100, 50], 640, 426) == [0.938, 0.939, 1.0, 1.0]


def test_build_contexts_joins_captions_and_boxes_per_image(tmp_path):
    captions, instances = write_coco(tmp_path)
    contexts = build_contexts(captions, instances)
    # Image 285 has a box but no caption: nothing for the teacher to read, so it is left out.
    assert [c["id"] for c in contexts] == ["000000000139", "000000000632"]
    first, second = contexts
    assert first["image"] == "000000000139.jpg"
    assert first["captions"] == ["A woman stands in the dining area at the table.", "A room with chairs, a table, and a woman in it."]
    assert first["boxes"] == [
        {"name": "person", "bbox": [0.1, 0.1, 0.6, 0.6]},
        {"name": "chair", "bbox": [0.0, 0.0, 1.0, 1.0]},
        {"name": "chair", "bbox": [0.938, 0.939, 1.0, 1.0]},
    ]
    assert second["captions"] == ["Bedroom scene with a bookcase, blue comforter and window."]
    assert second["boxes"] == []


def test_cli_writes_contexts_jsonl(tmp_path):
    captions, instances = write_coco(tmp_path)
    output = tmp_path / "out" / "contexts.jsonl"
    result = run_cli("coco-contexts", str(captions), str(instances), "--output", str(output))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert lines == build_contexts(captions, instances)
    assert "wrote 2 images (3 boxes)" in result.stdout


def test_errors_name_the_problem(tmp_path):
    captions, instances = write_coco(tmp_path)
    bad = json.loads(json.dumps(COCO_INSTANCES))
    bad["images"][0].pop("width")
    instances.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="image 139 has no usable width/height"):
        build_contexts(captions, instances)

    bad = json.loads(json.dumps(COCO_CAPTIONS))
    bad["annotations"].append({"image_id": 999, "id": 7, "caption": "x"})
    captions.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="refers to image 999"):
        build_contexts(captions, tmp_path / "instances_val2017.json")

    with pytest.raises(ValueError, match="not a COCO annotation file"):
        (tmp_path / "x.json").write_text("{}")
        build_contexts(tmp_path / "x.json", instances)
