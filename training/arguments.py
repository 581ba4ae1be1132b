"""Arguments of `llava train`: the LLaVA-specific script arguments plus TRL's `SFTConfig`.

Both are dataclasses read by `TrlParser` from a YAML file (`--config`) with command-line overrides, or by
`training.train.run(config_dict)` in-process; every field's `help` is what `llava train --help` prints.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from dataclasses import dataclass, field, fields

import torch
import yaml
from trl import SFTConfig, TrlParser

from modeling_llava.modeling_llava import LORA_TARGET_MODULES as LLM_LORA_TARGETS

from .config_types import check_value_types
from .stages import StagePlan


class ConfigError(ValueError):
    """A training configuration names an unknown option or gives one a value it cannot take."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (transformers' argument checks write several)."""
    return " ".join(str(error).split()) or type(error).__name__


def check_choices(arguments) -> None:
    """Refuse a field whose value is not among its `choices`: argparse checks flags, but values from a YAML file or
    a config dict become the parser's defaults and are never checked against them."""
    for spec in fields(arguments):
        choices = spec.metadata.get("choices")
        value = getattr(arguments, spec.name)
        if choices is not None and value not in choices:
            raise ConfigError(f"{spec.name}: {value!r} is not one of {', '.join(map(str, choices))}")


class LlavaTrainParser(TrlParser):
    """TRL's parser, refusing unknown config keys with the nearest valid name (TRL's own error lists every unknown
    key but suggests nothing, and `parse_dict` raises HfArgumentParser's message with no hint either)."""

    def check_keys(self, config: dict, source: str) -> None:
        known = {spec.name for dataclass_type in self.dataclass_types for spec in fields(dataclass_type)}
        for key in config:
            if key in known or key == "env":
                continue
            nearest = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {nearest[0]!r}?)" if nearest else ""
            raise ConfigError(f"{source}: unknown option {key!r}{hint}")

    def check_config(self, config: dict, source: str) -> None:
        self.check_keys(config, source)
        check_value_types(self.dataclass_types, config, source, ConfigError)

    def parse_args_and_config(self, args=None, *rest, **kwargs):
        args = list(sys.argv[1:] if args is None else args)
        source = args[args.index("--config") + 1] if "--config" in args[:-1] else "config file"
        self._config_source = source
        try:
            return super().parse_args_and_config(args, *rest, **kwargs)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{source}: not valid YAML: {error.problem or error.context}{where}") from error
        except UnicodeDecodeError as error:
            raise ConfigError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from error
        except (ConfigError, OSError):
            raise
        except (ValueError, TypeError, AttributeError, ArithmeticError, ImportError, yaml.YAMLError) as error:
            # Raised by the dataclasses' own checks (TrainingArguments.__post_init__ and friends) on values that
            # passed the type check: the config is the only input at this point, so it is a config error.
            raise ConfigError(f"{source}: {one_line(error)}") from error

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        self.check_config(kwargs, getattr(self, "_config_source", "config file"))
        return super().set_defaults_with_config(**kwargs)

    def error(self, message: str):
        # argparse prints the whole usage first: for the hundreds of TrainingArguments options, a page that buries
        # the one line saying what is wrong.
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists every option)\n")

    def parse_dict(self, args: dict, allow_extra_keys: bool = False):
        if not allow_extra_keys:
            self.check_keys(args, "config")
        check_value_types(self.dataclass_types, args, "config", ConfigError)
        try:
            return super().parse_dict(args, allow_extra_keys=allow_extra_keys)
        except ConfigError:
            raise
        except (ValueError, TypeError, AttributeError, ArithmeticError, ImportError) as error:
            raise ConfigError(f"config: {one_line(error)}") from error


@dataclass
class LlavaTrainArguments:
    """What to train, on which data, and which parts of the model learn."""

    stage: int = field(
        default=2,
        metadata={
            "choices": [1, 2],
            "help": "1: feature alignment (vision tower and LLM frozen, only the projector trains, `plain` template, "
            "caption data). 2: visual instruction tuning (projector + LLM, or LoRA on the LLM; multi-turn chats)."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A saved LLaVA folder (this project's format, e.g. `llava build` output or a stage-1 output) "
            "with its processor. Leave unset to assemble a new model from --vision_tower and --language_model."
        },
    )
    vision_tower: str | None = field(
        default=None,
        metadata={"help": "CLIP/SigLIP checkpoint to build a new model from (e.g. openai/clip-vit-large-patch14)."},
    )
    language_model: str | None = field(
        default=None,
        metadata={"help": "Causal-LM checkpoint (folder, Hub id or .gguf file) to build a new model from."},
    )
    projector_type: str = field(
        default="linear",
        metadata={"help": "Projector of a newly built model: linear (paper), mlp2x_gelu (LLaVA-1.5), mlpNx_gelu."},
    )
    vision_feature_layer: int = field(
        default=-2, metadata={"help": "Vision hidden state used as image features in a newly built model (-2: paper)."}
    )
    image_aspect_mode: str = field(
        default="resize",
        metadata={
            "choices": ["resize", "pad"],"help": "Image preprocessing of a newly built model: resize (paper) or pad (LLaVA-1.5)."},
    )
    projector_path: str | None = field(
        default=None,
        metadata={
            "help": "A stage-1 `mm_projector.safetensors` (original key names, or ours) loaded into the model's "
            "projector before training: how stage 2 starts from a projector-only stage-1 artifact."
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "choices": ["float32", "bfloat16", "float16", "auto"],"help": "dtype the weights are loaded in: float32, bfloat16, float16 or auto (the checkpoint's)."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel of the whole model (vision tower and LLM): sdpa, eager, flash_attention_2, ... "
            "Default: the checkpoint's (sdpa). On CPU with short sequences eager is faster, as sdpa's CPU "
            "flash-attention backward dominates there (docs/benchmarks.md, offline demo, eager attention)."
        },
    )
    data_path: str | None = field(
        default=None, metadata={"help": "Training data: a LLaVA JSON/JSONL file (id, image, conversations)."}
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Folder the samples' image paths are relative to."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Conversation format: paper, vicuna_v1, llama2, chatml, own (the LLM's own) or plain. Default: "
            "plain for stage 1, the processor's own template for stage 2."
        },
    )
    image_first_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Eq. (2) of the paper: put the first turn's image before the question with this probability "
            "(after it otherwise), drawn per sample from the seed. Unset: keep the data's placement."
        },
    )
    on_bad_data: str = field(
        default="error",
        metadata={
            "choices": ["error", "skip"],
            "help": "What to do with samples that fail the checks before training (malformed, missing or unreadable "
            "images, longer than max_length, nothing to learn): `error` refuses to start and prints the report; "
            "`skip` leaves them out and writes the report to OUTPUT_DIR/skipped_samples.json. Never truncated."
        },
    )
    decode_images: bool = field(
        default=True,
        metadata={"help": "Decode every image before training (finds corrupt files); false only checks they exist."},
    )
    freeze_vision_tower: bool = field(
        default=True, metadata={"help": "Keep the vision tower frozen (paper: always). Stage 2 only; stage 1 freezes it."}
    )
    freeze_language_model: bool | None = field(
        default=None,
        metadata={"help": "Freeze the LLM. Default: frozen in stage 1, trained in stage 2 (full, or LoRA with --use_peft)."},
    )
    projector_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the projector's own optimizer group (default: --learning_rate)."},
    )
    vision_tower_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the vision tower's own optimizer group when --freeze_vision_tower false "
                  "(default: --learning_rate)."},
    )
    use_peft: bool = field(default=False, metadata={"help": "Train the LLM through LoRA adapters (PEFT) instead of fully."})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank (LLaVA-1.5 LoRA: 128)."})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha (LLaVA-1.5 LoRA: 256)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=LLM_LORA_TARGETS,
        metadata={"help": "Regex of the modules that get LoRA adapters (default: the LLM's attention and MLP only)."},
    )
    merge_lora: bool = field(
        default=True,
        metadata={"help": "After a LoRA run, also write OUTPUT_DIR/merged: adapters merged, remote code and processor kept."},
    )
    group_by_modality_length: bool = field(
        default=False,
        metadata={
            "help": "Batch image samples and text-only samples separately, with similar lengths together "
            "(less padding, and no mixed batches)."
        },
    )
    length_megabatch_mult: int = field(
        default=1,
        metadata={
            "help": "With group_by_modality_length: how many global batches of shuffled samples are sorted by "
            "length together. 1 (the original LLaVA) only balances lengths across ranks; more gives each batch "
            "samples of similar length, hence less padding (transformers' LengthGroupedSampler uses up to 50)."
        },
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Stage 1 only: cache the frozen vision tower's features here (safetensors, keyed by image "
            "content and vision config) and train from them instead of running the tower every epoch."
        },
    )

    def __post_init__(self):
        """Check the options against each other and derive the stage's plan (`self.plan`, a `StagePlan`)."""
        check_choices(self)
        self.plan = StagePlan.for_stage(
            self.stage,
            freeze_vision_tower=self.freeze_vision_tower,
            freeze_language_model=True if self.use_peft else self.freeze_language_model,
            use_lora=self.use_peft,
            chat_template=self.chat_template,
            feature_cache_dir=self.feature_cache_dir,
        )


