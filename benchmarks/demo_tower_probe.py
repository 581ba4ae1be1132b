"""Linear probes of a saved CLIP vision tower's per-cell features on the demo's scenes (docs/benchmarks.md, "Fifth round").

    python benchmarks/demo_tower_probe.py DIR/vision-tower [DIR2/vision-tower ...] [--scenes 2048] [--seed 5]

Draws `--scenes` fresh middle-row scenes (`demo.scenes.random_scene`), reads each middle-row cell's feature at the
layer LLaVA reads (`hidden_states[-2]`, CLS dropped) and prints, per tower:
- R²: the share of those features' variance explained by the cell's (colour, shape) class (an empty cell is a class);
- the accuracy of least-squares linear probes for colour and for shape (0 = empty), fit on the first half of the
  cells and scored on the second half.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.scenes import COLORS, POSITIONS, SHAPES, random_scene  # noqa: E402

# CLIP's image normalisation, as the demo's `CLIPImageProcessor` applies it (the scenes are drawn at the tower's size).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
MIDDLE_ROW = (1,)
COLOR_NAMES = list(COLORS)


def pixel_values(image) -> torch.Tensor:
    scaled = (np.asarray(image, dtype=np.float32) / 255 - CLIP_MEAN) / CLIP_STD
    return torch.tensor(scaled.transpose(2, 0, 1), dtype=torch.float32)


@torch.no_grad()
def middle_row_features(tower, scenes: int, seed: int, batch_size: int = 128):
    """Per middle-row cell of `scenes` fresh scenes: its feature, its colour class and its shape class (0 = empty)."""
    rng = random.Random(seed)
    size, hidden = tower.config.image_size, tower.config.hidden_size
    features, colors, shapes = [], [], []
    for start in range(0, scenes, batch_size):
        drawn = [random_scene("probe", rng, size, MIDDLE_ROW) for _ in range(min(batch_size, scenes - start))]
        pixels = torch.stack([pixel_values(image) for _, image in drawn])
        patches = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        features.append(patches.reshape(-1, 3, 3, hidden)[:, 1].reshape(-1, hidden))
        for scene, _ in drawn:
            cell_colors, cell_shapes = [0, 0, 0], [0, 0, 0]
            for obj in scene.objects:
                column = POSITIONS.index(obj.position)
                cell_colors[column] = 1 + COLOR_NAMES.index(obj.color)
                cell_shapes[column] = 1 + SHAPES.index(obj.shape)
            colors += cell_colors
            shapes += cell_shapes
    return torch.cat(features), torch.tensor(colors), torch.tensor(shapes)


def class_r2(features: torch.Tensor, classes: torch.Tensor) -> float:
    """1 - (variance left around each class's mean feature) / (total variance)."""
    centred = features - features.mean(0)
    means = torch.zeros(int(classes.max()) + 1, features.shape[1])
    for value in classes.unique():
        means[value] = centred[classes == value].mean(0)
    return (1 - ((centred - means[classes]) ** 2).sum() / (centred**2).sum()).item()


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """Least-squares linear probe (with a bias) onto one-hot labels: fit on the first half, accuracy on the second."""
    inputs = torch.cat([features, torch.ones(len(features), 1)], 1)
    half = len(inputs) // 2
    targets = torch.nn.functional.one_hot(labels, classes).float()
    weights = torch.linalg.lstsq(inputs[:half], targets[:half]).solution
    return ((inputs[half:] @ weights).argmax(1) == labels[half:]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("towers", type=Path, nargs="+", help="saved CLIPVisionModel folders (a demo run's vision-tower)")
    parser.add_argument("--scenes", type=int, default=2048, help="fresh scenes to draw (default 2048)")
    parser.add_argument("--seed", type=int, default=5, help="seed of the scene draws (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()

    from transformers import CLIPVisionModel

    torch.set_num_threads(args.threads)
    for path in args.towers:
        tower = CLIPVisionModel.from_pretrained(path).eval()
        features, colors, shapes = middle_row_features(tower, args.scenes, args.seed)
        r2 = class_r2(features, colors * (len(SHAPES) + 1) + shapes)
        colour = probe_accuracy(features, colors, len(COLOR_NAMES) + 1)
        shape = probe_accuracy(features, shapes, len(SHAPES) + 1)
        print(path, "R2", round(r2, 3), "probe colour", round(colour, 3), "shape", round(shape, 3))


if __name__ == "__main__":
    main()
