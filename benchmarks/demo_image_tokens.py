"""What the offline demo's image tokens look like, and a less noisy score for its models (docs/benchmarks.md, "Demo
learning experiments", third round). A research script, not product code.

    # re-score saved demo models on another demo run's held-out questions (e.g. --full's 645 questions)
    python benchmarks/demo_image_tokens.py rescore /tmp/demo_full/data /tmp/demoA/stage2 /tmp/demoB/stage2
    # norm of the projected image tokens vs word embeddings, and their nearest colour / shape words
    python benchmarks/demo_image_tokens.py tokens /tmp/demoA/stage1 /tmp/demoA/data
    # how word-like a linear map can make a random tower's features (ridge onto emb(colour) + emb(shape))
    python benchmarks/demo_image_tokens.py ridge --width 256 1024
    # fourth round: score with the question before the image instead of after it
    python benchmarks/demo_image_tokens.py question-first /tmp/demoA/stage2 /tmp/demoA/data
    # fourth round: edit a copy of a stage-1 model's linear projector in place before stage 2 (copy the run first)
    python benchmarks/demo_image_tokens.py edit-projector /tmp/copy/stage1 /tmp/copy/data --norm 6
    python benchmarks/demo_image_tokens.py edit-projector /tmp/copy/stage1 /tmp/copy/data --recenter
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.scenes import COLORS, POSITIONS, SHAPES, random_scene, read_scenes  # noqa: E402


def rescore(data_root: Path, model_dirs: list[Path]) -> None:
    from demo.data import DemoData
    from demo.main import evaluate

    data = DemoData(data_root, data_root / "stage1.json", data_root / "stage2.json", data_root / "eval_questions.jsonl", data_root)
    for model_dir in model_dirs:
        # cached next to the model, keyed by the data it was scored on
        cache = model_dir / f"rescore_{data_root.parent.name}.json"
        result = evaluate(model_dir, data, str(model_dir), lambda message: None, cache)
        print(model_dir, {kind: f"{value:.1%}" for kind, value in result["accuracy"].items()}, flush=True)


def question_first(model_dir: Path, data_root: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from demo.teacher import ANSWER_VOCABULARIES
    from evaluation.exact_match import accuracy_by_type, answer_questions, read_questions

    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    image_first = processor.apply_chat_template

    def text_then_image(messages, **kwargs):
        return image_first([{**m, "content": m["content"][::-1]} for m in messages], **kwargs)

    processor.apply_chat_template = text_then_image
    predictions = answer_questions(model, processor, read_questions(data_root / "eval_questions.jsonl"), data_root,
                                   ANSWER_VOCABULARIES)
    print(model_dir, "question first:", {kind: f"{value:.1%}" for kind, value in accuracy_by_type(predictions).items()})


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


def edit_projector(model_dir: Path, data_root: Path, norm: float | None, recenter: bool, scenes: int = 200) -> None:
    """Rewrite a saved model's linear projector (model.safetensors and mm_projector.safetensors, in place):
    `norm` scales it so its image tokens' mean norm on training images is `norm`; `recenter` moves the tokens'
    shared part (their mean) to the mean word embedding and keeps the content (token minus mean) as it is."""
    from safetensors.torch import load_file, save_file

    model, _, _, projected = projected_tokens(model_dir, data_root, "train", scenes)
    shared = projected.mean((0, 1))
    word_mean = model.get_input_embeddings().weight.detach().float().mean(0)
    scale = norm / projected.norm(dim=-1).mean().item() if norm else 1.0
    for file, prefix in (("model.safetensors", "model.multi_modal_projector.linear_1."), ("mm_projector.safetensors", "model.mm_projector.")):
        state = load_file(model_dir / file)
        weight, bias = state[prefix + "weight"], state[prefix + "bias"]
        state[prefix + "weight"] = (weight.float() * scale).to(weight.dtype)
        new_bias = word_mean + (bias.float() - shared) if recenter else bias.float() * scale
        state[prefix + "bias"] = new_bias.to(bias.dtype)
        save_file(state, model_dir / file, metadata={"format": "pt"})
    print(f"{model_dir}: image token norm {projected.norm(dim=-1).mean():.1f} (shared part {shared.norm():.1f}) -> "
          + (f"shared part at the mean word embedding ({word_mean.norm():.1f})" if recenter else f"x{scale:.4f}"))


def ridge(widths: list[int], scenes: int = 3000, image_size: int = 48, patch_size: int = 16) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel

    from demo.default_llm import smollm2_checkpoint

    checkpoint = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    embeddings = AutoModelForCausalLM.from_pretrained(checkpoint).get_input_embeddings().weight.detach().float()
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    rng = random.Random(0)
    drawn = [random_scene("s", rng, image_size, (1,)) for _ in range(scenes)]
    pixels = torch.tensor(np.stack([((np.asarray(image, np.float32) / 255 - mean) / std).transpose(2, 0, 1) for _, image in drawn]),
                          dtype=torch.float32)
    objects = [(index, 3 + POSITIONS.index(obj.position), obj) for index, (scene, _) in enumerate(drawn) for obj in scene.objects]
    target = torch.stack([embeddings[word_id(tokenizer, o.color)] + embeddings[word_id(tokenizer, o.shape)] for *_, o in objects])
    colour_words = torch.stack([embeddings[word_id(tokenizer, c)] for c in COLORS])
    shape_words = torch.stack([embeddings[word_id(tokenizer, s)] for s in SHAPES])
    split = int(0.8 * len(objects))
    for width in widths:
        torch.manual_seed(0)  # the demo builds its tower after the same seed
        config = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=image_size, patch_size=patch_size, projection_dim=width)
        with torch.no_grad():
            hidden_states = CLIPVisionModel(config).eval()(pixel_values=pixels, output_hidden_states=True).hidden_states
        for layer, states in enumerate(hidden_states):
            features = torch.stack([states[index, 1 + cell] for index, cell, _ in objects]).float()
            features = torch.cat([features, torch.ones(len(features), 1)], dim=1)
            train, test = features[:split], features[split:]
            weights = torch.linalg.solve(train.T @ train + 1e-2 * torch.eye(train.shape[1]), train.T @ target[:split])
            predicted, truth = test @ weights, target[split:]
            r2 = 1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum()
            held = [o for *_, o in objects[split:]]
            colour = np.mean([list(COLORS)[(p @ colour_words.T).argmax()] == o.color for p, o in zip(predicted, held)])
            shape = np.mean([SHAPES[(p @ shape_words.T).argmax()] == o.shape for p, o in zip(predicted, held)])
            print(f"width {width}, hidden state {layer}: R^2 {r2:.2f}, decoded colour {colour:.0%}, shape {shape:.0%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("rescore")
    command.add_argument("data_root", type=Path)
    command.add_argument("model_dirs", type=Path, nargs="+")
    command = commands.add_parser("tokens")
    command.add_argument("model_dir", type=Path)
    command.add_argument("data_root", type=Path)
    command = commands.add_parser("question-first")
    command.add_argument("model_dir", type=Path)
    command.add_argument("data_root", type=Path)
    command = commands.add_parser("edit-projector")
    command.add_argument("model_dir", type=Path)
    command.add_argument("data_root", type=Path)
    edit = command.add_mutually_exclusive_group(required=True)
    edit.add_argument("--norm", type=float)
    edit.add_argument("--recenter", action="store_true")
    command = commands.add_parser("ridge")
    command.add_argument("--width", type=int, nargs="+", default=[256])
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.command == "rescore":
        rescore(args.data_root, args.model_dirs)
    elif args.command == "tokens":
        tokens(args.model_dir, args.data_root)
    elif args.command == "question-first":
        question_first(args.model_dir, args.data_root)
    elif args.command == "edit-projector":
        edit_projector(args.model_dir, args.data_root, args.norm, args.recenter)
    else:
        ridge(args.width)


if __name__ == "__main__":
    main()
