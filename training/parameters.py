"""Which parameters of a LLaVA model learn in a training stage, and how many there are per part."""

from __future__ import annotations

from torch import nn

from .stages import StagePlan


PROJECTOR_MARKER = "multi_modal_projector"
VISION_TOWER_MARKER = "vision_tower"
_PARTS = {"vision_tower": f".{VISION_TOWER_MARKER}.", "projector": f".{PROJECTOR_MARKER}.",
          "language_model": ".language_model.", "lm_head": ".lm_head."}


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)


def freeze_unused_vision_parameters(model) -> list[str]:
    """Freeze the vision parameters that never receive a gradient, and return their names.

    Which ones they are is the model's knowledge (`LlavaModel.vision_parameters_without_gradient`). They are kept
    frozen in an unfrozen tower because data-parallel training waits for every trainable parameter's gradient: DDP
    would wait for theirs forever (or need `find_unused_parameters`).
    """
    unused = set(model.model.vision_parameters_without_gradient())
    frozen = []
    for name, parameter in model.model.vision_tower.named_parameters():
        if name in unused and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def apply_stage_plan(model, plan: StagePlan) -> dict[str, int]:
    """Set `requires_grad` as `plan` says and return the number of trainable parameters per part.

    The projector always learns; the LLM (its embeddings and head included) and the vision tower when the plan says
    so. With LoRA the LLM stays frozen here: PEFT adds the adapters when the trainer wraps the model.
    """
    set_trainable(model, False)
    set_trainable(model.model.multi_modal_projector, True)
    if plan.train_language_model:
        set_trainable(model.model.language_model, True)
        set_trainable(model.lm_head, True)
    if plan.train_vision_tower:
        set_trainable(model.model.vision_tower, True)
        freeze_unused_vision_parameters(model)
    return trainable_parameters_per_part(model)


def configure_trainable_parameters(
    model, stage: int, freeze_vision_tower: bool = True, freeze_language_model: bool | None = None
) -> dict[str, int]:
    """Set `requires_grad` for a LLaVA stage and return the number of trainable parameters per part.

    Stage 1 trains the projector only. Stage 2 trains the projector and, unless `freeze_language_model`, the LLM
    (its embeddings and head included); the vision tower only with `freeze_vision_tower=False`. See `StagePlan`.
    """
    plan = StagePlan.for_stage(
        stage, freeze_vision_tower=freeze_vision_tower, freeze_language_model=freeze_language_model
    )
    return apply_stage_plan(model, plan)


def trainable_parameters_per_part(model: nn.Module) -> dict[str, int]:
    """Trainable parameters of each LLaVA part, found by parameter name, so that the count is also right for a
    PEFT-wrapped model (LoRA adapters under `language_model`, the projector's `modules_to_save` copy); count on
    the model the trainer really trains, after PEFT attached its adapters."""
    counts = dict.fromkeys(_PARTS, 0)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            part = next((part for part, marker in _PARTS.items() if marker in f".{name}"), None)
            if part is not None:
                counts[part] += parameter.numel()
    return counts


__all__ = [
    "PROJECTOR_MARKER",
    "VISION_TOWER_MARKER",
    "apply_stage_plan",
    "configure_trainable_parameters",
    "freeze_unused_vision_parameters",
    "set_trainable",
    "trainable_parameters_per_part",
]
