"""Stage-2 step time on CPU with the tied embedding's lookup gradient sparse (the trainer's CPU default) against
dense (`sparse_embedding_gradient=False`), on the demo's own model and data: the real SmolLM2-135M-Instruct
(tied input/output embeddings, 49k x 576), a small random CLIP tower of the demo's shape (9 image tokens), and
`llava demo`'s stage-2 conversations, batch 8, fused AdamW, eager attention, in the precision the demo would use.
The two modes alternate step by step within one training run (the lookup's `sparse` flag only changes its
backward), so that slow drifts of a shared machine's speed hit both alike.

    python benchmarks/bench_tied_embedding.py [--steps 20] [--warmup 2]

Prints seconds per step for each mode (median), the median of the paired differences (each sparse step against the
dense step before it) and dense / sparse.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, TrainerCallback


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT)]

from datagen.instructions import detail_instructions  # noqa: E402
from demo import settings as demo_settings  # noqa: E402
from demo.data import build_demo_data  # noqa: E402
from demo.default_llm import smollm2_checkpoint  # noqa: E402
from demo.teacher import TemplateTeacher  # noqa: E402
from modeling_llava.build import build_llava  # noqa: E402
from processing.llava_data import load_llava_dataset, to_trl_dataset  # noqa: E402
from training.arguments import LlavaSFTConfig  # noqa: E402
from training.collators import stage2_collator  # noqa: E402
from training.cpu_memory import keep_freed_memory  # noqa: E402
from training.trainer import LlavaSFTTrainer, configure_trainable_parameters  # noqa: E402


class AlternatingLookup(TrainerCallback):
    """Makes the lookup's gradient dense on even steps and sparse on odd ones, and times each step after `warmup`."""

    def __init__(self, embedding: torch.nn.Embedding, warmup: int):
        self.embedding, self.warmup = embedding, warmup
        self.times: dict[str, list[float]] = {"dense": [], "sparse": []}
        self.begun = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.embedding.sparse = state.global_step % 2 == 1
        self.begun = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > self.warmup:
            mode = "sparse" if self.embedding.sparse else "dense"
            self.times[mode].append(time.perf_counter() - self.begun)


def build_model_and_data(root: Path):
    torch.manual_seed(0)
    tower = root / "tower"
    CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in demo_settings.TOWER.items() if k != "projection_dim"})).save_pretrained(tower)
    size = demo_settings.IMAGE_SIZE
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(tower)
    model, processor = build_llava(tower, smollm2_checkpoint(), projector_type="linear", chat_template="chatml")
    data = build_demo_data(
        root / "data", 128, 4, image_size=size, stage2_samples_per_scene=1, proportions=demo_settings.STAGE2_PROPORTIONS,
        rows=demo_settings.SCENE_ROWS, teacher=TemplateTeacher(list(detail_instructions()), conversation_turns=demo_settings.CONVERSATION_TURNS),
        stage2_single_object_share=demo_settings.STAGE2_SINGLE_OBJECT_SHARE, stage2_image_first=demo_settings.STAGE2_IMAGE_FIRST,
    )
    dataset = to_trl_dataset(load_llava_dataset(data.stage2, data.image_root), data.image_root)
    return model, processor, dataset


def measure(model, processor, dataset, steps: int, warmup: int, out: Path) -> dict[str, list[float]]:
    configure_trainable_parameters(model, stage=2)
    timer = AlternatingLookup(model.get_input_embeddings(), warmup)
    args = LlavaSFTConfig(
        output_dir=str(out), max_steps=warmup + steps, per_device_train_batch_size=8, learning_rate=1e-5,
        optim="adamw_torch_fused", report_to="none", save_strategy="no", logging_steps=1000, disable_tqdm=True,
        activation_checkpointing=False, dataloader_num_workers=0, seed=0, **demo_settings.mixed_precision_overrides(),
    )
    trainer = LlavaSFTTrainer(
        model=model, args=args, data_collator=stage2_collator(processor, max_length=1024), train_dataset=dataset,
        processing_class=processor, callbacks=[timer],
    )
    trainer.train()
    return timer.times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="measured optimizer steps (half in each mode)")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before the clock starts")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as `llava train` does on CPU
    with tempfile.TemporaryDirectory() as tmp:
        model, processor, dataset = build_model_and_data(Path(tmp))
        model.set_attn_implementation("eager")  # demo_stage2.yaml
        precision = "bf16 autocast" if demo_settings.mixed_precision_overrides().get("bf16") else "float32"
        print(f"SmolLM2-135M LLaVA, stage 2, batch 8, {precision}, {torch.get_num_threads()} threads; "
              f"tied embeddings: {model.lm_head.weight is model.get_input_embeddings().weight}")
        times = measure(model, processor, dataset, args.steps, args.warmup, Path(tmp) / "run")
    for mode, seconds in times.items():
        print(f"{mode:6s}: " + " ".join(f"{value:.2f}" for value in seconds) + " s/step")
    dense, sparse = (statistics.median(times[mode]) for mode in ("dense", "sparse"))
    # the warm-up ends on an even step, so the measured steps run dense, sparse, dense, sparse, ...
    paired = statistics.median(d - s for d, s in zip(times["dense"], times["sparse"]))
    print(f"median: dense {dense:.2f} s/step, sparse {sparse:.2f} s/step; dense / sparse = {dense / sparse:.3f}; "
          f"median paired saving {paired:.2f} s/step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
