"""TRL's own `SFTTrainer` on our tiny model, as TRL's users run it: TRL's vision collator, LoRA through `peft_config`.

TRL 1.16 labels every token its vision collator emits (image tokens included, unless `assistant_only_loss`) and
computes the loss in a fused LM head that replaces the model's `forward`. Our model masks image-token targets
on that path as on its own forward, so the loss TRL computes equals our model's loss with image tokens ignored.
`LoraConfig()` without `target_modules` picks the language model's projections (what the model offers PEFT).
"""

from __future__ import annotations

import torch
from datasets import Dataset
from peft import LoraConfig
from PIL import Image
from trl import SFTConfig, SFTTrainer

from conftest import TINY_IMAGE_TOKEN_ID, tiny_llava_model
from training_fixtures import tiny_processor


def vision_dataset() -> Dataset:
    records = []
    for colour, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        records.append({
            "images": [Image.new("RGB", (40, 32), rgb)],
            "messages": [{"role": "user", "content": "What colour is it?"},
                         {"role": "assistant", "content": f"It is {colour}."}],
        })
    return Dataset.from_list(records)


def make_trainer(tmp_path, **kwargs) -> SFTTrainer:
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, bf16=False,
                     activation_checkpointing=False, report_to=[], save_strategy="no", use_cpu=True,
                     dataloader_num_workers=0, logging_steps=1)
    return SFTTrainer(model=tiny_llava_model(), args=args, train_dataset=vision_dataset(),
                      processing_class=tiny_processor("chatml"), **kwargs)


def test_trls_own_collator_and_loss_never_supervise_image_tokens(tmp_path):
    trainer = make_trainer(tmp_path)
    batch = trainer.data_collator([dict(example) for example in trainer.train_dataset])
    assert int((batch["labels"] == TINY_IMAGE_TOKEN_ID).sum()) > 0  # TRL labels the image tokens
    model = trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch))
        ignoring_images = batch["labels"].masked_fill(batch["labels"] == TINY_IMAGE_TOKEN_ID, -100)
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        expected = type(model).forward(model, **inputs, labels=ignoring_images).loss
    torch.testing.assert_close(trl_loss, expected)
    trainer.model.train()
    assert trainer.train().training_loss > 0


def test_default_lora_targets_are_the_language_models(tmp_path):
    trainer = make_trainer(tmp_path, peft_config=LoraConfig(r=4, lora_alpha=8))
    adapted = [name for name, module in trainer.model.named_modules() if hasattr(module, "lora_A")]
    assert adapted and all(".language_model." in name for name in adapted)
    assert not any("vision_tower" in name for name in adapted)
    assert trainer.train().training_loss > 0
