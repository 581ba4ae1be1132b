"""The demo's deliverables that need no model: the accuracy table with intervals, metrics.json, and the exported
card's `model-index` read back by huggingface_hub's own parser."""

from __future__ import annotations

import json

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from demo.report import HELD_OUT_DATASET, accuracy_table, write_metrics
from evaluation.intervals import wilson_interval
from hub_upload.card import CardInfo, build_model_card, load_eval_results


def scored(correct: dict[str, int], questions: dict[str, int], scenes: int) -> dict:
    """An evaluation result as `demo.main.evaluate` caches it."""
    correct = {**correct, "overall": sum(correct.values())}
    questions = {**questions, "overall": sum(questions.values())}
    return {
        "accuracy": {kind: correct[kind] / questions[kind] for kind in questions},
        "correct": correct,
        "questions": questions,
        "interval_95": {kind: list(wilson_interval(correct[kind], questions[kind])) for kind in questions},
        "scenes": scenes,
        "examples": [],
    }


RESULTS = {
    "before training": scored({"color": 0, "shape": 31, "count": 6}, {"color": 44, "shape": 73, "count": 40}, 40),
    "after stage 1": scored({"color": 2, "shape": 25, "count": 18}, {"color": 44, "shape": 73, "count": 40}, 40),
    "after stage 2": scored({"color": 246, "shape": 480, "count": 250}, {"color": 307, "shape": 491, "count": 250}, 250),
}


def test_table_gives_each_accuracy_its_interval_and_each_row_its_questions():
    lines = accuracy_table(RESULTS).splitlines()
    assert lines[0] == "| model | color | shape | count | overall | questions (color / shape / count) |"
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["chance", *RESULTS]
    after_stage2 = [cell.strip() for cell in lines[-1].split("|")[2:-1]]
    # 246/307: centre 0.7976, half-width 0.0445 by hand from the formula in evaluation.intervals -> 75.3%-84.2%
    assert after_stage2 == ["80% (75-84)", "98% (96-99)", "100% (98-100)", "93% (91-95)", "307 / 491 / 250"]
    assert lines[3].endswith("| 44 / 73 / 40 |")


def test_metrics_and_card_follow_the_hubs_model_index_convention(tmp_path):
    metrics_path = write_metrics(tmp_path, RESULTS, {"preset": "default", "seed": 0, "train_scenes": 1600})
    metrics = json.loads(metrics_path.read_text())
    assert metrics["questions"]["after stage 2"]["color"] == 307
    assert metrics["interval_95"]["after stage 2"]["color"] == list(wilson_interval(246, 307))

    card = build_model_card(CardInfo(model_name="demo", eval_results=load_eval_results(metrics_path)))
    card.save(tmp_path / "README.md")
    model_index = yaml.safe_load(str(card).split("---")[1])["model-index"]
    _, parsed = model_index_to_eval_results(model_index)  # the Hub's own reading of the YAML
    reloaded = ModelCard.load(tmp_path / "README.md").data.eval_results
    for results in (parsed, reloaded):
        assert len(results) == 3 * 4  # every model stage x (colour, shape, count, overall), no settings or chance
        for result in results:
            assert result.metric_type == "accuracy"
            assert result.task_type == "image-text-to-text"
            assert (result.dataset_name, result.dataset_type) == (
                HELD_OUT_DATASET["dataset_name"], HELD_OUT_DATASET["dataset_type"]
            )
        by_name = {result.metric_name: result for result in results}
        assert by_name["Colour accuracy after stage 2"].metric_value == round(246 / 307, 4)
        assert by_name["Count accuracy before training"].metric_value == round(6 / 40, 4)
        assert by_name["Colour accuracy after stage 2"].dataset_config == "250 scenes, 307 questions"
    assert "| Colour accuracy after stage 2 |" in card.text  # the card's Evaluation table uses the readable names
