"""Stage-1 feature cache: per-epoch speed-up after the first epoch, next to its bound from FLOPs.

A CLIP ViT-L/14-336-sized tower (random weights: no CLIP can be downloaded here; speed does not depend on the
values) and the real SmolLM2-135M LLM, `mlp2x_gelu` projector (the LLaVA-1.5 pair), trained through the project's
entry point `training.train.run` on synthetic 336 px scenes: once without the cache, once with it. The cache run
fills the cache first (that is the first epoch's tower work, timed on its own); every epoch after reads features.

    python benchmarks/bench_feature_cache.py [--images 16] [--batch 4] [--epochs 2] [--threads 2] [--bf16]
    python benchmarks/bench_feature_cache.py --frozen-tower-step [--batch 2] [--rounds 3] [--profile]

`--frozen-tower-step` instead times, interleaved in one process, one uncached stage-1 step (forward + backward,
tower frozen, activation checkpointing as the trainer's default) against its two parts run apart: the tower's
forward under `no_grad` and the projector/LLM step on those features (`vision_features=`, the cached path). The
goal: step / (no-grad tower + projector/LLM step) <= 1.1. `--profile` prints torch.profiler's top ops of one
uncached step.

The bound: with the cache a step skips the tower's forward pass, so the best possible speed-up is
(tower + projector + LLM FLOPs) / (projector + LLM FLOPs), counted for the step as trained (the frozen LLM does
no weight-gradient work, TRL's fused head projects only supervised positions, the last vision layer never runs).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
from transformers import TrainerCallback

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from demo.scenes import captions, write_scenes  # noqa: E402
from modeling_llava.build import add_image_token, assemble_llava, make_processor  # noqa: E402
from demo.default_llm import smollm2_checkpoint  # noqa: E402
from datagen.instructions import expand_caption_pairs  # noqa: E402
from training.train import run  # noqa: E402

# CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336)
VIT_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 image_size=336, patch_size=14, projection_dim=768)


class EpochTimer(TrainerCallback):
    """Wall time from `run()` to the first step (setup; for the cached run also the cache fill) and per epoch."""

    def __init__(self):
        self.created = time.perf_counter()
        self.setup = 0.0
        self.epochs: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.setup = time.perf_counter() - self.created

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epochs.append(time.perf_counter() - self.started)


def step_flops(model, text_tokens: int, supervised_tokens: int) -> dict[str, float]:
    """Matmul FLOPs of one stage-1 sample: tower forward, projector forward+backward, frozen LLM forward+input-grad."""
    vision = model.config.vision_config
    layers_run = vision.num_hidden_layers + 1 + model.config.vision_feature_layer  # -2: all but the last
    d, inner = vision.hidden_size, vision.intermediate_size
    patches = (vision.image_size // vision.patch_size) ** 2
    positions = patches + 1
    tower = 2 * 3 * vision.patch_size**2 * d * patches
    tower += layers_run * (2 * positions * (4 * d * d + 2 * d * inner) + 4 * positions**2 * d)

    projector_params = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    projector = 6 * projector_params * patches  # forward, input grad, weight grad

    text = model.config.text_config
    sequence = patches + text_tokens
    backbone_params = sum(p.numel() for p in model.model.language_model.parameters())
    backbone_params -= model.get_input_embeddings().weight.numel()  # a lookup, not a matmul
    attention = 4 * sequence**2 * text.num_attention_heads * (text.hidden_size // text.num_attention_heads)
    llm = 2 * (2 * backbone_params * sequence + text.num_hidden_layers * attention)  # forward + input grad
    llm += 2 * 2 * text.vocab_size * text.hidden_size * supervised_tokens  # fused head, supervised positions only
    return {"tower": tower, "projector": projector, "llm": llm}


def build(dtype: torch.dtype, tower_config: dict = VIT_L_336, chat_template: str | None = None):
    """SmolLM2-135M-Instruct + a random CLIP tower of `tower_config`'s shape + an mlp2x_gelu projector, with its
    processor (also `bench_packing.py`'s model, at the demo's tower shape)."""
    language_dir = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(language_dir)
    language_model = AutoModelForCausalLM.from_pretrained(language_dir, dtype=dtype)
    image_token_id = add_image_token(tokenizer)
    language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(**tower_config)).to(dtype)
    model = assemble_llava(tower, language_model, image_token_id, projector_type="mlp2x_gelu")
    size = tower_config["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return model, make_processor(model.config, image_processor, tokenizer, chat_template=chat_template)


def stage1_batch(processor, work: Path, size: int) -> dict[str, torch.Tensor]:
    """One stage-1 batch of `size` synthetic 336 px scenes and their captions, as the trainer's collator makes it."""
    from processing.llava_data import load_llava_dataset, to_trl_dataset
    from training.collators import stage1_collator

    rng = random.Random(0)
    scenes = write_scenes(work / "scenes", size, seed=0, image_size=336)
    pairs = [{"id": s.id, "image": f"images/{s.id}.png", "caption": captions(s, rng, 1)[0]} for s in scenes]
    (work / "stage1.json").write_text(json.dumps(expand_caption_pairs(pairs, seed=0)))
    dataset = to_trl_dataset(load_llava_dataset(work / "stage1.json", work / "scenes"), work / "scenes")
    return stage1_collator(processor, max_length=1024)([dataset[index] for index in range(size)])


def frozen_tower_step(args) -> int:
    """Uncached stage-1 step against no-grad tower forward + projector/LLM step, interleaved (see the docstring)."""
    from training.parameters import configure_trainable_parameters

    model, processor = build(torch.float32)
    model.train()
    configure_trainable_parameters(model, stage=1)
    if args.checkpointing:
        model.activation_checkpointing_enable()  # what the trainer does by default (`activation_checkpointing`)
    with tempfile.TemporaryDirectory() as tmp:
        batch = stage1_batch(processor, Path(tmp), args.batch)
    pixel_values = batch.pop("pixel_values")
    autocast = torch.autocast("cuda" if torch.cuda.is_available() else "cpu", torch.bfloat16, enabled=args.bf16)

    def uncached_step():
        with autocast:
            model(**batch, pixel_values=pixel_values).loss.backward()
        model.zero_grad(set_to_none=True)

    def tower_forward():
        with torch.no_grad(), autocast:
            return model.get_vision_features(pixel_values)

    def cached_step(features):
        with autocast:
            model(**batch, vision_features=features).loss.backward()
        model.zero_grad(set_to_none=True)

    def timed(function, *function_args):
        started = time.perf_counter()
        result = function(*function_args)
        return time.perf_counter() - started, result

    times = {"step": [], "tower": [], "rest": []}
    for round_index in range(args.rounds + 1):  # round 0 warms up and is not counted
        step_time, _ = timed(uncached_step)
        tower_time, features = timed(tower_forward)
        rest_time, _ = timed(cached_step, features)
        if round_index:
            for name, value in zip(times, (step_time, tower_time, rest_time)):
                times[name].append(value)

    images, tokens = pixel_values.shape[0], int(batch["attention_mask"].sum())
    print(f"torch {torch.__version__}, {args.threads} threads, {'bf16 autocast' if args.bf16 else 'float32'}; "
          f"stage 1, batch {images} ({tokens} tokens), "
          f"activation checkpointing {'on' if args.checkpointing else 'off'}, "
          f"{args.rounds} interleaved rounds after one warm-up")
    for name, label in (("step", "uncached step"), ("tower", "tower forward, no_grad"), ("rest", "projector/LLM step")):
        print(f"{label:24s} {', '.join(f'{t:.2f}' for t in times[name])} s")
    best = {name: min(values) for name, values in times.items()}
    print(f"tower per image: {(best['step'] - best['rest']) / images:.2f} s inside the step (step - projector/LLM "
          f"step), {best['tower'] / images:.2f} s under no_grad (best rounds)")
    ratio = best["step"] / (best["tower"] + best["rest"])
    print(f"step / (no-grad tower + projector/LLM step) = {ratio:.2f} (goal <= 1.1)")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            uncached_step()
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU with native bf16, or GPU)")
    parser.add_argument("--frozen-tower-step", action="store_true",
                        help="time an uncached stage-1 step against no-grad tower forward + projector/LLM step")
    parser.add_argument("--rounds", type=int, default=3, help="with --frozen-tower-step: timed rounds")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                        help="with --frozen-tower-step: without activation checkpointing")
    parser.add_argument("--profile", action="store_true", help="with --frozen-tower-step: profile one step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.frozen_tower_step:
        return frozen_tower_step(args)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rng = random.Random(0)
        scenes = write_scenes(work / "scenes", args.images, seed=0, image_size=336)
        pairs = [{"id": s.id, "image": f"images/{s.id}.png", "caption": captions(s, rng, 1)[0]} for s in scenes]
        (work / "stage1.json").write_text(json.dumps(expand_caption_pairs(pairs, seed=0)))
        base = dict(stage=1, data_path=str(work / "stage1.json"), image_root=str(work / "scenes"),
                    per_device_train_batch_size=args.batch, num_train_epochs=args.epochs, learning_rate=1e-3,
                    logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0, seed=0,
                    max_length=1024, bf16=args.bf16, use_cpu=not torch.cuda.is_available(), dtype="float32")
        timers, logs = {}, {}
        for name in ("uncached", "cached"):
            model, processor = build(torch.float32)
            config = dict(base, output_dir=str(work / name))
            if name == "cached":
                config["feature_cache_dir"] = str(work / "cache")
            timers[name] = EpochTimer()
            logs[name] = run(config, model=model, processor=processor, callbacks=[timers[name]]).log_history
        # TRL logs the running count of (unpadded) tokens: their mean per sample is the sequence length trained
        tokens_per_sample = max(entry.get("num_tokens", 0) for entry in logs["uncached"]) / (args.images * args.epochs)
        supervised = sum(len(processor.tokenizer(p["caption"]).input_ids) + 1 for p in pairs) / len(pairs)
        flops = step_flops(model, round(tokens_per_sample) - model.config.image_seq_length, round(supervised))

    uncached, cached = timers["uncached"].epochs, timers["cached"].epochs
    fill = timers["cached"].setup - timers["uncached"].setup
    bound = sum(flops.values()) / (flops["projector"] + flops["llm"])
    later_uncached, later_cached = min(uncached[1:] or uncached), min(cached[1:] or cached)
    speedup = later_uncached / later_cached
    print(f"torch {torch.__version__}, {args.threads} threads, {'bf16 autocast' if args.bf16 else 'float32'}; "
          f"{args.images} images x {args.epochs} epochs, batch {args.batch}")
    print(f"FLOPs per sample: tower {flops['tower'] / 1e9:.0f} G, projector {flops['projector'] / 1e9:.1f} G, "
          f"LLM {flops['llm'] / 1e9:.0f} G")
    print(f"epoch seconds, uncached: {', '.join(f'{t:.1f}' for t in uncached)}")
    print(f"epoch seconds, cached:   {', '.join(f'{t:.1f}' for t in cached)} (before them, filling the cache took {fill:.1f}s)")
    print(f"speed-up after the first epoch: {speedup:.2f}x; bound from FLOPs: {bound:.2f}x; "
          f"{speedup / bound:.0%} of the bound (target >= 90%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
