"""Benchmark our `LlavaForCausalLM` against transformers' built-in `LlavaForConditionalGeneration`.

Both models get identical weights (the built-in model is initialised at random, its state dict is copied into
ours with strict loading, and equal logits are asserted before anything is timed) and identical inputs (one
image + ~32 text tokens per prompt, left padded in batches). Measured, alternating between the two models in
the same run (interleaved repetitions, median reported):

* prefill latency: one forward over a batch-1 prompt with a KV cache, as `generate` does it;
* greedy generation: end-to-end tokens/s (prefill included) and decode-only tokens/s, batch 1 and batch 8;
* one training step: forward + backward (all parameters trainable; no optimizer, it is the same for both);
* peak memory: on CPU the peak resident set size of a fresh subprocess per model and workload (see
  `_memory_worker`); on CUDA the allocator's peak (`torch.cuda.max_memory_allocated`).

Every figure is printed with the ratio ours / built-in and which direction is better. This is a benchmark,
not a test: it asserts only that the two models compute the same thing.

Examples:
    python benchmarks/bench_model.py                  # full CPU run (CLIP ViT-L/14-336 + SmolLM2-135M shape)
    python benchmarks/bench_model.py --quick          # tiny shapes, a minute or two
    python benchmarks/bench_model.py --device cuda --dtype bf16 --text-size 1b   # on a GPU
    python benchmarks/bench_model.py --vision-size vit-b-16 --decode-only --compiled-decoding --new-tokens 64
        # batch-1 decode only: built-in default vs ours default vs ours with --compile (static cache + compile)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaForConditionalGeneration,
    LogitsProcessor,
    LogitsProcessorList,
)
from transformers import LlavaConfig as BuiltinLlavaConfig
from transformers.utils import logging as transformers_logging

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing it

from inference.settings import GenerationSettings
from modeling_llava import LlavaConfig, LlavaForCausalLM

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Max |logit difference| accepted between the two models before timing (same kernels, same weights).
LOGIT_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-2}
PAD_TOKEN_ID = 0
BOS_TOKEN_ID = 1

# Shapes. The vision presets follow CLIP ViT-L/14-336 (the LLaVA-1.5 encoder); the text presets follow
# SmolLM2-135M and Llama-3.2-1B. The image token is appended to the vocabulary (vocab + 1).
VISION_PRESETS: dict[str, dict[str, int]] = {
    "vit-l-336": {
        "vision_layers": 24,
        "vision_hidden": 1024,
        "vision_intermediate": 4096,
        "vision_heads": 16,
        "image_size": 336,
        "patch_size": 14,
    },
    "vit-b-16": {
        "vision_layers": 12,
        "vision_hidden": 768,
        "vision_intermediate": 3072,
        "vision_heads": 12,
        "image_size": 224,
        "patch_size": 16,
    },
    "tiny": {
        "vision_layers": 4,
        "vision_hidden": 256,
        "vision_intermediate": 1024,
        "vision_heads": 4,
        "image_size": 112,
        "patch_size": 14,
    },
}
TEXT_PRESETS: dict[str, dict[str, int]] = {
    "135m": {
        "text_layers": 30,
        "text_hidden": 576,
        "text_intermediate": 1536,
        "text_heads": 9,
        "text_kv_heads": 3,
        "vocab_size": 49152,
    },
    "1b": {
        "text_layers": 16,
        "text_hidden": 2048,
        "text_intermediate": 8192,
        "text_heads": 32,
        "text_kv_heads": 8,
        "vocab_size": 128256,
    },
    "tiny": {
        "text_layers": 4,
        "text_hidden": 256,
        "text_intermediate": 512,
        "text_heads": 4,
        "text_kv_heads": 2,
        "vocab_size": 8192,
    },
}
ROPE_THETA = {"135m": 100_000.0, "1b": 500_000.0, "tiny": 10_000.0}
SIZE_ARGUMENTS = (*VISION_PRESETS["tiny"], *TEXT_PRESETS["tiny"])


@dataclass
class Sizes:
    """Every shape the benchmark uses (presets overridden by explicit command-line sizes)."""

    vision_layers: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    image_size: int
    patch_size: int
    text_layers: int
    text_hidden: int
    text_intermediate: int
    text_heads: int
    text_kv_heads: int
    vocab_size: int
    rope_theta: float
    prompt_tokens: int
    new_tokens: int
    gen_batch: int
    train_batch: int

    @property
    def image_token_id(self) -> int:
        return self.vocab_size  # one past the text vocabulary

    @property
    def image_seq_length(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# --------------------------------------------------------------------------------------------------
# Models and inputs
# --------------------------------------------------------------------------------------------------
def _transformer_sizes(sizes: Sizes, part: str) -> dict[str, int]:
    """Width, MLP width, depth and heads of the `vision` or `text` transformer, as config keyword arguments."""
    names = {"hidden_size": "hidden", "intermediate_size": "intermediate", "num_hidden_layers": "layers", "num_attention_heads": "heads"}
    return {key: getattr(sizes, f"{part}_{name}") for key, name in names.items()}


def build_configs(sizes: Sizes) -> tuple[BuiltinLlavaConfig, LlavaConfig]:
    """The same architecture expressed as a built-in Llava config and as ours (mlp2x_gelu, layer -2, no CLS)."""
    vision_config = CLIPVisionConfig(
        **_transformer_sizes(sizes, "vision"),
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    text_config = LlamaConfig(
        **_transformer_sizes(sizes, "text"),
        num_key_value_heads=sizes.text_kv_heads,
        vocab_size=sizes.vocab_size + 1,
        max_position_embeddings=8192,
        rope_theta=sizes.rope_theta,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=2,
    )
    builtin = BuiltinLlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=sizes.image_token_id,
        image_seq_length=sizes.image_seq_length,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",  # drops CLS, as ours
    )
    ours = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=sizes.image_token_id,
        projector_type="mlp2x_gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    for config in (builtin, ours):
        config._attn_implementation = "sdpa"  # the default of both; pinned so the comparison cannot drift
    return builtin, ours


def build_models(
    sizes: Sizes, device: torch.device, dtype: torch.dtype, seed: int
) -> tuple[LlavaForConditionalGeneration, LlavaForCausalLM]:
    """A randomly initialised built-in model and ours holding exactly its weights (strict load)."""
    builtin_config, our_config = build_configs(sizes)
    torch.manual_seed(seed)
    with torch.device(device):
        builtin = LlavaForConditionalGeneration(builtin_config).to(dtype)
        ours = LlavaForCausalLM(our_config).to(dtype)
    ours.load_state_dict(builtin.state_dict(), strict=True)
    ours.tie_weights()
    return builtin.eval(), ours.eval()


def make_inputs(sizes: Sizes, batch: int, device: torch.device, dtype: torch.dtype, seed: int) -> dict:
    """`batch` prompts `[BOS] text… <image>×N text…`, left padded: the i-th is 2·i text tokens shorter."""
    generator = torch.Generator().manual_seed(seed)
    prompts: list[torch.Tensor] = []
    for index in range(batch):
        text_tokens = max(2, sizes.prompt_tokens - 2 * index)
        text = torch.randint(3, sizes.vocab_size, (text_tokens,), generator=generator)
        prefix = min(8, text_tokens // 2)  # a few words of instruction before the image, the rest after
        image = torch.full((sizes.image_seq_length,), sizes.image_token_id)
        prompts.append(torch.cat([torch.tensor([BOS_TOKEN_ID]), text[:prefix], image, text[prefix:]]))
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((batch, length), PAD_TOKEN_ID)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt) :] = prompt
        attention_mask[row, length - len(prompt) :] = 1
    pixel_values = torch.randn((batch, 3, sizes.image_size, sizes.image_size), generator=generator)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "pixel_values": pixel_values.to(device, dtype),
    }


def training_labels(inputs: dict, image_token_id: int) -> torch.Tensor:
    """Supervise every real text token (not padding, not image tokens), as a collator would."""
    labels = inputs["input_ids"].clone()
    labels[(inputs["attention_mask"] == 0) | (labels == image_token_id)] = -100
    return labels


@torch.inference_mode()
def assert_same_logits(builtin: torch.nn.Module, ours: torch.nn.Module, inputs: dict, tolerance: float) -> float:
    """Full logits of both models on a left-padded batch must agree; returns the max |difference|."""
    expected = builtin(**inputs).logits.float()
    actual = ours(**inputs).logits.float()
    real = inputs["attention_mask"].bool()  # padded positions are masked out and carry no meaning
    difference = (expected - actual)[real].abs().max().item()
    if not difference <= tolerance:
        raise AssertionError(f"Logits differ by {difference:.3g} (> {tolerance}): the models are not equivalent.")
    return difference


# --------------------------------------------------------------------------------------------------
# Workloads (each returns its measurements; all synchronise the device before reading the clock)
# --------------------------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _FirstTokenClock(LogitsProcessor):
    """Records when the first logits arrive, i.e. when prefill ends, so decode speed can be separated."""

    def __init__(self, device: torch.device):
        self.device = device
        self.first_call: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first_call is None:
            _synchronize(self.device)
            self.first_call = time.perf_counter()
        return scores


@torch.inference_mode()
def run_prefill(model: torch.nn.Module, inputs: dict, device: torch.device) -> dict[str, float]:
    """One cached forward over the prompt, keeping only the last logits (what `generate` does first)."""
    _synchronize(device)
    start = time.perf_counter()
    model(**inputs, use_cache=True, logits_to_keep=1)
    _synchronize(device)
    return {"prefill_s": time.perf_counter() - start}


@torch.inference_mode()
def run_generate(
    model: torch.nn.Module, inputs: dict, new_tokens: int, device: torch.device, **generate_kwargs
) -> dict:
    """Greedy generation of exactly `new_tokens` tokens per row (EOS suppressed until then); `generate_kwargs`
    select another generation path (e.g. the inference layer's compiled decoding)."""
    clock = _FirstTokenClock(device)
    _synchronize(device)
    start = time.perf_counter()
    output = model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=PAD_TOKEN_ID,
        logits_processor=LogitsProcessorList([clock]),
        **generate_kwargs,
    )
    _synchronize(device)
    end = time.perf_counter()
    batch = inputs["input_ids"].shape[0]
    generated = output[:, inputs["input_ids"].shape[1] :]
    return {
        "tokens_per_s": batch * new_tokens / (end - start),
        "decode_tokens_per_s": batch * (new_tokens - 1) / (end - clock.first_call),
        "total_s": end - start,
        "tokens": generated.cpu(),
    }


