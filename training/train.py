"""`llava train --config FILE.yaml [--key value ...]`: both LLaVA training stages with TRL's `SFTTrainer`.

The stage is part of the configuration (`stage: 1` or `stage: 2`); the YAML file sets defaults and command-line
flags override them (TRL's `TrlParser`). `run(config_dict)` is the same thing in-process, and it can take an
already loaded model and processor so that a two-stage run does not reload the LLM between stages.

`train()` reads as the recipe: the model to train (`model_for_training`), its collator (`training_collator`), the
checked data (`prepare_dataset`), TRL's trainer, `save_outputs`. What differs between the stages is decided once,
in the arguments' `plan` (`training.stages.StagePlan`); the steps read the plan, never `stage`.

Outputs, in `output_dir`:
- stage 1: the complete model and processor (loadable with `AutoModelForImageTextToText` / `AutoProcessor`,
  `trust_remote_code=True`, so you can chat right away) and `mm_projector.safetensors`, the projector alone with
  the original LLaVA key names (`model.mm_projector.*`);
- stage 2: the complete model and processor; with LoRA, the adapter there and the merged model in `merged/`;
- `skipped_samples.json` when `on_bad_data: skip` left samples out; checkpoints and TensorBoard logs as usual.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from modeling_llava.dtypes import torch_dtype
from processing.files import atomic_output_file, write_json

from .arguments import LlavaSFTConfig, LlavaTrainArguments


logger = logging.getLogger(__name__)
PROJECTOR_FILE = "mm_projector.safetensors"
SKIPPED_FILE = "skipped_samples.json"


class DataCheckError(ValueError):
    """The training data failed the checks run before training; the message is the full report."""


@dataclass
class TrainOutput:
    """What a training run produced.

    Attributes:
        output_dir: the run's output folder (checkpoints, logs, reports).
        model_dir: a complete model + processor folder to load and chat with (for LoRA: the merged folder when
            `merge_lora`, else the adapter folder).
        projector_path: stage 1's `mm_projector.safetensors`, else `None`.
        merged_dir: the merged LoRA model folder, else `None`.
        log_history: the Trainer's log entries (`loss`, `learning_rate`, `grad_norm`, ... per logging step).
        losses: the training loss of each logging step, in order; the last step is always logged, so a run
            shorter than `logging_steps` still reports its loss.
        skipped: samples left out before or during training (`on_bad_data: skip`), with the reasons.
        model: the trained model in memory (LoRA merged when `merge_lora`), ready for a next stage.
        processor: its processor.
        trainable_parameters: trainable parameters per part (vision_tower, projector, language_model, lm_head),
            counted on the model the trainer trained (LoRA adapters included).
    """

    output_dir: Path
    model_dir: Path
    projector_path: Path | None
    merged_dir: Path | None
    log_history: list[dict[str, Any]]
    losses: list[float]
    skipped: list[Any] = field(default_factory=list)
    model: Any = None
    processor: Any = None
    trainable_parameters: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------
def make_parser():
    from .arguments import LlavaTrainParser

    return LlavaTrainParser(
        (LlavaTrainArguments, LlavaSFTConfig),
        prog="llava train",
        description=(
            "Train LLaVA with TRL's SFTTrainer. Stage 1 (feature alignment): only the projector learns, on caption "
            "data in the `plain` format. Stage 2 (visual instruction tuning): the projector and the LLM (fully or "
            "with LoRA) learn on multi-turn chats, loss on the assistant answers only. Options come from "
            "--config FILE.yaml (see training/configs/) and are overridden by flags; every SFTConfig / "
            "TrainingArguments option of TRL is accepted too (output_dir, learning_rate, num_train_epochs, ...)."
        ),
    )


def parse_config(config: dict[str, Any]) -> tuple[LlavaTrainArguments, LlavaSFTConfig]:
    """Turn a config dict (the YAML file's content) into the two argument dataclasses."""
    script_args, training_args = make_parser().parse_dict(config)
    return script_args, training_args


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------
def load_model_and_processor(args: LlavaTrainArguments):
    """Load `model_name_or_path` (a saved LLaVA folder), or assemble a new model from its parts."""
    from modeling_llava import LlavaForCausalLM
    from processing import LlavaProcessor

    dtype = torch_dtype(args.dtype)
    if args.model_name_or_path is not None:
        model = LlavaForCausalLM.from_pretrained(args.model_name_or_path, dtype=dtype)
        # The tokenizer's Auto class reads the folder's remote-code config.json; without trust_remote_code it would
        # stop and ask on the terminal. The folder's code is this project's own (copied there by save_pretrained).
        processor = LlavaProcessor.from_pretrained(args.model_name_or_path, trust_remote_code=True)
    elif args.vision_tower is None or args.language_model is None:
        raise ValueError("Set model_name_or_path, or both vision_tower and language_model to build a new model.")
    else:
        model, processor = _build_model(args, dtype)
    if args.attn_implementation is not None:
        # One kernel for every sub-model; not saved with the weights (the checkpoint keeps loading with its default).
        model.set_attn_implementation(args.attn_implementation)
    return model, processor


def _build_model(args: LlavaTrainArguments, dtype):
    from modeling_llava.build import build_llava

    return build_llava(
        args.vision_tower,
        args.language_model,
        projector_type=args.projector_type,
        vision_feature_layer=args.vision_feature_layer,
        chat_template=args.chat_template if args.plan.keep_template else None,
        image_aspect_mode=args.image_aspect_mode,
        dtype=None if dtype == "auto" else dtype,
    )


def load_projector(model, path: str | os.PathLike) -> None:
    """Load a projector-only safetensors file (original `model.mm_projector.*` keys, or ours) into `model`."""
    from safetensors.torch import load_file

    from modeling_llava.convert import projector_key_from_original

    prefix = "model.multi_modal_projector."
    state_dict = {}
    for key, value in load_file(str(path)).items():
        ours = key if key.startswith(prefix) else projector_key_from_original(key)
        if ours is None:
            raise ValueError(f"{path}: {key!r} is not a projector weight (expected model.mm_projector.* keys).")
        state_dict[ours[len(prefix) :]] = value
    projector = model.model.multi_modal_projector
    expected = set(projector.state_dict())
    if set(state_dict) != expected:
        raise ValueError(
            f"{path} does not fit this model's {model.config.projector_type} projector: it has "
            f"{sorted(state_dict)}, the model needs {sorted(expected)}."
        )
    projector.load_state_dict(state_dict)


def save_projector(model_dir: Path, config, path: Path) -> Path:
    """Write the projector alone with the original LLaVA key names (`model.mm_projector.*`), atomically.

    The weights are read from the model just saved in `model_dir` (only the projector's tensors are loaded), not
    from memory: under ZeRO-3 or FSDP the in-memory parameters are shards, the saved file is whole.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from modeling_llava.convert import state_dict_to_original

    prefix = "model.multi_modal_projector."
    ours = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            ours.update({key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefix)})
    if not ours:
        raise FileNotFoundError(f"No {prefix}* weights in the safetensors files of {model_dir}.")
    with atomic_output_file(path) as temporary:
        save_file(state_dict_to_original(ours, config), str(temporary), metadata={"format": "pt"})
    return path


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
def prepare_dataset(args: LlavaTrainArguments, training_args: LlavaSFTConfig, collator):
    """Check the data before training, then return `(dataset, scans, skipped)` with the bad samples handled.

    Two checks run over every sample: `processing.validate.check_dataset` (readable lines, well-formed
    conversations, images present and decodable) and the collator's own scan (length with images expanded
    against `max_length`, at least one supervised token, with the template actually used for training).
    `on_bad_data: error` raises `DataCheckError` with the report; `skip` removes the failing samples and returns
    them as `skipped`.
    """
    from processing.images import LazyImageLoader
    from processing.llava_data import load_llava_dataset, to_trl_dataset
    from processing.validate import check_dataset

    from .collators import SkippedSample, length_cache, scan_samples, skipped_lines

    if args.data_path is None:  # not a check of the arguments: a config file may leave the data to the command line
        raise ValueError("data_path is required: a LLaVA JSON/JSONL file.")
    report = check_dataset(args.data_path, args.image_root, processor=collator.processor, decode_images=args.decode_images)
    if not report.ok and args.on_bad_data == "error":
        raise DataCheckError(f"The training data failed the checks (set on_bad_data: skip to leave these samples out):\n{report.format()}")
    skipped = skipped_lines(report)
    llava = load_llava_dataset(args.data_path, args.image_root, exclude_lines=report.failing_lines)

    # Converted once, without images: the scan needs only the messages, and the images are attached lazily below.
    dataset = to_trl_dataset(llava, image_first_ratio=args.image_first_ratio, seed=training_args.seed)
    num_proc = training_args.dataset_num_proc or 1
    scans = scan_samples(dataset, collator, num_proc=num_proc, cache=length_cache(args.data_path, collator))
    unusable = [SkippedSample(scan.sample_id, scan.problem) for scan in scans if scan.problem]
    if unusable and args.on_bad_data == "error":
        listed = "\n".join(f"  {sample}" for sample in unusable[:20])
        more = f"\n  ... and {len(unusable) - 20} more" if len(unusable) > 20 else ""
        raise DataCheckError(
            f"{args.data_path}: {len(unusable)} sample(s) cannot be trained on as they are "
            f"(set on_bad_data: skip to leave them out):\n{listed}{more}"
        )
    if unusable:
        # by position, not id: two samples may share an id
        usable = [position for position, scan in enumerate(scans) if not scan.problem]
        dataset = dataset.select(usable)
        scans = [scans[position] for position in usable]
        skipped += unusable
    if len(dataset) == 0:
        raise DataCheckError(f"{args.data_path}: no usable training sample is left ({len(skipped)} skipped).")
    if args.image_root is not None:
        dataset = dataset.with_transform(LazyImageLoader(args.image_root))
    return dataset, scans, skipped


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
class LogFinalStep(TrainerCallback):
    """Log the last training step whatever `logging_steps` is: transformers logs only every `logging_steps`
    (default 500), so a shorter run would end with no loss at all in `log_history`."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True
        return control


