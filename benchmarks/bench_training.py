"""Training throughput: our `LlavaForCausalLM` against transformers' built-in `LlavaForConditionalGeneration`,
trained the same way (same weights, data, collator, TRL `SFTTrainer`, stage freezing), in one run so that the
ratio is meaningful on a shared, noisy machine. Also stage 1 with the feature cache (after it is filled).

    python benchmarks/bench_training.py [--steps 4] [--warmup 2] [--rounds 5] [--threads 2]

Prints samples/s and tokens/s per stage and model, and the ratios. The models are small random ones (offline);
the vision tower has enough layers for the paper's `vision_feature_layer=-2` to matter: ours never runs the last
layer, the built-in model does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaForConditionalGeneration, TrainerCallback


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from modeling_llava import LlavaConfig, LlavaForCausalLM  # noqa: E402
from modeling_llava.convert import config_to_llava_hf, state_dict_to_llava_hf  # noqa: E402
from processing import LlavaProcessor  # noqa: E402
from processing.llava_data import load_llava_dataset, to_trl_dataset  # noqa: E402
from processing.templates import get_chat_template  # noqa: E402
from training.arguments import LlavaSFTConfig  # noqa: E402
from training.collators import stage1_collator, stage2_collator  # noqa: E402
from training.feature_cache import attach_feature_cache  # noqa: E402
from training.trainer import LlavaSFTTrainer, configure_trainable_parameters  # noqa: E402
from training_fixtures import (  # noqa: E402
    TINY_IMAGE_TOKEN_ID,
    caption_records,
    chat_records,
    tiny_tokenizer,
    write_dataset,
    write_images,
)

IMAGE_SIZE, PATCH = 112, 14


def bench_config() -> LlavaConfig:
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH)
    text = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=128, max_position_embeddings=1024, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=TINY_IMAGE_TOKEN_ID,
                       projector_type="mlp2x_gelu")


def make_processor(config: LlavaConfig) -> LlavaProcessor:
    from transformers import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer(),
                          chat_template=get_chat_template("chatml"), image_seq_length=config.image_seq_length)


class Timer(TrainerCallback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        elif state.global_step > self.warmup:
            self.steps += 1

    def on_train_end(self, args, state, control, **kwargs):
        self.elapsed = time.perf_counter() - self.start


class TokenCounter:
    """Wraps a collator and records the number of real tokens of each batch."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, []

    def __call__(self, examples):
        batch = self.collator(examples)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


def measure(model, processor, collator, dataset, stage: int, batch_size: int, steps: int, warmup: int, out: Path):
    configure_trainable_parameters(model, stage=stage)
    counter, timer = TokenCounter(collator), Timer(warmup)
    args = LlavaSFTConfig(output_dir=str(out), max_steps=warmup + steps, per_device_train_batch_size=batch_size,
                          learning_rate=1e-4, report_to="none", save_strategy="no", logging_steps=1000,
                          activation_checkpointing=False, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = LlavaSFTTrainer(model=model, args=args, data_collator=counter, train_dataset=dataset,
                              processing_class=processor, callbacks=[timer])
    trainer.train()
    tokens = sum(counter.tokens[warmup : warmup + steps])
    return {"samples_per_s": steps * batch_size / timer.elapsed, "tokens_per_s": tokens / timer.elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before the clock starts")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=5,
                        help="each configuration is measured this many times, interleaved; the best round counts "
                        "(other jobs on a shared machine only ever slow a round down)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench_training_"))
    paths = write_images(work / "images")
    write_dataset(work / "captions.json", caption_records(paths, repeats=40))
    write_dataset(work / "chats.json", chat_records(paths, repeats=30))
    config = bench_config()
    processor = make_processor(config)

    def dataset(name):
        return to_trl_dataset(load_llava_dataset(work / name, work / "images"), work / "images")

    torch.manual_seed(0)
    reference = LlavaForCausalLM(config)
    hf_state = state_dict_to_llava_hf(reference.state_dict(), config)

    def ours():
        model = LlavaForCausalLM(config)
        model.load_state_dict(reference.state_dict())
        return model

    def builtin():
        model = LlavaForConditionalGeneration(config_to_llava_hf(config))
        model.load_state_dict(hf_state)
        return model

    stages = {
        "stage 1 (projector only)": (1, 8, lambda: stage1_collator(processor, max_length=1024), "captions.json"),
        "stage 2 (projector + LLM)": (2, 4, lambda: stage2_collator(processor, max_length=1024), "chats.json"),
    }
    def cached_model():
        model = ours()
        configure_trainable_parameters(model, stage=1)
        collator = attach_feature_cache(stage1_collator(processor, max_length=1024), model, work / "cache")
        collator.prefill(dataset("captions.json"))  # the first epoch's work; later epochs only read
        return model, collator

    runs = []  # (stage label, model name, builder returning (model, collator), stage, batch, data)
    for label, (stage, batch, make_collator, data) in stages.items():
        for name, build in (("ours", ours), ("built-in", builtin)):
            runs.append((label, name, lambda b=build, m=make_collator: (b(), m()), stage, batch, data))
    runs.append(("stage 1 (projector only)", "ours + feature cache", cached_model, 1, 8, "captions.json"))
    results: dict = {}
    for _ in range(args.rounds):
        for label, name, build, stage, batch, data in runs:
            model, collator = build()
            values = measure(model, processor, collator, dataset(data), stage, batch, args.steps, args.warmup,
                             work / "out")
            best = results.get((label, name))
            if best is None or values["samples_per_s"] > best["samples_per_s"]:
                results[(label, name)] = values

    print(f"torch {torch.__version__}, {args.threads} threads, best of {args.rounds} interleaved rounds of "
          f"{args.steps} steps after {args.warmup} warm-up steps")
    print(f"vision: CLIP {IMAGE_SIZE}px/{PATCH}, 6 layers, width 256, {config.image_seq_length} image tokens, "
          "features from layer -2; LLM: Llama 4 layers, width 256")
    print(f"{'configuration':28s} {'model':22s} {'samples/s':>10s} {'tokens/s':>10s} {'vs built-in':>12s}")
    for (label, name), values in results.items():
        ratio = values["samples_per_s"] / results[(label, "built-in")]["samples_per_s"]
        print(f"{label:28s} {name:22s} {values['samples_per_s']:10.2f} {values['tokens_per_s']:10.0f} {ratio:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