def run_train_step(model: torch.nn.Module, inputs: dict, labels: torch.Tensor, device: torch.device) -> dict:
    """Forward with labels + backward over all parameters; gradients are dropped afterwards."""
    model.train()
    _synchronize(device)
    start = time.perf_counter()
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    _synchronize(device)
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.eval()
    return {"train_step_s": elapsed, "loss": loss.item()}


# --------------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------------
def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux `clear_refs` 5) so the load peak is not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _memory_worker(arguments: list[str]) -> None:
    """Subprocess entry: load one model, run one workload once, print peak RSS as JSON.

    Why RSS of a fresh process: torch allocates tensors in C++ (tracemalloc sees none of it) and the CPU
    allocator keeps no peak statistics; the profiler's memory view records allocator events with large
    overhead and misses oneDNN scratch space. The process's resident set is what a user's machine pays.
    A fresh process per model and workload keeps one run's cached pages out of the other's figure.
    """
    kind, model_dir, inputs_path, workload, new_tokens, threads = arguments
    torch.set_num_threads(int(threads))
    model_class = LlavaForConditionalGeneration if kind == "builtin" else LlavaForCausalLM
    model = model_class.from_pretrained(model_dir, dtype=torch.float32).eval()
    data = torch.load(inputs_path, weights_only=True)
    inputs, labels = data[workload], data.get("labels")
    gc.collect()
    loaded_kib = _read_status_kib("VmRSS")
    reset = _reset_peak_rss()
    device = torch.device("cpu")
    if workload == "prefill":
        run_prefill(model, inputs, device)
    elif workload == "generate":
        run_generate(model, inputs, int(new_tokens), device)
    else:
        run_train_step(model, inputs, labels, device)
    peak_kib = _read_status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"loaded_mib": loaded_kib / 1024, "peak_mib": peak_kib / 1024, "peak_reset": reset}))


