"""`LlavaSFTTrainer`: TRL's `SFTTrainer` plus what LLaVA training needs and TRL lacks.

- a separate learning rate for the projector (its own optimizer parameter groups);
- optional length grouping by modality (image and text-only samples in separate batches);
- helpers that decide which parameters learn in each stage.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from trl import SFTTrainer


PROJECTOR_MARKER = "multi_modal_projector"
_USED_VISION_PARAMETER = re.compile(r"^(?:vision_model\.)?(?:embeddings|pre_layrnorm)\.")
_VISION_LAYER = re.compile(r"^(?:vision_model\.)?encoder\.layers\.(\d+)\.")


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)


def freeze_unused_vision_parameters(model) -> list[str]:
    """Freeze the vision parameters that never run, and return their names.

    The model runs the vision tower only up to the deepest selected layer (the paper's -2 skips the last one) and
    never uses the tower's final norm or pooling head. Those parameters would get no gradient; DDP would then
    wait for it forever (or need `find_unused_parameters`), so an unfrozen tower keeps them frozen.
    """
    used_layers = model.model.vision_layers_used()
    frozen = []
    for name, parameter in model.model.vision_tower.named_parameters():
        layer = _VISION_LAYER.match(name)
        used = bool(_USED_VISION_PARAMETER.match(name)) or (layer is not None and int(layer.group(1)) < used_layers)
        if not used and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def configure_trainable_parameters(
    model, stage: int, freeze_vision_tower: bool = True, freeze_language_model: bool | None = None
) -> dict[str, int]:
    """Set `requires_grad` for a LLaVA stage and return the number of trainable parameters per part.

    Stage 1 trains the projector only. Stage 2 trains the projector and, unless `freeze_language_model`, the LLM
    (its embeddings and head included); the vision tower only with `freeze_vision_tower=False`.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    if freeze_language_model is None:
        freeze_language_model = stage == 1
    if stage == 1 and not (freeze_vision_tower and freeze_language_model):
        raise ValueError("Stage 1 trains the projector only: it needs a frozen vision tower and a frozen LLM.")
    set_trainable(model, False)
    set_trainable(model.model.multi_modal_projector, True)
    if not freeze_language_model:
        set_trainable(model.model.language_model, True)
        set_trainable(model.lm_head, True)
    if not freeze_vision_tower:
        set_trainable(model.model.vision_tower, True)
        freeze_unused_vision_parameters(model)
    parts = {
        "vision_tower": model.model.vision_tower,
        "projector": model.model.multi_modal_projector,
        "language_model": model.model.language_model,
        "lm_head": model.lm_head,
    }
    return {name: sum(p.numel() for p in part.parameters() if p.requires_grad) for name, part in parts.items()}


class LlavaSFTTrainer(SFTTrainer):
    """`SFTTrainer` with a projector learning rate and modality-grouped batches.

    Args:
        projector_learning_rate: learning rate of the projector's parameters (default: `args.learning_rate`).
        group_by_modality_length: batch image and text-only samples separately, similar lengths together
            (see `training.sampler.ModalityLengthGroupedSampler`).
        sample_lengths: token length of each training sample, negative for text-only samples; needed by
            `group_by_modality_length`.
        Other arguments: as `trl.SFTTrainer`.
    """

    def __init__(
        self,
        *args,
        projector_learning_rate: float | None = None,
        group_by_modality_length: bool = False,
        sample_lengths: list[int] | None = None,
        **kwargs,
    ):
        self.projector_learning_rate = projector_learning_rate
        self.group_by_modality_length = group_by_modality_length
        self.sample_lengths = sample_lengths
        if group_by_modality_length and sample_lengths is None:
            raise ValueError("group_by_modality_length needs sample_lengths (negative for text-only samples).")
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.projector_learning_rate is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay_parameters = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, parameter in opt_model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault((PROJECTOR_MARKER in name, name in decay_parameters), []).append(parameter)
        if not any(is_projector for is_projector, _ in groups):
            raise ValueError("projector_learning_rate is set but no trainable projector parameter was found.")
        parameter_groups = [
            {
                "params": parameters,
                "weight_decay": self.args.weight_decay if decay else 0.0,
                **({"lr": self.projector_learning_rate} if is_projector else {}),
            }
            for (is_projector, decay), parameters in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(parameter_groups, **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        if not self.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        from .sampler import ModalityLengthGroupedSampler

        return ModalityLengthGroupedSampler(
            lengths=self.sample_lengths,
            batch_size=self.args.per_device_train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )
