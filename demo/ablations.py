"""`llava demo --ablations`: the analogues of the paper's Tables 3 and 7 in the demo's world.

The protocol (variants, seeds, budget, metrics, what counts as "reproduces") is `docs/ablations.md`, committed before
the first run; this module carries it out and writes the report it asks for. Per seed, the scenes, the tower, the
base model and stage 1 are built once (by `demo.main`'s cached steps) and shared by every variant that does not
change them:

- Table 3: stage 2 on the full mix / detail + complex only / conversation only, and no stage 2; scored by exact
  match on the held-out one-word questions (conversation) and by the scene-truth judge's relative score on one
  detailed description and one complex-reasoning question per held-out scene (`demo.judge.SceneJudge` through
  `evaluation.judge.judge_all` and `relative_scores`, as `llava eval judge` does);
- Table 7: vision features from the last layer vs the one before (each with its own base model and stage 1), no
  stage 1, and answer-first vs reasoning-first on a ScienceQA-format task (`demo.reasoning_order`).

Every stage-2 variant trains for the same number of steps (`AblationBudget.stage2_steps`). Everything is cached
under the output folder, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from demo.progress import Step
from demo.settings import (
    EVAL_BATCH_SIZE,
    PRESETS,
    TOWER_PRETRAINING,
    check_run_settings,
    run_settings,
)
from processing.files import write_json, write_text

# The paper's numbers, next to which the report puts ours (docs/ablations.md, "What the paper claims").
PAPER_TABLE3 = {
    "full data": {"conversation": 83.1, "detail": 75.3, "complex": 96.5, "all": 85.1},
    "detail + complex": {"conversation": 81.5, "detail": 73.3, "complex": 90.8, "all": 81.9},
    "conversation": {"conversation": 76.5, "detail": 59.8, "complex": 84.9, "all": 73.8},
    "no instruction tuning": {"conversation": 22.0, "detail": 24.0, "complex": 18.5, "all": 21.5},
}
PAPER_TABLE7 = {"before the last layer": 90.92, "last layer": 89.96, "no stage 1": 85.81}
TABLE3_MIXES = {"detail + complex": {"detail": 0.5, "complex": 0.5}, "conversation": {"conversation": 1.0}}
SCORE_TYPES = ("conversation", "detail", "complex", "all")
ORDERS = {"answer first": True, "reasoning first": False}  # name -> answer_first


@dataclass(frozen=True)
class AblationBudget:
    """How much every variant trains and how much of the held-out set scores it (docs/ablations.md, "Budget")."""

    preset: str = "default"
    seeds: tuple[int, ...] = (0, 1, 2)
    stage2_steps: int = 35
    exact_match_scenes: int = 60  # held-out scenes whose one-word questions score conversation and Table 7
    judged_scenes: int = 40  # held-out scenes with one detail and one complex question for the judge
    scienceqa_train: int = 280  # one epoch of `stage2_steps` at batch 8
    scienceqa_test: int = 80
    checkpoints: int = 5
    tower_steps: int | None = None  # the demo's own tower pretraining when None
    max_new_tokens: int = 96  # the judged answers: a three-object description is ~70 tokens


BUDGETS = {
    "full": AblationBudget(),
    # The suite's smoke test: every table and plot from real (tiny) runs, two seeds so that a spread exists.
    "quick": AblationBudget(
        preset="quick", seeds=(0, 1), stage2_steps=2, exact_match_scenes=3, judged_scenes=2, scienceqa_train=16,
        scienceqa_test=4, checkpoints=2, tower_steps=4, max_new_tokens=24,
    ),
}


# ------------------------------------------------------------------------------------------------ one seed
def subset_stage2_data(data, mix: dict[str, float], seed: int, path: Path) -> Path:
    """Stage-2 data of another type mix, one sample per scene of the full mix's scenes, in the same order: only the
    types differ (docs/ablations.md, "Table 3 analogue")."""
    if path.is_file():
        return path
    from datagen.instructions import detail_instructions
    from demo.data import stage2_records
    from demo.scenes import read_scenes
    from demo.settings import CONVERSATION_TURNS, STAGE2_IMAGE_FIRST
    from demo.teacher import TemplateTeacher

    full = json.loads(data.stage2.read_text())
    by_id = {scene.id: scene for scene in read_scenes(data.root / "train")}
    scenes = [by_id[Path(record["image"]).stem] for record in full]
    teacher = TemplateTeacher(list(detail_instructions()), conversation_turns=CONVERSATION_TURNS)
    records = stage2_records(scenes, random.Random(seed), teacher, mix, 1, STAGE2_IMAGE_FIRST)
    write_json(path, records, indent=1)
    return path


def judged_questions(data, scenes: int, seed: int) -> list[dict]:
    """One detailed-description and one complex-reasoning question per held-out scene (the first `scenes`), with the
    template teacher's reference answer and the judge's context (captions and boxes), drawn per scene and seed."""
    from datagen.instructions import detail_instructions
    from demo.judge import judge_context
    from demo.scenes import read_scenes
    from demo.teacher import TemplateTeacher

    teacher = TemplateTeacher(list(detail_instructions()))
    items = []
    for scene in read_scenes(data.root / "eval")[:scenes]:
        rng = random.Random(f"{seed}:{scene.id}")
        context = judge_context(scene, rng)
        for kind, write in (("detail", teacher.detail), ("complex", teacher.complex_reasoning)):
            ((question, reference),) = write(scene, rng)
            items.append({"id": f"{scene.id}-{kind}", "type": kind, "image": f"eval/images/{scene.id}.png",
                          "question": question, "reference": reference, "context": context})
    return items


def judged_scores(model_dir: Path, data, items: list[dict], max_new_tokens: int, cache: Path) -> dict:
    """The model's answers to `items`, scored by the scene-truth judge in both answer orders, aggregated into the
    relative score per type (`evaluation.judge.relative_scores`)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from demo.judge import SceneJudge
    from evaluation.judge import JudgeItem, judge_all, relative_scores
    from inference.batch import BatchAnswerer, answer_in_batches
    from inference.settings import GenerationSettings

    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    answerer = BatchAnswerer(model, processor, GenerationSettings(max_new_tokens=max_new_tokens))
    answers: dict[str, str] = {}
    for batch, texts in answer_in_batches(answerer, items, EVAL_BATCH_SIZE, lambda item: item["question"],
                                          lambda item: Image.open(data.image_root / item["image"]).convert("RGB")):
        answers.update((item["id"], text) for item, text in zip(batch, texts))
    judge_items = [JudgeItem(item["id"], item["type"], item["question"], item["context"], item["reference"],
                             answers[item["id"]]) for item in items]
    reviews: list[dict] = []
    tasks = [(item, order) for item in judge_items for order in ("reference_first", "model_first")]
    judge_all(SceneJudge(), tasks, reviews.append, judge_id=SceneJudge.name, concurrency=1, progress=False)
    result = {"relative": relative_scores(reviews), "answers": [{**item, "answer": answers[item["id"]]} for item in items[:6]]}
    write_json(cache, result, indent=1)
    return result


