"""One GPU check: bf16 stage-2 training of a ~1B LLaVA, padded against packed, and inference against the built-in.

A CLIP ViT-L/14-336-shaped tower (hidden 1024, 24 layers, 16 heads, patch 14, 336 px: 576 image tokens) and a
Llama-3.2-1B-shaped LLM (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192, vocabulary 128,256), random
weights, `mlp2x_gelu` projector, in bf16 on one GPU. It prints one Markdown table:

* **stage-2 training, padded / packed**: the same LLaVA-Instruct-like samples (log-normal text lengths with a long
  tail, a third of them text-only) batched by the project's collator, one padded row per sample or packed into
  rows of `--pack-tokens` (the collator's `packing_max_tokens`; "not available in this build" where the collator
  has no packing). A step is forward, backward and an AdamW step; the tower is frozen, the projector and the LLM
  train (stage 2). Flash-attention 2 where `flash_attn` is installed, sdpa otherwise.
* **inference, ours / built-in**: prefill and greedy-decode tokens/s of our `LlavaForCausalLM` and transformers'
  `LlavaForConditionalGeneration` holding the same weights (logits checked equal first), each model's best of two
  alternating repetitions after a warm-up.

Model FLOPs and MFU. Per training step, counting only real tokens (padding is not useful work):

    FLOPs = 6 * (N_llm + N_head) * T  +  6 * N_projector * I  +  2 * N_tower * P

with N_llm the LLM's parameters except the input embeddings (a lookup, not a matmul), N_head the LM head's
(vocabulary x hidden, tied or not), T the batch's real tokens (text and image tokens), N_projector the projector's
parameters, I the batch's image tokens, N_tower the parameters of the tower layers that run (embeddings and the
encoder layers up to the selected one) and P the patches (+ CLS) of the batch's images: 6 = forward + backward
for what trains, 2 = forward only for the frozen tower (it runs under `no_grad`). Attention-score FLOPs are left
out, as in the usual 6·N·T. MFU = FLOPs / step time / the card's dense bf16 peak (`PEAK_TFLOPS`; "n/a" for a card
not in the table or on CPU).

    python benchmarks/gpu_check.py            # on one H100/H200, sized to finish within 8 minutes
    python benchmarks/gpu_check.py --tiny     # tiny shapes on CPU, seconds (what the test runs)
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_model, next to this file

from bench_model import (  # noqa: E402
    PAD_TOKEN_ID,
    ROPE_THETA,
    TEXT_PRESETS,
    VISION_PRESETS,
    Sizes,
    assert_same_logits,
    build_configs,
    make_inputs,
    run_generate,
    run_prefill,
)

from modeling_llava import LlavaForCausalLM  # noqa: E402
from training.collators import LlavaDataCollator  # noqa: E402
from training.parameters import configure_trainable_parameters  # noqa: E402

#: Dense (not sparse) bf16 tensor-core peak in TFLOPS, by a substring of `torch.cuda.get_device_name()`; the
#: first match wins, so the more specific names come first.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}

TINY_VISION = {"vision_layers": 2, "vision_hidden": 64, "vision_intermediate": 128, "vision_heads": 2,
               "image_size": 56, "patch_size": 14}  # fmt: skip
TINY_TEXT = {"text_layers": 2, "text_hidden": 64, "text_intermediate": 128, "text_heads": 4, "text_kv_heads": 2,
             "vocab_size": 512}  # fmt: skip


@dataclass
class Workload:
    """Sizes of the check: the model's and the data's."""

    sizes: Sizes
    samples_per_step: int
    median_text_tokens: int
    max_text_tokens: int
    pack_tokens: int
    steps: int
    warmup_steps: int
    prompt_text_tokens: int


def workload(args: argparse.Namespace) -> Workload:
    if args.tiny:
        shapes, rope_theta = {**TINY_VISION, **TINY_TEXT}, ROPE_THETA["tiny"]
        data = {"samples_per_step": 6, "median_text_tokens": 12, "max_text_tokens": 96, "pack_tokens": 128,
                "steps": 2, "warmup_steps": 1, "prompt_text_tokens": 8, "new_tokens": 4, "gen_batch": 2}
    else:
        shapes, rope_theta = {**VISION_PRESETS["vit-l-336"], **TEXT_PRESETS["1b"]}, ROPE_THETA["1b"]
        data = {"samples_per_step": 8, "median_text_tokens": 160, "max_text_tokens": 2048, "pack_tokens": 4096,
                "steps": 8, "warmup_steps": 3, "prompt_text_tokens": 64, "new_tokens": 64, "gen_batch": 8}
    if args.steps is not None:
        data["steps"] = args.steps
    if args.samples is not None:
        data["samples_per_step"] = args.samples
    if args.pack_tokens is not None:
        data["pack_tokens"] = args.pack_tokens
    sizes = Sizes(**shapes, rope_theta=rope_theta, prompt_tokens=data.pop("prompt_text_tokens"),
                  new_tokens=data.pop("new_tokens"), gen_batch=data.pop("gen_batch"), train_batch=1)  # fmt: skip
    return Workload(sizes=sizes, prompt_text_tokens=sizes.prompt_tokens, **data)


# --------------------------------------------------------------------------------------------------
# Data: pre-tokenised samples, batched by the project's collator
# --------------------------------------------------------------------------------------------------
def instruct_like_samples(load: Workload, count: int, seed: int) -> list[dict]:
    """`count` encoded samples as the collator's `encode` returns them: a third text-only, text lengths log-normal
    around `median_text_tokens` (long tail, capped), the answer (the last 60% of the text) supervised."""
    sizes, rng = load.sizes, random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        has_image = index % 3 != 2
        text = min(load.max_text_tokens, max(4, round(rng.lognormvariate(math.log(load.median_text_tokens), 1.0))))
        words = torch.randint(3, sizes.vocab_size, (text,), generator=generator).tolist()
        image = [sizes.image_token_id] * sizes.image_seq_length if has_image else []
        question = text - max(1, round(0.6 * text))
        input_ids = [1, *words[:question], *image, *words[question:]]
        labels = [-100] * (1 + question + len(image)) + words[question:]
        pixel_values = (
            torch.randn((1, 3, sizes.image_size, sizes.image_size), generator=generator) if has_image else None
        )
        samples.append({"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values, "images": []})
    return samples


def batching_collator(image_token_id: int, packing_max_tokens: int | None = None) -> LlavaDataCollator | None:
    """The project's collator, used for its batching step only (`pad` / `pack` of encoded samples; the tokenizer
    and chat template are not what this check measures). `None` when packing is asked for but this build's
    collator has no packing."""
    processor = SimpleNamespace(
        tokenizer=SimpleNamespace(pad_token_id=PAD_TOKEN_ID),
        image_token_id=image_token_id,
        chat_template="{% generation %}{% endgeneration %}",
    )
    if packing_max_tokens is None:
        return LlavaDataCollator(processor)
    if "packing_max_tokens" not in LlavaDataCollator.__dataclass_fields__:
        return None
    return LlavaDataCollator(processor, packing_max_tokens=packing_max_tokens)


def collate(collator: LlavaDataCollator, samples: list[dict]) -> dict:
    packing = getattr(collator, "packing_max_tokens", None) is not None
    return dict(collator.pack(samples) if packing else collator.pad(samples))


def real_tokens(batch: dict) -> torch.Tensor:
    """Where a batch holds sample tokens: its attention mask, or for a packed batch (no mask) the non-padding
    positions (the samples' words are never the pad id)."""
    if "attention_mask" in batch:
        return batch["attention_mask"].bool()
    return batch["input_ids"] != PAD_TOKEN_ID


# --------------------------------------------------------------------------------------------------
# Model, FLOPs, peak
# --------------------------------------------------------------------------------------------------
def attention_implementation(device: torch.device) -> str:
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_pair(sizes: Sizes, device: torch.device, dtype: torch.dtype, attention: str):
    """The built-in Llava at random and ours holding exactly its weights, both with `attention`."""
    from transformers import LlavaForConditionalGeneration

    builtin_config, our_config = build_configs(sizes)
    torch.manual_seed(0)
    with torch.device(device):
        builtin = LlavaForConditionalGeneration(builtin_config).to(dtype)
        ours = LlavaForCausalLM(our_config).to(dtype)
    ours.load_state_dict(builtin.state_dict(), strict=True)
    ours.tie_weights()
    for model in (builtin, ours):
        if attention != "sdpa":
            model.set_attn_implementation(attention)
    return builtin.eval(), ours.eval()


def training_flops(model: LlavaForCausalLM, batch: dict, image_token_id: int) -> float:
    """The docstring's 6·N·T formula for one step on `batch`."""
    tokens = int(real_tokens(batch).sum())
    image_tokens = int((batch["input_ids"] == image_token_id).sum())
    inner = model.model
    text_config = model.config.text_config
    n_llm = sum(p.numel() for p in inner.language_model.parameters()) - inner.get_input_embeddings().weight.numel()
    n_head = text_config.vocab_size * text_config.hidden_size
    n_projector = sum(p.numel() for p in inner.multi_modal_projector.parameters())
    unused = set(inner.vision_parameters_without_gradient())
    n_tower = sum(p.numel() for name, p in inner.vision_tower.named_parameters() if name not in unused)
    images = 0 if batch.get("pixel_values") is None else batch["pixel_values"].shape[0]
    vision = model.config.vision_config
    patches = images * ((vision.image_size // vision.patch_size) ** 2 + 1)
    return 6 * (n_llm + n_head) * tokens + 6 * n_projector * image_tokens + 2 * n_tower * patches


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------
def train_row(name, model, collator, batches, load: Workload, device, peak) -> list[str]:
    """Time `load.steps` stage-2 steps after `load.warmup_steps`; a table row."""
    if collator is None:
        return [name, "packed: not available in this build", "", "", ""]
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device.type == "cuda"
    )
    collated = [collate(collator, samples) for samples in batches]
    elapsed, flops, tokens, rows_tokens = 0.0, 0.0, 0, 0
    for step, batch in enumerate(collated[: load.warmup_steps + load.steps]):
        flops_step = training_flops(model, batch, load.sizes.image_token_id)
        real = real_tokens(batch).sum()
        inputs = {key: value.to(device) for key, value in batch.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        synchronize(device)
        started = time.perf_counter()
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= load.warmup_steps:
            elapsed += time.perf_counter() - started
            flops += flops_step
            tokens += int(real)
            rows_tokens += batch["input_ids"].numel()
    del optimizer
    model.eval()
    mfu = "n/a" if peak is None else f"{flops / elapsed / (peak * 1e12):.1%}"
    return [
        name,
        f"{tokens / elapsed:,.0f} tok/s",
        f"{elapsed / load.steps:.3f} s/step",
        f"MFU {mfu}",
        f"{tokens / rows_tokens:.0%} of batch slots real",
    ]


def inference_rows(builtin, ours, load: Workload, device, dtype) -> list[list[str]]:
    sizes = load.sizes
    difference = assert_same_logits(builtin, ours, make_inputs(sizes, 2, device, dtype, 4), 5e-2)
    inputs = make_inputs(sizes, sizes.gen_batch, device, dtype, 2)
    prompt_tokens = int(inputs["attention_mask"].sum())
    results = {"built-in": [0.0, 0.0, None], "ours": [0.0, 0.0, None]}
    models = {"built-in": builtin, "ours": ours}
    for repetition in range(3):  # the first warms up; then the best of two, the models alternating
        for name in ("built-in", "ours") if repetition % 2 else ("ours", "built-in"):
            prefill = run_prefill(models[name], inputs, device)
            generated = run_generate(models[name], inputs, sizes.new_tokens, device)
            if repetition:
                best = results[name]
                best[0] = max(best[0], prompt_tokens / prefill["prefill_s"])
                best[1] = max(best[1], generated["decode_tokens_per_s"])
                best[2] = generated["tokens"]
    identical = torch.equal(results["ours"][2], results["built-in"][2])
    rows = []
    for kind, index in (("prefill", 0), ("decode", 1)):
        ratio = results["ours"][index] / results["built-in"][index]
        rows.append([
            f"inference {kind}, batch {sizes.gen_batch}",
            f"ours {results['ours'][index]:,.0f} tok/s",
            f"built-in {results['built-in'][index]:,.0f} tok/s",
            f"ours/built-in {ratio:.2f}x",
            f"greedy tokens identical: {'yes' if identical else 'NO'}; max logit diff {difference:.1e}",
        ])  # fmt: skip
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    header = ["row", "throughput", "time / reference", "MFU / ratio", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU in seconds (the test's run)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per row")
    parser.add_argument("--samples", type=int, default=None, help="samples per training step")
    parser.add_argument("--pack-tokens", type=int, default=None, help="tokens per packed row")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda given but torch sees no CUDA device", file=sys.stderr)
        return 2
    dtype = torch.bfloat16
    load = workload(args)
    attention = attention_implementation(device)
    peak = peak_tflops(device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    started = time.perf_counter()

    builtin, ours = build_pair(load.sizes, device, dtype, attention)
    rows = inference_rows(builtin, ours, load, device, dtype)
    del builtin
    if device.type == "cuda":
        torch.cuda.empty_cache()

    configure_trainable_parameters(ours, stage=2)  # the tower frozen, the projector and the LLM train
    steps = load.warmup_steps + load.steps
    batches = [instruct_like_samples(load, load.samples_per_step, seed=step) for step in range(steps)]
    image_token_id = load.sizes.image_token_id
    padded = batching_collator(image_token_id)
    packed = batching_collator(image_token_id, packing_max_tokens=load.pack_tokens)
    training = [
        train_row("stage 2 padded", ours, padded, batches, load, device, peak),
        train_row(f"stage 2 packed ({load.pack_tokens} tokens/row)", ours, packed, batches, load, device, peak),
    ]
    parameters = sum(p.numel() for p in ours.parameters())
    print(
        f"gpu_check: {card}, torch {torch.__version__}, bf16, attention {attention}, {parameters / 1e6:,.1f}M "
        f"parameters, {load.samples_per_step} samples/step, {load.steps} timed steps after {load.warmup_steps}, "
        f"peak {'n/a' if peak is None else f'{peak:.0f} TFLOPS'}, {time.perf_counter() - started:.0f} s"
    )
    print()
    print(markdown_table(training + rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
