"""Generation settings: one dataclass for every command that generates, and the argparse group that fills it.

Greedy decoding by default (temperature 0), as in the paper's evaluation scripts. Commands differ only in
the default answer length (a chat answer may run longer than an evaluation answer) and in whether beam search
and batching apply (a streamed chat answer is one sequence: no beams, no batch).

`compile` selects transformers' compiled decoding: a static KV cache (`cache_implementation="static"`) and
`generate`'s own `torch.compile` of the decode step (`CompileConfig`), with the model attending eagerly on CPU
(`GenerationSettings.prepare_model`). Greedy tokens are the same either way (tests/test_compiled_decoding.py). It
is off by default: its first call compiles (~1.5 min with a cold inductor cache on the 2-core CPU measured), which
a short chat or a few answers never earn back (docs/benchmarks.md, "Compiled decoding"); no GPU figure exists yet.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

#: Default answer length of batched answering and evaluation.
ANSWER_MAX_NEW_TOKENS = 256
#: Default answer length of a chat turn (terminal chat, web demo).
CHAT_MAX_NEW_TOKENS = 512
DEFAULT_BATCH_SIZE = 8


@dataclass
class GenerationSettings:
    """How answers are generated: length, sampling (temperature 0 = greedy) and beam width."""

    max_new_tokens: int = ANSWER_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    compile: bool = False

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `model.generate` (top_p only applies when sampling)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if self.compile:
            kwargs.update(compiled_decoding_kwargs())
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            kwargs["do_sample"] = False
        return kwargs

    def prepare_model(self, model: Any) -> None:
        """What these settings need set on the model before `generate`: compiled decoding on CPU attends with the
        eager kernels (matmul + softmax, which inductor fuses into the decode graph): for a one-token query sdpa's
        CPU kernel costs more than it saves (docs/benchmarks.md, "Compiled decoding"). Prefill and greedy tokens
        are unaffected; the switch stays on the model."""
        if self.compile and model.device.type == "cpu" and model.config._attn_implementation != "eager":
            model.set_attn_implementation("eager")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerationSettings:
        """The settings an `add_generation_arguments` group parsed (`--num-beams` only where offered)."""
        return cls(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            num_beams=getattr(args, "num_beams", 1),
            compile=getattr(args, "compile", False),
        )


def compiled_decoding_kwargs() -> dict[str, Any]:
    """`generate` arguments for a static KV cache with the decode step compiled by `generate` itself.

    transformers compiles automatically only on accelerators (cuda, xpu, ...); `_compile_all_devices` is its
    switch for compiling on CPU too. Inductor's default mode ("reduce-overhead" means CUDA graphs, which CPUs
    lack), with two options that cut the per-token overhead around the ~200 matrix-vector products of a decode
    step: the graph's wrapper in C++ instead of Python (`cpp_wrapper`, a longer first compile), and no guards on
    the attributes of torch.nn's own modules (Linear, Embedding), which decoding never changes; the model's own
    modules stay guarded (e.g. `training`).
    """
    import torch
    from transformers import CompileConfig

    compile_config = CompileConfig(
        mode=None,  # inductor's default; torch.compile takes a mode or options, not both
        options={
            "cpp_wrapper": True,
            "guard_filter_fn": torch.compiler.skip_guard_on_inbuilt_nn_modules_unsafe,
        },
    )
    compile_config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": compile_config}


def add_generation_arguments(
    parser: argparse.ArgumentParser,
    *,
    max_new_tokens: int = ANSWER_MAX_NEW_TOKENS,
    batched: bool = True,
) -> None:
    """The `generation` option group: --max-new-tokens, --temperature, --top-p, and for batched commands
    --num-beams and --batch-size (streamed chat answers are one sequence each)."""
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                       help=f"most tokens generated per answer (default {max_new_tokens})")
    group.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (only with --temperature > 0)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                       help="static KV cache + torch.compile of the decode step; same greedy tokens, a slow first "
                            "call (default off: docs/benchmarks.md, \"Compiled decoding\")")
    if batched:
        group.add_argument("--num-beams", type=int, default=1, help="beam search width (default 1 = no beam search)")
        group.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                           help=f"questions per generate call, left-padded (default {DEFAULT_BATCH_SIZE})")
