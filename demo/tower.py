"""The demo's vision tower: a tiny CLIP, pretrained on the training scenes' COCO captions and boxes.

LLaVA starts from OpenAI's pretrained CLIP ViT-L/14 and keeps it frozen. No pretrained CLIP is reachable offline,
and a random frozen tower's patch features are mostly nuisance (background colour, noise, size; docs/benchmarks.md,
"Fifth round"), which no projector trained in minutes turns into tokens the LLM can bind. So the demo does what
CLIP's authors did, at toy scale: it trains transformers' `CLIPModel` (this small vision tower plus a small text
tower over SmolLM2's tokenizer) with CLIP's own symmetric contrastive loss (`return_loss=True`) on image-caption
pairs — the training scenes and their five COCO captions each — then keeps the vision half, which LLaVA's stages
use frozen as they use CLIP's. Stage 1 and 2 never see the text half.

Captions alone teach the tower colours and positions but little shape: a batch's captions can mostly be told apart
without it (a linear shape probe reads it barely better than from a random tower). So, as detector-style
pretraining does, a second loss asks each patch feature — at the layer LLaVA reads — which object's box is centred
in that patch (its category and colour attribute, from the COCO instances file), or none: the shape probe and the
demo's shape answers improve (docs/benchmarks.md, "Sixth round").
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from processing.files import atomic_output_dir
from training.cpu_memory import keep_freed_memory
from training.train import silence_console


@dataclass(frozen=True)
class TowerPretraining:
    """Pretraining of the demo's tower: steps, batch (in-batch negatives), optimiser, text tower, patch-label loss."""

    steps: int = 200
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    text_hidden_size: int = 128
    text_layers: int = 2
    max_caption_tokens: int = 64
    # Weight of the per-patch recognition loss (`CLIPWithPatchLabels`) next to CLIP's; 0 trains CLIP's loss alone.
    patch_loss_weight: float = 3.0
    # The vision layer whose patch features that loss shapes: the one LLaVA reads (`vision_feature_layer`).
    feature_layer: int = -2


# The per-patch label tensors an example may carry (see `CLIPWithPatchLabels`), batched by the collator.
PATCH_LABEL_KEYS = ("patch_categories", "patch_colors")

class CaptionPairCollator:
    """Images with one of their captions, drawn afresh each time an image is seen (seeded), as CLIP samples one
    caption per image per step.

    Each caption ends with `end_id`, one id past the captions' vocabulary: CLIP's text tower pools at the first
    `eos_token_id`, and a private id cannot collide with a caption token, whatever the tokenizer's special tokens
    are. Padding repeats it (after the first, it is masked).
    """

    def __init__(self, end_id: int, seed: int):
        self.end_id, self.rng = end_id, random.Random(seed)

    def __call__(self, examples: list[dict]) -> dict:
        ids = [self.rng.choice(example["caption_ids"]) + [self.end_id] for example in examples]
        width = max(map(len, ids))
        batch = {
            "input_ids": torch.tensor([row + [self.end_id] * (width - len(row)) for row in ids]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids]),
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "return_loss": True,
        }
        for key in PATCH_LABEL_KEYS:
            if key in examples[0]:
                batch[key] = torch.stack([example[key] for example in examples])
        return batch



class CLIPWithPatchLabels(CLIPModel):
    """`CLIPModel` whose loss also asks every patch feature what is centred in it.

    Two linear heads read the patch tokens of vision layer `feature_layer` and classify the object whose box centre
    falls in the patch — its category and its colour, class 0 for none — with cross-entropy added to CLIP's
    contrastive loss, times `patch_loss_weight`. Only the vision tower is kept, so the heads are thrown away with
    the text tower.
    """

    def __init__(self, config: CLIPConfig, num_categories: int, num_colors: int, patch_loss_weight: float, feature_layer: int):
        super().__init__(config)
        hidden = config.vision_config.hidden_size
        self.category_head = nn.Linear(hidden, num_categories + 1)
        self.color_head = nn.Linear(hidden, num_colors + 1)
        self.patch_loss_weight, self.feature_layer = patch_loss_weight, feature_layer

    def forward(self, patch_categories: torch.Tensor, patch_colors: torch.Tensor, **clip_inputs):
        outputs = super().forward(**clip_inputs, output_hidden_states=True)
        patches = outputs.vision_model_output.hidden_states[self.feature_layer][:, 1:]  # CLS dropped, as LLaVA does
        patch_loss = sum(
            nn.functional.cross_entropy(head(patches).flatten(0, 1).float(), labels.flatten())
            for head, labels in ((self.category_head, patch_categories), (self.color_head, patch_colors))
        )
        outputs.loss = outputs.loss + self.patch_loss_weight * patch_loss
        return outputs


