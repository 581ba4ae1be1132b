"""`llava demo --ablations` (demo/ablations.py): the protocol's verdict rules computed by hand, the Table-3 data
subsets, the judged questions, and (slow) the `--quick` run end to end: every table and plot is produced and every
number in the report comes from a run's own output files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from demo.ablations import (
    BUDGETS,
    ORDERS,
    PAPER_TABLE3,
    PAPER_TABLE7,
    judged_questions,
    ordering_verdict,
    reasoning_first_verdict,
    slug,
    steps_to_plateau,
    subset_stage2_data,
)
from demo.judge import SceneJudge
from demo.main import build_data
from demo.settings import PRESETS
from evaluation.judge import JudgeItem, judge_one


# ------------------------------------------------------------------------- the protocol's rules, by hand
@pytest.mark.parametrize(("better", "worse", "expected"), [
    ([79, 80, 81], [69, 70, 71], "reproduces"),  # means 80 vs 70, sds 1 and 1, A higher in every seed
    ([70, 75, 80], [60, 65, 70], "reproduces"),  # gap 10, sds 5 and 5
    ([60, 61, 62], [70, 71, 72], "does not reproduce"),  # A lower by 10, sds 1
    ([90, 80, 70], [70, 70, 80], "not resolved"),  # 80 vs 73.3: gap 6.7 below A's sd 10 (A wins 2 of 3 seeds)
    ([75, 70, 70], [70, 71, 71], "not resolved"),  # 71.7 vs 70.7: gap 1 below A's sd 2.9
])
def test_ordering_verdict_follows_the_protocol(better, worse, expected):
    assert ordering_verdict(better, worse) == expected


def test_a_resolved_gap_needs_two_thirds_of_the_seeds():
    # A = 89.5 ± 12.1, B = 70 ± 11.5: the gap (19.5) is resolved, but A beats B in only 2 of 4 seeds (< 2/3)
    assert ordering_verdict([100, 100, 79, 79], [60, 60, 80, 80]) == "does not reproduce"
    assert ordering_verdict([100, 100, 81, 79], [60, 60, 80, 80]) == "reproduces"  # 3 of 4


def curve(*accuracies: float) -> list[dict]:
    return [{"step": 8 * (index + 1), "accuracy": value} for index, value in enumerate(accuracies)]


def test_steps_to_plateau_is_the_first_checkpoint_within_two_points_of_the_final():
    assert steps_to_plateau(curve(10, 50, 79, 80, 81)) == 24  # 79 >= 81 - 2
    assert steps_to_plateau(curve(90, 50, 60, 70, 80)) == 8  # an early high point counts, as the rule says


def test_reasoning_first_verdict():
    answer_first, reasoning_first = curve(20, 40, 60, 75, 80), curve(40, 78, 79, 80, 79)
    verdict, detail = reasoning_first_verdict(answer_first, reasoning_first)
    assert verdict == "reproduces", detail  # plateau at 16 vs 40, finals 79 vs 80
    assert reasoning_first_verdict(answer_first, curve(40, 78, 79, 80, 90))[0] == "does not reproduce"  # late jump
    assert reasoning_first_verdict(answer_first, curve(60, 60, 60, 60, 60))[0] == "does not reproduce"  # 20 points lower


def test_slugs_are_distinct_folder_names():
    names = [*PAPER_TABLE3, *PAPER_TABLE7, *ORDERS]
    assert len({slug(name) for name in names}) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9-]+", slug(name)) for name in names)


# ------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def quick_data(tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("ablation-data"), dict(PRESETS["quick"]), seed=0)


@pytest.mark.parametrize(("mix", "types"), [({"conversation": 1.0}, {"conversation"}),
                                            ({"detail": 0.5, "complex": 0.5}, {"detail", "complex"})])
def test_a_subset_variant_has_the_full_mix_scenes_in_order_and_only_its_types(quick_data, tmp_path, mix, types):
    full = json.loads(quick_data.stage2.read_text())
    subset = json.loads(subset_stage2_data(quick_data, mix, 0, tmp_path / "subset.json").read_text())
    assert [record["image"] for record in subset] != []
    assert sorted(record["image"] for record in subset) == sorted(record["image"] for record in full)
    assert len(subset) == len(full)
    assert {record["type"] for record in subset} == types
    assert {record["type"] for record in full} >= {"conversation"}


def test_judged_questions_have_references_the_scene_truth_judge_scores_ten(quick_data):
    items = judged_questions(quick_data, 6, seed=0)
    assert [item["type"] for item in items] == ["detail", "complex"] * 6
    assert len({item["id"] for item in items}) == len(items)
    for item in items:
        assert (quick_data.image_root / item["image"]).is_file()
        judge_item = JudgeItem(item["id"], item["type"], item["question"], item["context"], item["reference"],
                               "I cannot tell.")
        review = judge_one(SceneJudge(), judge_item, judge_id=SceneJudge.name)
        assert review["scores"] == {"reference": 10.0, "model": 1.0}, (item, review)
    assert judged_questions(quick_data, 6, seed=0) == items  # drawn per scene and seed: the same every run


# ------------------------------------------------------------------------- --quick, end to end
@pytest.mark.slow
def test_quick_ablations_produce_every_table_from_real_runs(tmp_path, smollm2_gguf):
    out = tmp_path / "ablations"
    command = [sys.executable, "-m", "llava_cli", "demo", "--ablations", "--quick", "--output-dir", str(out),
               "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not [line for line in result.stdout.splitlines() if line.lstrip().startswith("{")]  # no per-step dicts

    budget = BUDGETS["quick"]
    report = (out / "report.md").read_text()
    for heading in ("### Table 3", "### Table 7: design choices", "### Table 7: answer-first vs reasoning-first"):
        assert heading in report
    assert "nan" not in report.lower() and "none" not in report.replace("no instruction tuning", "").lower()
    assert (out / "table3.png").stat().st_size > 5_000 and (out / "reasoning_order.png").stat().st_size > 5_000
    verdicts = re.findall(r"\*\*(reproduces|not resolved|does not reproduce)\*\*", report)
    assert len(verdicts) == 4 * 3 + 2 + 1  # every adjacent Table-3 pair per type, two Table-7 orderings, the order

    for seed in budget.seeds:
        seed_dir = out / f"seed-{seed}"
        results = json.loads((seed_dir / "results.json").read_text())
        for name in PAPER_TABLE3:
            row = results["table3"][name]
            # every number is the one the run's own evaluation wrote
            exact = json.loads((seed_dir / f"exact_match-{slug(name)}.json").read_text())
            assert row["conversation"] == pytest.approx(100 * exact["accuracy"]["overall"])
            judged = json.loads((seed_dir / f"judged-{slug(name)}.json").read_text())["relative"]
            for kind in ("detail", "complex"):
                assert row[kind] == pytest.approx(judged[kind]["relative_score"])
                assert judged[kind]["count"] == budget.judged_scenes
            assert row["all"] == pytest.approx((row["conversation"] + row["detail"] + row["complex"]) / 3)
            assert f"{row['all']:.1f}" in report
        for name in ("full data", "detail + complex", "conversation", "last layer", "no stage 1"):
            history = json.loads((seed_dir / f"stage2-{slug(name)}" / "log_history.json").read_text())
            assert history[-1]["step"] == budget.stage2_steps, name  # every variant trains the same steps
        for name in ORDERS:
            points = results["reasoning_order"][name]
            assert [point["step"] for point in points] == [budget.stage2_steps // budget.checkpoints * (k + 1)
                                                          for k in range(budget.checkpoints)]
            assert all(0 <= point["accuracy"] <= 100 for point in points)
        assert Path(seed_dir / "scienceqa-task" / "problems.json").is_file()
