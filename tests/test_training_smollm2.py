"""Slow: both stages on the real SmolLM2-135M LLM with a small CLIP tower, building the model from its parts
through `llava train`'s options and sharing the loaded model between the stages in-process."""

from __future__ import annotations

import pytest
import torch

from training.train import PROJECTOR_FILE, run
from training_fixtures import caption_records, chat_records, write_dataset, write_images


@pytest.mark.slow
def test_two_stages_on_smollm2(tmp_path, smollm2_gguf):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from demo.default_llm import smollm2_checkpoint

    language = smollm2_checkpoint(cache_dir=tmp_path / "llm")
    torch.manual_seed(0)
    tower = tmp_path / "tower"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                     num_attention_heads=4, image_size=32, patch_size=8)).save_pretrained(tower)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tower)
    paths = write_images(tmp_path / "images")
    write_dataset(tmp_path / "captions.json", caption_records(paths, repeats=4))
    write_dataset(tmp_path / "chats.json", chat_records(paths, repeats=2))
    common = dict(image_root=str(tmp_path / "images"), per_device_train_batch_size=4, activation_checkpointing=False,
                  report_to="none", save_strategy="no", logging_steps=1, lr_scheduler_type="constant", seed=0)

    first = run({**common, "stage": 1, "vision_tower": str(tower), "language_model": str(language),
                 "projector_type": "mlp2x_gelu", "data_path": str(tmp_path / "captions.json"),
                 "output_dir": str(tmp_path / "stage1"), "learning_rate": 2e-3, "max_steps": 12})
    assert (first.output_dir / PROJECTOR_FILE).is_file()
    assert sum(first.losses[-3:]) < sum(first.losses[:3])
    vision_before = {k: v.clone() for k, v in first.model.model.vision_tower.state_dict().items()}

    second = run({**common, "stage": 2, "chat_template": "chatml", "data_path": str(tmp_path / "chats.json"),
                  "output_dir": str(tmp_path / "stage2"), "learning_rate": 5e-5, "projector_learning_rate": 1e-3,
                  "max_steps": 6}, model=first.model, processor=first.processor)
    assert sum(second.losses[-2:]) < sum(second.losses[:2])
    after = second.model.model.vision_tower.state_dict()
    assert all(torch.equal(vision_before[k], after[k]) for k in vision_before)
