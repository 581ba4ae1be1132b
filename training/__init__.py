"""Two-stage LLaVA training with TRL's SFTTrainer: collators, the trainer, `llava train` and `run()`."""

from .collators import LlavaDataCollator, SkippedSample, UnusableSampleError, stage1_collator, stage2_collator

__all__ = ["LlavaDataCollator", "SkippedSample", "UnusableSampleError", "stage1_collator", "stage2_collator"]