def _has_accelerator() -> bool:
    """Whether torch sees an accelerator (CUDA, XPU, MPS, ...): the DataLoader's own test for pinning memory."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def _accelerator_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), where bf16 autocast trains much faster than
    float32 (docs/benchmarks.md, offline demo). Not a default: CPU runs stay float32 unless a config asks
    (`bf16: true` with `use_cpu: true`), so results do not depend on the CPU model."""
    return getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False
    )()


@dataclass
class LlavaSFTConfig(SFTConfig):
    """TRL's `SFTConfig` with defaults that suit LLaVA training on any hardware.

    - `bf16`: unset means "where the hardware has it" (TRL's default, True, fails on CPUs).
    - `remove_unused_columns`: False, so the collator sees the sample ids it names in its reports.
    - `report_to`: TensorBoard (and W&B when installed).
    """

    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. Unset: on when the accelerator supports it (Ampere+ GPUs), else off."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep every dataset column for the collator (it needs `id`, `images`, `messages`)."},
    )
    report_to: None | str | list[str] = field(
        default="auto",
        metadata={"help": "Where to log: auto (TensorBoard, plus Weights & Biases when wandb is installed), "
                  "tensorboard, wandb, none, ..."},
    )
    max_length: int | None = field(
        default=2048,
        metadata={"help": "Longest sample in tokens, image tokens included. Longer samples are refused or skipped "
        "(see --on_bad_data), never truncated."},
    )

    # TRL's own `packing` refuses vision datasets (and `padding_free` with it); here the option means the collator's
    # packing, and `LlavaSFTTrainer` keeps it from TRL.
    packing: bool = field(
        default=False,
        metadata={"help": "Pack each batch's samples end to end into rows of at most --packing_max_tokens tokens "
                  "(first-fit decreasing, no sample split, position ids restarting at every sample, attention "
                  "confined to each sample) instead of padding every sample to the batch's longest: the same loss "
                  "with less padding. Done by LLaVA's collator, for both stages; TRL's packing_strategy is not used."},
    )
    packing_max_tokens: int | None = field(
        default=None,
        metadata={"help": "With --packing: the most tokens of one packed row, image tokens included (default: "
                  "--max_length). A sample longer than this gets a row of its own."},
    )

    # TRL's default turns the deprecated `gradient_checkpointing` alias on, which makes transformers warn on every
    # run; the same default (on) under the current name.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of --activation_checkpointing."}
    )
    activation_checkpointing: bool | None = field(
        default=True,
        metadata={"help": "Recompute activations in the backward pass to save memory (default on; off for tiny runs)."},
    )

    def __post_init__(self):
        if self.use_cpu or not _has_accelerator():
            # Pinned memory only speeds up copies to an accelerator; without one the DataLoader warns on every run.
            self.dataloader_pin_memory = False
        if self.report_to == "auto":
            self.report_to = ["tensorboard"] + (["wandb"] if importlib.util.find_spec("wandb") else [])
        if self.bf16 is None:
            self.bf16 = (not self.fp16) and _accelerator_has_bf16()
        if self.fp16 and not torch.cuda.is_available():
            raise ValueError("fp16 mixed precision needs a CUDA GPU; none is available here. Remove --fp16.")
        self._check_packing()
        if isinstance(self.resume_from_checkpoint, str) and self.resume_from_checkpoint.lower() in ("true", "last"):
            self.resume_from_checkpoint = True  # `Trainer.train`'s spelling of "the last checkpoint in output_dir"
        super().__post_init__()

    def _check_packing(self) -> None:
        if not self.packing:
            if self.packing_max_tokens is not None:
                raise ConfigError("packing_max_tokens only applies with packing: true.")
            return
        if self.packing_strategy != "bfd":
            raise ConfigError(
                f"packing_strategy: {self.packing_strategy!r} splits samples; LLaVA's packing never does (it packs each "
                "batch's whole samples, first-fit decreasing): leave packing_strategy unset."
            )
        if self.padding_free:
            raise ConfigError("padding_free is TRL's (text-only); packing: true is already padding-free, drop it.")
        if self.packing_max_tokens is None:
            self.packing_max_tokens = self.max_length
        if self.packing_max_tokens is None or self.packing_max_tokens < 1:
            raise ConfigError(
                f"packing needs a token budget per row: set packing_max_tokens (or max_length) to a positive number, "
                f"got {self.packing_max_tokens}."
            )
