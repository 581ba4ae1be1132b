"""The demo's vision tower: a tiny CLIP pretrained on COCO captions (contrastive) and boxes (per-patch labels), saved
as a CLIP vision tower."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPVisionModel

from demo.scenes import COLORS, POSITIONS, SHAPES, write_scenes
from demo.tower import (
    CaptionPairCollator,
    CLIPWithPatchLabels,
    TowerPretraining,
    caption_pairs,
    clip_config,
    encode_pairs,
    patch_labels,
    pretrain_tower,
)
from training_fixtures import tiny_tokenizer

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=48,
             patch_size=16, projection_dim=32)
SMALL = TowerPretraining(steps=100, batch_size=16, learning_rate=3e-3, warmup_steps=2, text_hidden_size=32, text_layers=1,
                         max_caption_tokens=160)


def image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})


def test_captions_end_where_clips_text_tower_pools(tmp_path):
    write_scenes(tmp_path, 4, seed=0, image_size=48)
    pairs = caption_pairs(tmp_path)
    assert len(pairs) == 4 and all(len(pair["captions"]) == 5 for pair in pairs)
    tokenizer = tiny_tokenizer()
    encoded, vocab_size = encode_pairs(pairs, image_processor(), tokenizer, max_tokens=160, source=tmp_path)
    characters = {c for pair in pairs for caption in pair["captions"] for c in caption}
    assert vocab_size == len(characters)  # the captions' own vocabulary (a character-level tokenizer here)
    batch = CaptionPairCollator(vocab_size, seed=0)(encoded)
    end = vocab_size
    lengths = batch["attention_mask"].sum(1)
    first_end = (batch["input_ids"] == end).int().argmax(1)
    assert torch.equal(first_end, lengths - 1)  # the end id closes each caption, padding follows it
    assert batch["pixel_values"].shape == (4, 3, 48, 48) and batch["return_loss"] is True

    text = CLIPTextModel(clip_config(TOWER, vocab_size, SMALL).text_config).eval()
    with torch.no_grad():
        out = text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    rows = torch.arange(4)
    assert torch.equal(out.pooler_output, out.last_hidden_state[rows, first_end])


@pytest.mark.parametrize("patch_loss_weight", [0.0, 3.0])
def test_pretraining_lowers_the_loss_and_saves_a_clip_vision_tower(tmp_path, patch_loss_weight):
    write_scenes(tmp_path / "train", 32, seed=0, image_size=48, rows=(1,))
    settings = dataclasses.replace(SMALL, patch_loss_weight=patch_loss_weight)
    losses = pretrain_tower(tmp_path / "tower", tmp_path / "train", TOWER, image_processor(), tiny_tokenizer(), settings, seed=0)
    assert len(losses) == SMALL.steps
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert start > 2.0 and end < 0.6 * start, losses  # ln(16) = 2.77 at chance
    tower = CLIPVisionModel.from_pretrained(tmp_path / "tower")
    assert tower.config.hidden_size == 32 and tower.config.image_size == 48
    assert CLIPImageProcessor.from_pretrained(tmp_path / "tower").crop_size == {"height": 48, "width": 48}
    assert json.loads((tmp_path / "tower" / "pretraining_losses.json").read_text()) == losses
    assert not (tmp_path / "tower" / "trainer").exists()
    fresh = CLIPVisionModel(tower.config)
    assert not torch.equal(fresh.embeddings.patch_embedding.weight, tower.embeddings.patch_embedding.weight)


def test_images_without_captions_are_named(tmp_path):
    write_scenes(tmp_path, 2, seed=0, image_size=48)
    coco = json.loads((tmp_path / "captions.json").read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 1]
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"1 image\(s\) without a caption, e.g. .*scene-00001.png"):
        caption_pairs(tmp_path)


def test_a_caption_longer_than_the_text_tower_is_refused_before_training(tmp_path):
    write_scenes(tmp_path, 2, seed=0, image_size=48)
    short = TowerPretraining(steps=1, batch_size=2, max_caption_tokens=8, text_hidden_size=32, text_layers=1)
    with pytest.raises(ValueError, match=r"captions.json: a caption of .*scene-00000.png has \d+ tokens .*max_caption_tokens=8"):
        pretrain_tower(tmp_path / "tower", tmp_path, TOWER, image_processor(), tiny_tokenizer(), short, seed=0)
    assert not (tmp_path / "tower").exists()


def test_patch_labels_name_the_object_centred_in_each_patch(tmp_path):
    scenes = write_scenes(tmp_path, 6, seed=1, image_size=48)
    labels = patch_labels(tmp_path, grid=3)
    assert (labels.num_categories, labels.num_colors) == (len(SHAPES), len(set(COLORS) & {o.color for s in scenes for o in s.objects}))
    colors = sorted({o.color for s in scenes for o in s.objects})
    for scene in scenes:
        expected_categories, expected_colors = [0] * 9, [0] * 9
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.bbox
            patch = int((y1 + y2) / 2 * 3) * 3 + POSITIONS.index(obj.position)
            expected_categories[patch] = 1 + SHAPES.index(obj.shape)
            expected_colors[patch] = 1 + colors.index(obj.color)
        assert labels.categories[f"images/{scene.id}.png"] == expected_categories
        assert labels.colors[f"images/{scene.id}.png"] == expected_colors


def test_patch_loss_is_clips_loss_plus_the_weighted_cross_entropy_of_both_heads():
    torch.manual_seed(0)
    model = CLIPWithPatchLabels(clip_config(TOWER, 10, SMALL), num_categories=3, num_colors=6, patch_loss_weight=3.0,
                                feature_layer=-1).eval()
    batch = {"input_ids": torch.randint(0, 10, (4, 7)), "pixel_values": torch.randn(4, 3, 48, 48), "return_loss": True}
    categories, colors = torch.randint(0, 4, (4, 9)), torch.randint(0, 7, (4, 9))
    with torch.no_grad():
        total = model(patch_categories=categories, patch_colors=colors, **batch).loss
        clip = super(CLIPWithPatchLabels, model).forward(**batch).loss
        patches = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state[:, 1:]
    ce = torch.nn.functional.cross_entropy
    expected = clip + 3.0 * (ce(model.category_head(patches).flatten(0, 1), categories.flatten())
                             + ce(model.color_head(patches).flatten(0, 1), colors.flatten()))
    assert torch.allclose(total, expected, atol=1e-5)


def test_boxes_the_patch_loss_cannot_use_are_named(tmp_path):
    write_scenes(tmp_path, 2, seed=0, image_size=48)
    instances = json.loads((tmp_path / "instances.json").read_text())
    instances["annotations"].append(dict(instances["annotations"][0], id=99))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    with pytest.raises(ValueError, match=r"instances.json: two boxes of images/scene-00000.png are centred in patch \d"):
        patch_labels(tmp_path, grid=3)
    del instances["annotations"][-1]["attributes"]
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    with pytest.raises(ValueError, match=r"instances.json: annotation 99 of images/scene-00000.png has no attributes.color"):
        patch_labels(tmp_path, grid=3)