@dataclass
class PatchLabels:
    """Per image (by file name), the class of each patch: category and colour ids, 0 where no box is centred."""

    categories: dict[str, list[int]]
    colors: dict[str, list[int]]
    category_names: list[str]  # class i + 1 is category_names[i]
    color_names: list[str]

    @property
    def num_categories(self) -> int:
        return len(self.category_names)

    @property
    def num_colors(self) -> int:
        return len(self.color_names)


def patch_labels(coco_dir: Path, grid: int) -> PatchLabels:
    """Patch classes of a `grid` x `grid` patch layout from `coco_dir/instances.json` (boxes, `category_id`, and
    the `color` attribute the demo's scenes carry)."""
    source = coco_dir / "instances.json"
    coco = json.loads(source.read_text())
    category_ids = sorted(category["id"] for category in coco["categories"])
    category_class = {category_id: index + 1 for index, category_id in enumerate(category_ids)}
    category_name = {category["id"]: category["name"] for category in coco["categories"]}
    colors = sorted({annotation.get("attributes", {}).get("color", "") for annotation in coco["annotations"]} - {""})
    color_class = {color: index + 1 for index, color in enumerate(colors)}
    images = {image["id"]: image for image in coco["images"]}
    categories = {image["file_name"]: [0] * grid * grid for image in coco["images"]}
    colored = {image["file_name"]: [0] * grid * grid for image in coco["images"]}
    for annotation in coco["annotations"]:
        image = images[annotation["image_id"]]
        color = annotation.get("attributes", {}).get("color")
        if color is None:
            raise ValueError(f"{source}: annotation {annotation['id']} of {image['file_name']} has no attributes.color")
        x, y, width, height = annotation["bbox"]
        column = min(int((x + width / 2) / image["width"] * grid), grid - 1)
        row = min(int((y + height / 2) / image["height"] * grid), grid - 1)
        patch = row * grid + column
        if categories[image["file_name"]][patch]:
            raise ValueError(f"{source}: two boxes of {image['file_name']} are centred in patch {patch} "
                             f"(row {row}, column {column}); a patch can name one object")
        categories[image["file_name"]][patch] = category_class[annotation["category_id"]]
        colored[image["file_name"]][patch] = color_class[color]
    return PatchLabels(categories, colored, [category_name[i] for i in category_ids], colors)


def caption_pairs(coco_dir: Path) -> list[dict]:
    """[{image, captions}] from a COCO captions file (`captions.json` beside `images/`)."""
    coco = json.loads((coco_dir / "captions.json").read_text())
    by_image: dict[int, list[str]] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation["caption"])
    pairs = [
        {"image": str(coco_dir / image["file_name"]), "file_name": image["file_name"], "captions": by_image.get(image["id"], [])}
        for image in coco["images"]
    ]
    missing = [pair["image"] for pair in pairs if not pair["captions"]]
    if missing:
        raise ValueError(f"{coco_dir / 'captions.json'}: {len(missing)} image(s) without a caption, e.g. {missing[0]}")
    return pairs


def clip_config(tower: dict, vocab_size: int, settings: TowerPretraining) -> CLIPConfig:
    """A CLIP around the demo's tower, with a small text tower over `vocab_size` caption token ids plus the
    collator's end id (`vocab_size`)."""
    text = dict(
        vocab_size=vocab_size + 1, hidden_size=settings.text_hidden_size, intermediate_size=4 * settings.text_hidden_size,
        num_hidden_layers=settings.text_layers, num_attention_heads=4, max_position_embeddings=settings.max_caption_tokens,
        eos_token_id=vocab_size, pad_token_id=vocab_size, bos_token_id=vocab_size,
    )
    return CLIPConfig(text_config=text, vision_config=tower, projection_dim=tower.get("projection_dim", 256))