def measure_cpu_memory(
    builtin: torch.nn.Module, ours: torch.nn.Module, workloads: dict[str, dict], labels: torch.Tensor, args
) -> dict[str, dict[str, dict]]:
    """Peak RSS per model and workload, each in its own subprocess, alternating the two models."""
    results: dict[str, dict[str, dict]] = {"builtin": {}, "ours": {}}
    with tempfile.TemporaryDirectory(prefix="bench_llava_") as tmp:
        directories = {"builtin": os.path.join(tmp, "builtin"), "ours": os.path.join(tmp, "ours")}
        builtin.save_pretrained(directories["builtin"])
        ours.save_pretrained(directories["ours"])
        inputs_path = os.path.join(tmp, "inputs.pt")
        torch.save({**{name: inputs for name, inputs in workloads.items()}, "labels": labels}, inputs_path)
        for workload in workloads:
            for kind in ("builtin", "ours"):
                command = [
                    sys.executable, __file__, "--_memory-worker",
                    kind, directories[kind], inputs_path, workload, str(args.new_tokens), str(args.threads),
                ]  # fmt: skip
                completed = subprocess.run(command, capture_output=True, text=True, check=False)
                if completed.returncode != 0:
                    raise RuntimeError(f"memory worker {kind}/{workload} failed:\n{completed.stderr[-4000:]}")
                results[kind][workload] = json.loads(completed.stdout.strip().splitlines()[-1])
    return results


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 8 new tokens: a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: memory is the allocator's peak)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and activations dtype")
    parser.add_argument(
        "--text-size", choices=["135m", "1b"], default=None,
        help="language-model shape: SmolLM2-135M (default) or Llama-3.2-1B; --quick uses a tiny one",
    )  # fmt: skip
    parser.add_argument("--vision-size", choices=sorted(VISION_PRESETS), default=None, help="vision shape preset")
    for name in SIZE_ARGUMENTS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=f"override the preset's {name}")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="text tokens per prompt besides the image")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens to generate (32; --quick: 8)")
    parser.add_argument("--gen-batch", type=int, default=8, help="batch size of the batched generation")
    parser.add_argument("--train-batch", type=int, default=1, help="batch size of the training step")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions per measurement (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--decode-only", action="store_true", help="measure only batch-1 generation (no memory)")
    parser.add_argument(
        "--compiled-decoding", action="store_true",
        help="also time ours with the inference layer's --compile (static cache + torch.compile) against the "
        "built-in's default, side by side; the first (compiling) call is reported separately",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch sees no CUDA device")
    if args.new_tokens is None:
        args.new_tokens = 8 if args.quick else 32
    if args.decode_only:
        args.skip_memory = True
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (decode speed needs a token after the first)")
    return args


def resolve_sizes(args: argparse.Namespace) -> Sizes:
    vision_preset = args.vision_size or ("tiny" if args.quick else "vit-l-336")
    text_preset = args.text_size or ("tiny" if args.quick else "135m")
    shapes = {**VISION_PRESETS[vision_preset], **TEXT_PRESETS[text_preset]}
    shapes.update({name: getattr(args, name) for name in SIZE_ARGUMENTS if getattr(args, name) is not None})
    return Sizes(
        **shapes,
        rope_theta=ROPE_THETA[text_preset],
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        gen_batch=args.gen_batch,
        train_batch=args.train_batch,
    )


@dataclass
class Row:
    name: str
    builtin: list[float]
    ours: list[float]
    unit: str
    higher_is_better: bool

    def format(self) -> str:
        builtin, ours = statistics.median(self.builtin), statistics.median(self.ours)
        ratio = ours / builtin
        better = ratio > 1 if self.higher_is_better else ratio < 1
        verdict = "ours better" if better else ("equal" if ratio == 1 else "OURS WORSE")
        direction = "higher" if self.higher_is_better else "lower"
        spread = f"{min(self.builtin):.3g}-{max(self.builtin):.3g} / {min(self.ours):.3g}-{max(self.ours):.3g}"
        return (
            f"{self.name:<30} {builtin:>10.3f} {ours:>10.3f} {self.unit:<8} {ratio:>7.3f}  "
            f"{direction + ' better':<14} {verdict:<11} [{spread}]"
        )


def interleaved(
    reps: int, measure: Callable[[str], dict], keys: list[str]
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[dict]]:
    """Run `measure("builtin")` and `measure("ours")` alternately; the first mover swaps every repetition."""
    values: dict[str, dict[str, list[float]]] = {"builtin": {k: [] for k in keys}, "ours": {k: [] for k in keys}}
    last: list[dict] = []
    started = time.perf_counter()
    for rep in range(reps):
        order = ("builtin", "ours") if rep % 2 == 0 else ("ours", "builtin")
        results = {}
        for kind in order:
            gc.collect()
            results[kind] = measure(kind)
            for key in keys:
                values[kind][key].append(results[kind][key])
        last = [results["builtin"], results["ours"]]
        print(
            f"  ... repetition {rep + 1}/{reps} done ({time.perf_counter() - started:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
    return values["builtin"], values["ours"], last


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_memory-worker":
        _memory_worker(sys.argv[2:])
        return 0
    args = parse_args(argv)
    sizes = resolve_sizes(args)
    transformers_logging.disable_progress_bar()  # save_pretrained's shard bars would clutter the report
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}, dtype {args.dtype}")
    if device.type == "cuda":
        print(f"# card: {torch.cuda.get_device_name(device)}")
    print(f"# sizes: {json.dumps(asdict(sizes))}")
    build_start = time.perf_counter()
    builtin, ours = build_models(sizes, device, dtype, args.seed)
    parameters = sum(p.numel() for p in builtin.parameters())
    print(f"# {parameters / 1e6:.1f}M parameters; built in {time.perf_counter() - build_start:.1f}s")
    print(
        f"# vision layers run: built-in {sizes.vision_layers}, ours {ours.model.vision_layers_used()}; "
        f"image tokens per prompt: {sizes.image_seq_length}"
    )

    prefill_inputs = make_inputs(sizes, 1, device, dtype, args.seed + 1)
    generate_inputs = make_inputs(sizes, args.gen_batch, device, dtype, args.seed + 2)
    train_inputs = make_inputs(sizes, args.train_batch, device, dtype, args.seed + 3)
    train_labels = training_labels(train_inputs, sizes.image_token_id)
    check_inputs = make_inputs(sizes, 2, device, dtype, args.seed + 4)
    difference = assert_same_logits(builtin, ours, check_inputs, LOGIT_TOLERANCE[args.dtype])
    print(f"# equivalence: max |logit difference| on a left-padded batch of 2 = {difference:.2e} (checked)")

    models = {"builtin": builtin, "ours": ours}
    rows: list[Row] = []

    def prefill(kind: str) -> dict:
        return run_prefill(models[kind], prefill_inputs, device)

    def generate(batch_inputs: dict) -> Callable[[str], dict]:
        return lambda kind: run_generate(models[kind], batch_inputs, args.new_tokens, device)

    def train(kind: str) -> dict:
        return run_train_step(models[kind], train_inputs, train_labels, device)

    # One untimed pass of every workload per model first (allocator, oneDNN and kernel warm-up).
    warm_start = time.perf_counter()
    interleaved(1, generate(prefill_inputs), [])
    if not args.decode_only:
        interleaved(1, prefill, [])
        interleaved(1, train, [])
    print(f"# warm-up done in {time.perf_counter() - warm_start:.1f}s; timing {args.reps} interleaved repetitions")

    if not args.decode_only:
        builtin_values, our_values, _ = interleaved(args.reps, prefill, ["prefill_s"])
        rows.append(Row("prefill latency (batch 1)", builtin_values["prefill_s"], our_values["prefill_s"], "s", False))

    identical: dict[int | str, bool] = {}
    generation_batches = ((1, prefill_inputs),) if args.decode_only else ((1, prefill_inputs), (args.gen_batch, generate_inputs))
    for batch, batch_inputs in generation_batches:
        keys = ["tokens_per_s", "decode_tokens_per_s"]
        builtin_values, our_values, last = interleaved(args.reps, generate(batch_inputs), keys)
        identical[batch] = torch.equal(last[0]["tokens"], last[1]["tokens"])
        rows.append(Row(f"generate tok/s (batch {batch})", builtin_values[keys[0]], our_values[keys[0]], "tok/s", True))
        rows.append(
            Row(f"  decode-only tok/s (batch {batch})", builtin_values[keys[1]], our_values[keys[1]], "tok/s", True)
        )

    if args.compiled_decoding:
        # Ours through the inference layer's compiled path (on CPU with eager attention, restored afterwards for
        # the training step); the built-in keeps its default (dynamic cache, sdpa, not compiled).
        settings = GenerationSettings(compile=True)
        attention = ours.config._attn_implementation
        settings.prepare_model(ours)
        compiled = settings.generate_kwargs()
        compiled.pop("max_new_tokens"), compiled.pop("num_beams"), compiled.pop("do_sample")

        def generate_compiled(kind: str) -> dict:
            extra = compiled if kind == "ours" else {}
            return run_generate(models[kind], prefill_inputs, args.new_tokens, device, **extra)

        first = run_generate(ours, prefill_inputs, args.new_tokens, device, **compiled)
        print(f"# compiled decoding: first call (compiles) {first['total_s']:.1f}s for {args.new_tokens} tokens")
        keys = ["tokens_per_s", "decode_tokens_per_s"]
        builtin_values, our_values, last = interleaved(args.reps, generate_compiled, keys)
        identical["1, ours compiled"] = torch.equal(last[0]["tokens"], last[1]["tokens"])
        rows.append(Row("generate tok/s (b1, compiled)", builtin_values[keys[0]], our_values[keys[0]], "tok/s", True))
        rows.append(
            Row("  decode-only tok/s (b1, compiled)", builtin_values[keys[1]], our_values[keys[1]], "tok/s", True)
        )
        ours.set_attn_implementation(attention)

    if not args.decode_only:
        builtin_values, our_values, last = interleaved(args.reps, train, ["train_step_s", "loss"])
        rows.append(
            Row(
                f"train step fwd+bwd (batch {args.train_batch})",
                builtin_values["train_step_s"],
                our_values["train_step_s"],
                "s",
                False,
            )
        )

    workloads = {"prefill": prefill_inputs, "generate": generate_inputs, "train": train_inputs}
    workload_names = {
        "prefill": "prefill b1",
        "generate": f"generate b{args.gen_batch}",
        "train": f"train b{args.train_batch}",
    }
    memory_note = ""
    if args.skip_memory:
        memory_note = "# memory: skipped (--skip-memory or --decode-only)"
    elif device.type == "cuda":
        memory_note = "# memory: CUDA allocator peak (torch.cuda.max_memory_allocated), weights included"
        for workload, inputs in workloads.items():
            peaks = {}
            for kind in ("builtin", "ours"):
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                if workload == "prefill":
                    run_prefill(models[kind], inputs, device)
                elif workload == "generate":
                    run_generate(models[kind], inputs, args.new_tokens, device)
                else:
                    run_train_step(models[kind], inputs, train_labels, device)
                peaks[kind] = torch.cuda.max_memory_allocated(device) / 2**20
            rows.append(
                Row(f"peak memory {workload_names[workload]}", [peaks["builtin"]], [peaks["ours"]], "MiB", False)
            )
    else:
        if dtype != torch.float32:
            print("# note: CPU memory workers load the models in fp32")
        memory = measure_cpu_memory(builtin, ours, workloads, train_labels, args)
        reset = all(result["peak_reset"] for kind in memory.values() for result in kind.values())
        memory_note = (
            "# memory: peak RSS of a fresh process per model and workload; 'above load' = peak minus RSS after "
            "loading the weights" + ("" if reset else " (peak mark could not be reset: peaks include loading)")
        )
        for workload in workloads:
            b, o = memory["builtin"][workload], memory["ours"][workload]
            name = workload_names[workload]
            rows.append(Row(f"peak RSS {name}", [b["peak_mib"]], [o["peak_mib"]], "MiB", False))
            rows.append(
                Row(
                    f"  above load {name}",
                    [b["peak_mib"] - b["loaded_mib"]],
                    [o["peak_mib"] - o["loaded_mib"]],
                    "MiB",
                    False,
                )
            )

    print()
    print(
        f"{'metric':<30} {'built-in':>10} {'ours':>10} {'unit':<8} {'ratio':>7}  {'(ours/built-in)':<26} [min-max built-in / ours]"
    )
    for row in rows:
        print(row.format())
    print(memory_note)
    print(
        "# greedy tokens identical: "
        + ", ".join(f"batch {batch}: {'yes' if same else 'NO'}" for batch, same in identical.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