def silence_console(trainer) -> None:
    """Take the Trainer's console reporters off (transformers adds one: `PrinterCallback` with `disable_tqdm`, else
    `ProgressCallback`); logging to `log_history` and to the `report_to` integrations is untouched."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _lora_config(args: LlavaTrainArguments):
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules,
        # The projector is trained fully next to the adapters (and saved with them).
        modules_to_save=["multi_modal_projector"],
        task_type="CAUSAL_LM",
    )


def _remove_fused_head(model) -> None:
    """Undo TRL's instance-level `forward` patch (the fused LM head), so the returned model is a plain one."""
    if "forward" in vars(model):
        del model.forward


def train(
    args: LlavaTrainArguments, training_args: LlavaSFTConfig, model=None, processor=None, callbacks=None, quiet=False
) -> TrainOutput:
    """Run one training stage (`args.plan`). `model` and `processor` default to the ones `args` names; `callbacks`
    are extra `transformers.TrainerCallback`s. `quiet` removes the Trainer's own console output (its progress bar, or
    with `disable_tqdm` the printed log dictionaries), for callers whose `callbacks` report progress themselves; the
    logs still reach `log_history` and `report_to`."""
    from .trainer import LlavaSFTTrainer, trainable_parameters_per_part

    model, processor = model_for_training(args, training_args, model, processor)
    collator = training_collator(args, training_args, model, processor)
    dataset, scans, skipped = prepare_dataset(args, training_args, collator)
    if args.plan.feature_cache_dir is not None:
        logger.info("Feature cache: %d image(s) encoded or found in %s", collator.prefill(dataset), collator.cache.root)
    if skipped:
        write_skipped(training_args, skipped, f"{len(skipped)} sample(s) left out before training")

    trainer = LlavaSFTTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=_lora_config(args) if args.plan.use_lora else None,
        projector_learning_rate=args.projector_learning_rate,
        vision_tower_learning_rate=args.vision_tower_learning_rate,
        group_by_modality_length=args.group_by_modality_length,
        length_megabatch_mult=args.length_megabatch_mult,
        sample_lengths=[scan.length if scan.num_images else -scan.length for scan in scans],
        callbacks=[LogFinalStep(), *(callbacks or [])],
    )
    if quiet:
        silence_console(trainer)
    require_requested_sharding(trainer)
    trainable = trainable_parameters_per_part(trainer.model)  # after PEFT attached its adapters
    logger.info("Trainable parameters per part: %s", trainable)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return save_outputs(trainer, args, processor, skipped, getattr(collator, "skipped", []), trainable)


