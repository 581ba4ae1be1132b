"""The demo projector's starting point: image tokens that read like the words naming each patch.

Stage 1 at the paper's learning rate makes the demo's image tokens many times longer than word embeddings
(docs/benchmarks.md, "Eighth round"). The LLM then reads an object's colour and shape but does not learn in
stage 2 to pick *which* image token a question is about: it answers every question about an image from one of its
objects. Tokens kept at word scale, each the sum of the embeddings of the words that name its patch, are bound
(the same experiments: shape at a position is answered far more often).

So before stage 1 the projector's W and b are fit by ridge regression (closed form: the tower is frozen and W is
linear, so no optimiser is needed) from the frozen tower's patch features of the training scenes, at the layer
LLaVA reads, onto those word sums: each patch's column word (left / middle / right) plus, where a COCO box is
centred in it, the object's colour and category words, the same boxes the tower's patch labels come from
(`demo.tower.patch_labels`). Stage 1 then trains the projector on the captions as the paper does, at a learning
rate that keeps the tokens word-like. Without the column words (`column_words=False`, the demo's choice) the fit is
closer (the tower barely encodes the column) and colour is read better after stage 2 (the LLM learns the column
from the tokens' order instead; docs/benchmarks.md, "Ninth" and "Tenth round").
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from demo.scenes import POSITIONS
from demo.tower import patch_labels


def word_embedding(word: str, tokenizer: PreTrainedTokenizerBase, embeddings: torch.Tensor) -> torch.Tensor:
    """The input embedding of ` word` (mean over its tokens where the tokenizer splits it)."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    return embeddings[ids].mean(0)


def patch_word_targets(
    coco_dir: Path, grid: int, tokenizer: PreTrainedTokenizerBase, embeddings: torch.Tensor, column_words: bool = True
) -> dict[str, torch.Tensor]:
    """Per image (by COCO file name), a `(grid * grid, hidden)` target: every patch's column word (with
    `column_words`), plus the colour and category words of the object whose box is centred in it."""
    if column_words and grid != len(POSITIONS):
        raise ValueError(f"column words are {POSITIONS}: a {len(POSITIONS)}x{len(POSITIONS)} patch grid, got {grid}x{grid}")
    labels = patch_labels(coco_dir, grid)
    embed = lambda word: word_embedding(word, tokenizer, embeddings).double()  # noqa: E731
    nothing = torch.zeros(embeddings.shape[1], dtype=torch.float64)  # label 0: no object centred in the patch
    columns = torch.stack([embed(POSITIONS[patch % grid]) if column_words else nothing for patch in range(grid * grid)])
    categories = torch.stack([nothing] + [embed(name) for name in labels.category_names])
    colors = torch.stack([nothing] + [embed(name) for name in labels.color_names])
    return {
        name: columns + categories[torch.tensor(labels.categories[name])] + colors[torch.tensor(labels.colors[name])]
        for name in labels.categories
    }


@torch.no_grad()
def fit_word_aligned_projector(
    model,
    image_processor,
    tokenizer: PreTrainedTokenizerBase,
    coco_dir: Path,
    ridge: float = 1e-2,
    batch_size: int = 200,
    column_words: bool = True,
) -> dict[str, float]:
    """Set `model`'s linear projector to the ridge-regression map from its tower's patch features of the images in
    `coco_dir` (`instances.json`, `images/`) to `patch_word_targets` (`column_words` passed on). `ridge` is the
    penalty per sample (the bias is not penalised). Returns the fit's R² and the mean norm of the fitted tokens (to compare with the word embeddings')."""
    projector = model.model.multi_modal_projector
    if getattr(projector, "depth", None) != 1 or projector.linear_1.bias is None:
        raise ValueError("a word-aligned start is fit for the paper's linear projector with a bias (projector_type='linear')")
    grid = int(model.config.image_seq_length ** 0.5)
    if grid * grid != model.config.image_seq_length:
        raise ValueError(f"image_seq_length {model.config.image_seq_length} is not a square patch grid")
    embeddings = model.get_input_embeddings().weight.detach().float()
    targets = patch_word_targets(coco_dir, grid, tokenizer, embeddings, column_words=column_words)
    file_names = [image["file_name"] for image in json.loads((coco_dir / "instances.json").read_text())["images"]]
    features = []
    for start in range(0, len(file_names), batch_size):
        images = [Image.open(coco_dir / name).convert("RGB") for name in file_names[start : start + batch_size]]
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        features.append(model.get_vision_features(pixel_values).flatten(0, 1).double())
    inputs = torch.cat(features)
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], dim=1)
    wanted = torch.cat([targets[name] for name in file_names])
    penalty = ridge * len(inputs) * torch.eye(inputs.shape[1], dtype=inputs.dtype)
    penalty[-1, -1] = 0.0
    solution = torch.linalg.solve(inputs.T @ inputs + penalty, inputs.T @ wanted)
    fitted = inputs @ solution
    r2 = 1 - ((fitted - wanted) ** 2).sum() / ((wanted - wanted.mean(0)) ** 2).sum()
    projector.linear_1.weight.copy_(solution[:-1].T.to(projector.linear_1.weight.dtype))
    projector.linear_1.bias.copy_(solution[-1].to(projector.linear_1.bias.dtype))
    return {"r2": r2.item(), "token_norm": fitted.norm(dim=1).mean().item()}
