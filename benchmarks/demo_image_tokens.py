"""The offline demo's image tokens, and a less noisy score for its models (docs/benchmarks.md, "Demo learning
experiments", third and fourth rounds).

    # re-score saved demo models on another demo run's held-out questions (e.g. --full's 645 questions)
    python benchmarks/demo_image_tokens.py rescore /tmp/demo_full/data /tmp/demoA/stage2 /tmp/demoB/stage2
    # norm of the projected image tokens vs word embeddings, and their nearest colour / shape words
    python benchmarks/demo_image_tokens.py tokens /tmp/demoA/stage1 /tmp/demoA/data [--scenes 30]

`rescore` caches each model's score next to it (`rescore_<run>.json`). `tokens` reads the held-out scenes of a
demo run's data folder and the image tokens the model's projector makes of them, at the cell of each object.
(The one-off `ridge`, `question-first` and `edit-projector` experiments of the third and fourth rounds have left
this script; their results are in docs/benchmarks.md and their code in the git history, commit 806dcef.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.scenes import COLORS, SHAPES, read_scenes  # noqa: E402


def rescore(data_root: Path, model_dirs: list[Path]) -> None:
    import time

    from demo.data import DemoData
    from demo.main import evaluate
    from demo.progress import Step

    data = DemoData(data_root, data_root / "stage1.json", data_root / "stage2.json", data_root / "eval_questions.jsonl", data_root)
    scenes = len(read_scenes(data_root / "eval"))  # all of them
    for model_dir in model_dirs:
        # cached next to the model, keyed by the data it was scored on
        cache = model_dir / f"rescore_{data_root.parent.name}.json"
        result = evaluate(model_dir, data, str(model_dir), scenes, Step(time.time()), cache)
        print(model_dir, {kind: f"{value:.1%}" for kind, value in result["accuracy"].items()}, flush=True)


def word_id(tokenizer, word: str) -> int:
    return tokenizer(" " + word, add_special_tokens=False).input_ids[0]


def projected_tokens(model_dir: Path, data_root: Path, split: str, scenes: int):
    """The model, its processor, the first `scenes` scenes of `data_root/split` and their projected image tokens."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    drawn = read_scenes(data_root / split)[:scenes]
    images = [Image.open(data_root / split / "images" / f"{scene.id}.png").convert("RGB") for scene in drawn]
    with torch.no_grad():
        pixel_values = processor.image_processor(images, return_tensors="pt").pixel_values
        projected = model.get_image_features(pixel_values).pooler_output.float()
    return model, processor, drawn, projected


def tokens(model_dir: Path, data_root: Path, scenes: int = 30) -> None:
    model, processor, held_out, projected = projected_tokens(model_dir, data_root, "eval", scenes)
    embeddings = model.get_input_embeddings().weight.detach().float()
    unit = embeddings / embeddings.norm(dim=1, keepdim=True)
    colour_ids = [word_id(processor.tokenizer, c) for c in COLORS]
    shape_ids = [word_id(processor.tokenizer, s) for s in SHAPES]
    colour_hits = shape_hits = total = 0
    side = int(round(projected.shape[1] ** 0.5))
    for scene, scene_tokens in zip(held_out, projected):
        for obj in scene.objects:
            # the cell under the object's centre (the demo's scenes: one object per cell of a 3x3 grid)
            x, y = (obj.bbox[0] + obj.bbox[2]) / 2, (obj.bbox[1] + obj.bbox[3]) / 2
            token = scene_tokens[int(y * side) * side + int(x * side)]
            similarity = unit @ (token / token.norm())
            colour_hits += list(COLORS)[similarity[colour_ids].argmax()] == obj.color
            shape_hits += SHAPES[similarity[shape_ids].argmax()] == obj.shape
            total += 1
    print(f"{model_dir}: image token norm {projected.norm(dim=-1).mean():.1f}, word embedding norm "
          f"{embeddings.norm(dim=1).mean():.1f}; nearest colour word right for {colour_hits / total:.0%} of objects, "
          f"nearest shape word {shape_hits / total:.0%}")
    shared = projected.mean((0, 1))
    print(f"  shared part (mean over images and cells) norm {shared.norm():.1f}, content (token minus shared) norm "
          f"{(projected - shared).norm(dim=-1).mean():.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("rescore", help="exact-match accuracy of saved models on a run's held-out questions")
    command.add_argument("data_root", type=Path, help="a demo run's data folder (eval_questions.jsonl, eval/)")
    command.add_argument("model_dirs", type=Path, nargs="+", help="saved models to score")
    command = commands.add_parser("tokens", help="norm and nearest words of a model's image tokens")
    command.add_argument("model_dir", type=Path, help="a saved model with a linear projector")
    command.add_argument("data_root", type=Path, help="a demo run's data folder (eval/scenes.json, eval/images/)")
    command.add_argument("--scenes", type=int, default=30, help="held-out scenes to read (default 30)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.command == "rescore":
        rescore(args.data_root, args.model_dirs)
    else:
        tokens(args.model_dir, args.data_root, args.scenes)


if __name__ == "__main__":
    main()