def require_requested_sharding(trainer) -> None:
    """Stop when FSDP was asked for but the trainer would not shard.

    accelerate attaches the FSDP plugin only on accelerators (GPU, NPU, XPU, ...): launched on CPU with an FSDP
    config and `use_cpu`, it joins the processes over gloo as plain DDP, without a word, and each rank holds the
    whole model and optimizer state. The run is not what was asked for, so it does not start.
    """
    import accelerate

    requested = bool(trainer.args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if requested and not trainer.is_fsdp_enabled:
        raise ValueError(
            f"FSDP was requested, but accelerate {accelerate.__version__} shards only on accelerators (GPU, NPU, "
            f"XPU, ...); here it would train as {trainer.accelerator.distributed_type.value} instead. On CPU, "
            "launch with training/configs/accelerate/ddp_cpu.yaml."
        )


def model_for_training(args: LlavaTrainArguments, training_args: LlavaSFTConfig, model=None, processor=None):
    """The model and processor to train, checked against each other, with the stage's parameters trainable."""
    import torch

    from .cpu_memory import keep_freed_memory
    from .parameters import apply_stage_plan

    if (model is None) != (processor is None):
        raise ValueError("Pass both model and processor, or neither.")
    if training_args.use_cpu or not torch.cuda.is_available():
        keep_freed_memory()
    if model is None:
        model, processor = load_model_and_processor(args)
    if args.projector_path is not None:
        load_projector(model, args.projector_path)
    if processor.image_seq_length != model.config.image_seq_length:
        raise ValueError(
            f"The processor expands <image> to {processor.image_seq_length} tokens but the model yields "
            f"{model.config.image_seq_length} image features: they must match."
        )
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    apply_stage_plan(model, args.plan)
    return model, processor


def training_collator(args: LlavaTrainArguments, training_args: LlavaSFTConfig, model, processor):
    """The stage's collator (`collators.stage_collator`), over the feature cache when the plan has one; the
    processor takes the training template when the plan says so."""
    from .collators import stage_collator

    plan = args.plan
    if plan.chat_template is None:  # the processor's own template renders every sample: it must know image blocks
        from processing.templates import require_image_template

        require_image_template(processor, args.model_name_or_path or "the processor")
    collator = stage_collator(
        processor,
        plan,
        max_length=training_args.max_length,
        on_bad_sample=args.on_bad_data,
        pad_to_multiple_of=training_args.pad_to_multiple_of,
        packing_max_tokens=training_args.packing_max_tokens if training_args.packing else None,
    )
    if plan.keep_template and collator.chat_template is not None:
        _keep_training_template(processor, collator.chat_template, args.chat_template)
    if plan.feature_cache_dir is not None:
        from .feature_cache import attach_feature_cache

        collator = attach_feature_cache(collator, model, plan.feature_cache_dir)
    return collator


def _keep_training_template(processor, template: str, chosen: str) -> None:
    """Give the processor the template it trains with, so that the saved model chats in that format."""
    if isinstance(processor.chat_template, str) and template != processor.chat_template:
        # Naming a template is allowed (the paper's configs do), but a different one silently changes the prompt
        # format the model was built or trained with; say so.
        named = chosen if len(chosen) <= 40 else "the given Jinja template"
        logger.warning(
            "chat_template %r is not the model's own chat template (the processor's chat_template.jinja): the model "
            "trains and is saved in the %r format. Leave chat_template unset to keep the model's own.", named, named
        )
    processor.chat_template = template


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------
def write_skipped(training_args: LlavaSFTConfig, skipped: list, message: str) -> None:
    """Write every sample left out so far to OUTPUT_DIR/skipped_samples.json (main process) and warn."""
    path = Path(training_args.output_dir) / SKIPPED_FILE
    if training_args.should_save:
        write_json(path, [vars(sample) for sample in skipped])
        logger.warning("%s; see %s", message, path)


def save_outputs(trainer, args: LlavaTrainArguments, processor, skipped: list, skipped_in_training: list, trainable):
    """Save what the stage produced and return it as a `TrainOutput`: the model and processor (every rank takes
    part: ZeRO-3/FSDP gather, the main one writes), the projector alone (stage 1), the merged LoRA model, and the
    samples skipped during training added to the report."""
    output_dir = Path(trainer.args.output_dir)
    trained = trainer.model
    base_model = trained.get_base_model() if args.plan.use_lora else trained
    _remove_fused_head(base_model)
    skipped = skipped + skipped_in_training
    if skipped_in_training:
        write_skipped(trainer.args, skipped, f"{len(skipped_in_training)} sample(s) skipped during training")
    if trainer.is_fsdp_enabled:
        # Checkpoints may stay sharded (fast to write, resumable), but transformers' `save_model` writes nothing at
        # all under SHARDED_STATE_DICT, not even the processor: the model that leaves training is gathered whole.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(output_dir))
    projector_path = output_dir / PROJECTOR_FILE if args.plan.save_projector else None
    if projector_path is not None:
        if trainer.is_world_process_zero():
            save_projector(output_dir, base_model.config, projector_path)
        trainer.accelerator.wait_for_everyone()
    final_model, merged_dir = base_model, None
    if args.plan.use_lora and args.merge_lora:
        final_model = trained.merge_and_unload()
        _remove_fused_head(final_model)
        merged_dir = output_dir / "merged"
        if trainer.is_world_process_zero():
            final_model.save_pretrained(merged_dir)
            processor.save_pretrained(merged_dir)
    log_history = list(trainer.state.log_history)
    return TrainOutput(
        output_dir=output_dir,
        model_dir=merged_dir or output_dir,
        projector_path=projector_path,
        merged_dir=merged_dir,
        log_history=log_history,
        losses=[entry["loss"] for entry in log_history if "loss" in entry],
        skipped=skipped,
        model=final_model,
        processor=processor,
        trainable_parameters=trainable,
    )


def run(config: dict[str, Any], model=None, processor=None, callbacks=None, quiet=False) -> TrainOutput:
    """Train in-process from a config dict (the same keys as the YAML files and `llava train` flags).

    Example:
        >>> out1 = run({"stage": 1, "model_name_or_path": "built/", "data_path": "captions.json",
        ...             "image_root": "images/", "output_dir": "runs/stage1", "learning_rate": 2e-3})
        >>> out2 = run({"stage": 2, "data_path": "chats.json", "image_root": "images/",
        ...             "output_dir": "runs/stage2"}, model=out1.model, processor=out1.processor)
    """
    script_args, training_args = parse_config(dict(config))
    return train(script_args, training_args, model=model, processor=processor, callbacks=callbacks, quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    """`llava train --config FILE.yaml [--key value ...]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    script_args, training_args = parser.parse_args_and_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        output = train(script_args, training_args)
    except DataCheckError as error:
        print(f"llava train: {error}", file=sys.stderr)
        return 1
    print(f"Trained model: {output.model_dir}")
    if output.projector_path is not None:
        print(f"Projector only: {output.projector_path}")
    if output.skipped:
        print(f"Skipped {len(output.skipped)} sample(s): {output.output_dir / SKIPPED_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
