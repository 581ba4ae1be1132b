"""The two LLaVA training stages as data: a `StagePlan` says what one stage trains and how, derived once from
`stage` and the options that refine it, so that no other code asks which stage it is in.

- Stage 1, feature alignment (paper §4.2): only the projector learns, on captions rendered with the `plain`
  template; the frozen tower's features may come from a feature cache; the output also holds the projector alone
  (`mm_projector.safetensors`), the artifact the original LLaVA passes from stage 1 to stage 2.
- Stage 2, visual instruction tuning: the projector and the LLM (fully, or LoRA adapters on it) learn, and the
  vision tower too on request; the chats are rendered in the processor's own template or a named one, which the
  saved processor then keeps, so that the model chats in the format it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass


STAGES = (1, 2)


@dataclass(frozen=True)
class StagePlan:
    """What one training stage does.

    Attributes:
        stage: 1 or 2, for the record (nothing branches on it: every decision is one of the fields below).
        train_vision_tower: the vision tower learns (its parameters that never run stay frozen).
        train_language_model: the LLM and its head learn, fully.
        use_lora: LoRA adapters on the LLM learn (PEFT); the LLM's own weights stay frozen.
        chat_template: what the collator renders with: a template name or Jinja string, or `None` for the
            processor's own.
        keep_template: the processor, and so the saved model, takes the training template.
        feature_cache_dir: where the frozen tower's features are cached, or `None` to run the tower every step.
        save_projector: the output also holds the projector alone, with the original LLaVA key names.
    """

    stage: int
    train_vision_tower: bool
    train_language_model: bool
    use_lora: bool
    chat_template: str | None
    keep_template: bool
    feature_cache_dir: str | None
    save_projector: bool

    @classmethod
    def for_stage(
        cls,
        stage: int,
        *,
        freeze_vision_tower: bool = True,
        freeze_language_model: bool | None = None,
        use_lora: bool = False,
        chat_template: str | None = None,
        feature_cache_dir: str | None = None,
    ) -> StagePlan:
        """The plan of `stage` with these options, or `ValueError` for a combination the stage cannot train.

        `freeze_vision_tower` applies to stage 2 only (stage 1 always freezes the tower); `freeze_language_model`
        defaults to frozen in stage 1 and trained in stage 2 (trained through LoRA with `use_lora`).
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        alignment = stage == 1  # the one place that asks which stage this is
        if alignment and use_lora:
            raise ValueError("Stage 1 trains the projector only; LoRA (use_peft) is for stage 2.")
        if use_lora and not freeze_vision_tower:
            raise ValueError("With LoRA (use_peft) only the adapters and the projector learn; the vision tower stays frozen.")
        if feature_cache_dir is not None and not alignment:
            raise ValueError("feature_cache_dir needs a frozen vision tower: it is a stage-1 option.")
        if alignment and freeze_language_model is False:
            raise ValueError("Stage 1 trains the projector only: it needs a frozen vision tower and a frozen LLM.")
        return cls(
            stage=stage,
            train_vision_tower=not (alignment or freeze_vision_tower),
            train_language_model=not (alignment or use_lora or freeze_language_model),
            use_lora=use_lora,
            chat_template=chat_template or ("plain" if alignment else None),
            keep_template=not alignment,
            feature_cache_dir=feature_cache_dir,
            save_projector=alignment,
        )


__all__ = ["STAGES", "StagePlan"]