def run_seed(out: Path, language_dir: Path, budget: AblationBudget, seed: int, log: Step) -> dict:
    """Every variant of both tables for one seed (cached step by step under `out`)."""
    from demo.main import (
        build_base_model,
        build_data,
        build_vision_tower,
        evaluate,
        train_stage,
    )
    from demo.reasoning_order import reasoning_order_curve, write_scienceqa_task

    preset = dict(PRESETS[budget.preset])
    steps = {"max_steps": budget.stage2_steps}
    pretraining = TOWER_PRETRAINING if budget.tower_steps is None else replace(
        TOWER_PRETRAINING, steps=budget.tower_steps, warmup_steps=min(TOWER_PRETRAINING.warmup_steps, budget.tower_steps // 2))
    log(f"seed {seed}: shared data, tower, base model and stage 1")
    data = build_data(out / "data", preset, seed)
    tower, _ = build_vision_tower(out / "vision-tower", data, language_dir, seed, log, pretraining)
    base = build_base_model(out / "base", tower, language_dir, data, log)
    stage1, _ = train_stage(1, base, data, out / "stage1", preset, seed, log)

    def exact_match(model_dir: Path, name: str) -> float:
        result = evaluate(model_dir, data, f"seed {seed}, {name}", budget.exact_match_scenes, log,
                          out / f"exact_match-{slug(name)}.json")
        return 100 * result["accuracy"]["overall"]

    def stage2(name: str, start: Path, data_path: Path | None = None) -> Path:
        model, _ = train_stage(2, start, data, out / f"stage2-{slug(name)}", preset, seed, log, data_path=data_path,
                               overrides=steps, name=f"seed {seed}, stage 2 ({name})")
        return model

    items = judged_questions(data, budget.judged_scenes, seed)
    table3_models = {"full data": stage2("full data", stage1)}
    for name, mix in TABLE3_MIXES.items():
        table3_models[name] = stage2(name, stage1, subset_stage2_data(data, mix, seed, out / "data" / f"stage2-{slug(name)}.json"))
    table3_models["no instruction tuning"] = stage1
    table3 = {}
    for name, model in table3_models.items():
        judged = judged_scores(model, data, items, budget.max_new_tokens, out / f"judged-{slug(name)}.json")["relative"]
        scores = {"conversation": exact_match(model, name), **{kind: judged[kind]["relative_score"] for kind in ("detail", "complex")}}
        table3[name] = {**scores, "all": statistics.mean(scores.values())}
        log(f"seed {seed}, Table 3, {name}: " + ", ".join(f"{kind} {value:.1f}" for kind, value in table3[name].items()))

    log(f"seed {seed}: Table 7 (vision features from the last layer; no stage 1; reasoning order)")
    base_last = build_base_model(out / "base-last-layer", tower, language_dir, data, log, vision_feature_layer=-1)
    stage1_last, _ = train_stage(1, base_last, data, out / "stage1-last-layer", preset, seed, log, name=f"seed {seed}, stage 1 (last layer)")
    table7 = {
        "before the last layer": table3["full data"]["conversation"],
        "last layer": exact_match(stage2("last layer", stage1_last), "last layer"),
        "no stage 1": exact_match(stage2("no stage 1", base), "no stage 1"),
    }
    task = write_scienceqa_task(out / "scienceqa-task", data, budget.scienceqa_train, budget.scienceqa_test, seed)
    curves = {
        name: reasoning_order_curve(out / f"scienceqa-{slug(name)}", task, stage1, data, answer_first=answer_first,
                                    steps=budget.stage2_steps, checkpoints=budget.checkpoints, seed=seed, log=log)
        for name, answer_first in ORDERS.items()
    }
    return {"table3": table3, "table7": table7, "reasoning_order": curves}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


# ------------------------------------------------------------------------------------------------ verdicts
def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ordering_verdict(better: list[float], worse: list[float]) -> str:
    """docs/ablations.md, "What counts as reproduces": A > B reproduces when A's mean is higher and A is higher in at
    least 2 of 3 seeds (paired); a gap below the larger standard deviation is not resolved."""
    (mean_a, sd_a), (mean_b, sd_b) = mean_sd(better), mean_sd(worse)
    if abs(mean_a - mean_b) < max(sd_a, sd_b):
        return "not resolved"
    wins = sum(a > b for a, b in zip(better, worse))
    return "reproduces" if mean_a > mean_b and 3 * wins >= 2 * len(better) else "does not reproduce"


def steps_to_plateau(curve: list[dict]) -> int:
    """The first checkpoint step whose accuracy is within 2 points of the curve's final accuracy."""
    final = curve[-1]["accuracy"]
    return next(point["step"] for point in curve if point["accuracy"] >= final - 2)


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    return [{"step": points[0]["step"], "accuracy": statistics.mean(p["accuracy"] for p in points),
             "sd": mean_sd([p["accuracy"] for p in points])[1]} for points in zip(*curves)]


def reasoning_first_verdict(answer_first: list[dict], reasoning_first: list[dict]) -> tuple[str, str]:
    """docs/ablations.md: reasoning-first reaches within 2 points of its final accuracy in at most half the steps
    answer-first needs, and the two final accuracies are within 3 points. Judged on the 3-seed mean curves."""
    steps_af, steps_rf = steps_to_plateau(answer_first), steps_to_plateau(reasoning_first)
    final_af, final_rf = answer_first[-1]["accuracy"], reasoning_first[-1]["accuracy"]
    verdict = "reproduces" if 2 * steps_rf <= steps_af and abs(final_af - final_rf) <= 3 else "does not reproduce"
    return verdict, (f"plateau (within 2 points of the final accuracy) at step {steps_rf} reasoning-first vs {steps_af} "
                     f"answer-first; final accuracy {final_rf:.1f}% vs {final_af:.1f}%")


# ------------------------------------------------------------------------------------------------ report
def cell(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.1f} ± {sd:.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def write_report(out: Path, results: dict[int, dict], budget: AblationBudget, wall_clock: float, cpu: str) -> Path:
    """report.md (every table next to the paper's, a verdict per claimed ordering) and its plots."""
    seeds = sorted(results)
    table3 = {name: {kind: [results[s]["table3"][name][kind] for s in seeds] for kind in SCORE_TYPES} for name in PAPER_TABLE3}
    table7 = {name: [results[s]["table7"][name] for s in seeds] for name in PAPER_TABLE7}
    curves = {name: mean_curve([results[s]["reasoning_order"][name] for s in seeds]) for name in ORDERS}
    lines = [
        (f"Seeds {', '.join(map(str, seeds))}; every cell is mean ± sd over seeds (each seed's value). Stage 2 trains "
         f"{budget.stage2_steps} steps in every variant. Wall clock {wall_clock / 60:.1f} min (the seeds' runs, summed) on {cpu}."),
        "", "### Table 3: stage-2 training data (relative score; conversation = exact match %)", "",
        "| training data | conversation | detail | complex | all | paper (conv / detail / complex / all) |", "|---|---|---|---|---|---|",
    ]
    for name, row in table3.items():
        paper = " / ".join(f"{PAPER_TABLE3[name][kind]}" for kind in SCORE_TYPES)
        lines.append(f"| {name} | " + " | ".join(cell(row[kind]) for kind in SCORE_TYPES) + f" | {paper} |")
    lines += ["", "Orderings (paper: full data > detail + complex > conversation > no instruction tuning):", ""]
    names = list(PAPER_TABLE3)
    for kind in SCORE_TYPES:
        for better, worse in itertools.pairwise(names):
            verdict = ordering_verdict(table3[better][kind], table3[worse][kind])
            required = " (required)" if kind == "all" else ""
            lines.append(f"- {kind}{required}: {better} > {worse}: **{verdict}** "
                         f"({mean_sd(table3[better][kind])[0]:.1f} vs {mean_sd(table3[worse][kind])[0]:.1f})")
    lines += ["", "### Table 7: design choices (held-out exact match %, after stage 2)", "",
              "| variant | ours | paper (ScienceQA %) |", "|---|---|---|"]
    lines += [f"| {name} | {cell(values)} | {PAPER_TABLE7[name]} |" for name, values in table7.items()]
    lines += ["",
              f"- before the last layer > last layer: **{ordering_verdict(table7['before the last layer'], table7['last layer'])}**",
              f"- with stage 1 > no stage 1: **{ordering_verdict(table7['before the last layer'], table7['no stage 1'])}**",
              "", "### Table 7: answer-first vs reasoning-first (ScienceQA-format task, `llava eval scienceqa` average %)", "",
              "| step | " + " | ".join(ORDERS) + " |", "|---|" + "---|" * len(ORDERS)]
    by_order = {name: [[point["accuracy"] for point in results[s]["reasoning_order"][name]] for s in seeds] for name in ORDERS}
    for index, point in enumerate(curves["answer first"]):
        lines.append(f"| {point['step']} | " + " | ".join(cell([acc[index] for acc in by_order[name]]) for name in ORDERS) + " |")
    verdict, detail = reasoning_first_verdict(curves["answer first"], curves["reasoning first"])
    lines += ["", f"- reasoning-first converges in at most half the steps, final accuracy within 3 points: **{verdict}** ({detail})",
              "", "![Table 3](table3.png)", "", "![reasoning order](reasoning_order.png)", ""]
    plot_table3(table3, out / "table3.png")
    plot_curves(curves, out / "reasoning_order.png")
    report = out / "report.md"
    write_text(report, "\n".join(lines))
    return report


def plot_table3(table3: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(table3)
    for index, (name, row) in enumerate(table3.items()):
        means, sds = zip(*(mean_sd(row[kind]) for kind in SCORE_TYPES))
        axis.bar([k + index * width for k in range(len(SCORE_TYPES))], means, width, yerr=sds, label=name, capsize=2)
    axis.set_xticks([k + 0.4 - width / 2 for k in range(len(SCORE_TYPES))], SCORE_TYPES)
    axis.set_ylabel("score (mean ± sd over seeds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        steps = [point["step"] for point in curve]
        means = [point["accuracy"] for point in curve]
        axis.errorbar(steps, means, yerr=[point["sd"] for point in curve], label=name, marker="o", capsize=2)
    axis.set_xlabel("stage-2 step")
    axis.set_ylabel("ScienceQA-format accuracy (%)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------ entry point
def cpu_kind() -> str:
    import os

    from training.arguments import cpu_has_native_bf16

    return f"{os.cpu_count()} CPU cores, {'native bf16 (bf16 autocast)' if cpu_has_native_bf16() else 'no native bf16 (float32)'}"


def run_ablations(out: Path, budget: AblationBudget, cache_dir: str | None = None) -> int:
    from demo.default_llm import smollm2_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    demo_settings = run_settings(budget.preset, PRESETS[budget.preset], seed=0)
    del demo_settings["seed"]  # the budget lists the seeds
    check_run_settings(out, {"ablations": asdict(budget) | {"seeds": list(budget.seeds)}, **demo_settings})
    started = time.time()
    log = Step(started)
    language_dir = smollm2_checkpoint(cache_dir)
    results = {}
    for seed in budget.seeds:
        cache = out / f"seed-{seed}" / "results.json"
        if not cache.is_file():
            (out / f"seed-{seed}").mkdir(exist_ok=True)
            seed_started = time.time()
            result = run_seed(out / f"seed-{seed}", language_dir, budget, seed, log)
            # per seed, so that a resumed run still reports what the whole run cost
            result["wall_clock_seconds"] = round(time.time() - seed_started, 1)
            write_json(cache, result, indent=1)
        results[seed] = json.loads(cache.read_text())
        log(f"seed {seed} done ({results[seed]['wall_clock_seconds'] / 60:.1f} min)")
    wall_clock = sum(result["wall_clock_seconds"] for result in results.values())
    report = write_report(out, results, budget, wall_clock, cpu_kind())
    write_json(out / "results.json", {"budget": asdict(budget), "wall_clock_seconds": round(wall_clock, 1),
                                      "cpu": cpu_kind(), "seeds": results}, indent=1)
    print(f"\nreport: {report}\n")
    print(report.read_text())
    return 0