def encode_pairs(
    pairs: list[dict], image_processor: CLIPImageProcessorPil, tokenizer: PreTrainedTokenizerBase, max_tokens: int, source: Path
) -> tuple[list[dict], int]:
    """Pixels and caption ids of every pair, computed once (each image is revisited many times), and the size of the
    captions' vocabulary.

    Caption tokens are renumbered densely: the text tower's vocabulary is the captions' own few dozen tokens rather
    than the tokenizer's tens of thousands, which only the throw-away text tower would use, at the cost of a dense
    embedding gradient and its optimizer state every step.
    """
    encoded, vocabulary = [], {}
    for pair in pairs:
        caption_ids = tokenizer(pair["captions"], add_special_tokens=False)["input_ids"]
        longest = max(len(ids) for ids in caption_ids) + 1  # + the end id
        if longest > max_tokens:
            raise ValueError(f"{source}: a caption of {pair['image']} has {longest} tokens with its end token; the "
                             f"text tower takes at most max_caption_tokens={max_tokens}")
        encoded.append({"caption_ids": [[vocabulary.setdefault(i, len(vocabulary)) for i in ids] for ids in caption_ids]})
    images = [Image.open(pair["image"]).convert("RGB") for pair in pairs]
    pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
    for example, pixel_values in zip(encoded, pixels):
        example["pixel_values"] = pixel_values
    return encoded, len(vocabulary)


def pretrain_tower(
    out: Path,
    coco_dir: Path,
    tower: dict,
    image_processor: CLIPImageProcessorPil,
    tokenizer: PreTrainedTokenizerBase,
    settings: TowerPretraining,
    seed: int,
    callbacks: list[TrainerCallback] | None = None,
    precision: dict | None = None,
    quiet: bool = False,
) -> list[float]:
    """Pretrain a CLIP on `coco_dir`'s image-caption pairs (plus, unless `settings.patch_loss_weight` is 0, its
    boxes: `CLIPWithPatchLabels`) and save its vision tower (with `image_processor`) to `out`. Returns the
    training losses. `quiet`: no console output of the Trainer's own (`training.train.silence_console`), for
    `callbacks` that report progress."""
    captioned = caption_pairs(coco_dir)
    pairs, vocab_size = encode_pairs(captioned, image_processor, tokenizer, settings.max_caption_tokens, coco_dir / "captions.json")
    if not torch.cuda.is_available():
        keep_freed_memory()  # as `training.train` does for the LLaVA stages
    torch.manual_seed(seed)
    config = clip_config(tower, vocab_size, settings)
    if settings.patch_loss_weight:
        labels = patch_labels(coco_dir, grid=tower["image_size"] // tower["patch_size"])
        for pair, example in zip(captioned, pairs):
            if pair["file_name"] not in labels.categories:
                raise ValueError(f"{coco_dir / 'instances.json'}: no image entry for {pair['file_name']}, which captions.json has")
            example["patch_categories"] = torch.tensor(labels.categories[pair["file_name"]])
            example["patch_colors"] = torch.tensor(labels.colors[pair["file_name"]])
        model = CLIPWithPatchLabels(
            config, labels.num_categories, labels.num_colors, settings.patch_loss_weight, settings.feature_layer
        )
    else:
        model = CLIPModel(config)
    with atomic_output_dir(out) as staging:
        args = TrainingArguments(
            output_dir=str(staging / "trainer"), max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, warmup_steps=settings.warmup_steps, lr_scheduler_type="cosine",
            weight_decay=0.0, logging_steps=1, save_strategy="no", report_to="none", seed=seed,
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, **(precision or {}),
            dataloader_pin_memory=torch.cuda.is_available(),  # pinned memory needs an accelerator (else a warning)
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=pairs, callbacks=callbacks,
            data_collator=CaptionPairCollator(vocab_size, seed),
        )
        if quiet:
            silence_console(trainer)
        trainer.train()
        vision = CLIPVisionModel(model.config.vision_config)
        vision.load_state_dict(model.vision_model.state_dict())
        vision.save_pretrained(staging)
        image_processor.save_pretrained(staging)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        (staging / "pretraining_losses.json").write_text(json.dumps(losses))
        shutil.rmtree(staging / "trainer", ignore_errors=True)
    return losses
